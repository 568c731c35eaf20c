"""App hosts in etcd mode, the pure parts: the slice and app report values (JSON,
versioned, validated on read, naming key, field and value) and each host's slice from
a plan (the same names and labels as the executor gives; retiring containers kept
until the removals; a secret by its reference, never its value)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from support import desired, service, with_images

from reconciler import identity
from reconciler.cluster.hostslice import (
    AppReport,
    ReportedContainer,
    decode_app_report,
    decode_slice,
    encode_app_report,
    encode_slice,
)
from reconciler.cluster.lbconfig import LBConfigError
from reconciler.model import (
    DesiredState,
    Instance,
    ObservedContainer,
    ObservedHost,
    ObservedState,
    SecretRef,
)
from reconciler.plan.actions import RemoveContainer, StartContainer
from reconciler.plan.planner import plan
from reconciler.plan.slices import host_slices

KEY = "/reconciler/i/prod/hosts/h1/desired"
INSTANCE = Instance("i", adopt_unlabelled=False, label_key="k")
V1 = replace(desired(service("web", [("v1", 100)])), instance=INSTANCE)
V2 = replace(desired(service("web", [("v2", 100)]), commit="c2"), instance=INSTANCE)


def ran(d: DesiredState, world: ObservedState | None = None) -> ObservedState:
    """The world once the agents ran the slices of ``d`` over ``world`` (as they do:
    each container of its slice, with its name, labels and image id)."""
    world = with_images(world or ObservedState(), d)
    slices = host_slices(d, world, plan(d, world), removals=True)
    hosts = tuple(ObservedHost(h, tuple(
        ObservedContainer(f"id-{c.name}", c.name, c.labels, "running", "healthy", c.image_id,
                          (v.address, 3000 + i))
        for i, c in enumerate(v.containers)), world.host(h).images) for h, v in slices.items())
    return replace(world, hosts=hosts)


def test_a_slice_has_the_started_containers_with_the_executors_labels_and_round_trips() -> None:
    world = with_images(ObservedState(), V1)
    p = plan(V1, world)
    starts = [a for a in p.actions if isinstance(a, StartContainer)]
    value = host_slices(V1, world, p, removals=True)["h1"]
    assert [c.name for c in value.containers] == sorted(a.name for a in starts)
    a = starts[0]
    assert a.spec is not None
    labels = identity.container_labels(V1.environment, "web", "v1", a.config_hash, a.replica,
                                       V1.commit, a.spec, a.image_id, V1.instance.name,
                                       V1.instance.label_key)
    entry = next(c for c in value.containers if c.name == a.name)
    assert dict(entry.labels) == labels and entry.spec == a.spec
    assert (value.address, value.commit, value.keep) == ("10.0.0.1", "c0ffee", ())
    assert decode_slice(KEY, encode_slice(value)) == value


def test_a_release_switch_keeps_the_old_containers_until_the_removals() -> None:
    world = with_images(ran(V1), V2)
    p = plan(V2, world)
    old = sorted(a.name for a in p.actions if isinstance(a, RemoveContainer))
    new = sorted(a.name for a in p.actions if isinstance(a, StartContainer))
    first = host_slices(V2, world, p, removals=False)["h1"]
    assert [c.name for c in first.containers] == new and list(first.keep) == old
    assert sorted(first.names()) == sorted(old + new)
    last = host_slices(V2, ran(V2, world), p, removals=True)["h1"]
    assert [c.name for c in last.containers] == new and last.keep == ()


def test_running_containers_of_a_desired_release_are_in_the_slice_with_their_spec() -> None:
    world = ran(V1)
    value = host_slices(V1, world, plan(V1, world), removals=True)["h1"]
    assert sorted(c.name for c in value.containers) == sorted(
        c.name for c in world.host("h1").containers)
    assert {c.spec for c in value.containers} == {V1.services[0].releases[0].spec}


def test_a_secret_is_published_by_its_reference_only() -> None:
    ref = SecretRef("DB_PASSWORD", "file", "/etc/reconciler/secrets/prod/db")
    svc = service("web", [("v1", 100)])
    rel = svc.releases[0]
    svc = replace(svc, releases=(replace(rel, spec=replace(rel.spec, secrets=(ref,))),))
    d = replace(desired(svc), instance=INSTANCE)
    world = with_images(ObservedState(), d)
    raw = encode_slice(host_slices(d, world, plan(d, world), removals=True)["h1"])
    assert b"/etc/reconciler/secrets/prod/db" in raw and b"DB_PASSWORD" in raw
    assert decode_slice(KEY, raw).containers[0].spec.secrets == (ref,)


def _raw(**change: object) -> bytes:
    value = host_slices(V1, with_images(ObservedState(), V1),
                        plan(V1, with_images(ObservedState(), V1)), removals=True)["h1"]
    body = json.loads(encode_slice(value))
    for path, v in change.items():
        target = body
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = v
    return json.dumps(body).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (b"{", "not JSON"),
    (b'{"format": "reconciler/pool", "version": 1}', "field format is not"),
    (_raw(version=2), "field version is 2; this reconciler reads version 1"),
    (_raw(address="example.org"), "field address 'example.org' is not an IP address"),
    (_raw(containers__0__spec__port=0), "field containers[0].spec.port 0 is not 1-65535"),
    (_raw(containers__0__image_id=""), "field containers[0].image_id '' is empty"),
    (_raw(containers__0__name="a b"), "field containers[0].name 'a b' is not a name"),
    (_raw(containers__0__spec__env=[["A", "x\ny"]]),
     "field containers[0].spec.env[0][1] 'x\\ny' holds a control character"),
    (_raw(containers__0__labels=[["io.reconciler.managed", "true"]]),
     "field containers[0].labels.io.reconciler.environment '' is not 'prod'"),
    (_raw(host=None), "field host None is not a str"),
    (_raw(surprise=1), "field surprise 1 is not a known field"),
])
def test_a_bad_slice_is_refused_naming_key_field_and_value(raw: bytes, message: str) -> None:
    with pytest.raises(LBConfigError) as err:
        decode_slice(KEY, raw)
    assert str(err.value).startswith(f"etcd key {KEY!r}: ") and message in str(err.value)


def test_a_duplicate_container_is_refused() -> None:
    value = host_slices(V1, with_images(ObservedState(), V1),
                        plan(V1, with_images(ObservedState(), V1)), removals=True)["h1"]
    twice = replace(value, containers=(value.containers[0], value.containers[0]))
    with pytest.raises(LBConfigError, match="appears twice"):
        decode_slice(KEY, encode_slice(twice))


def test_an_app_report_round_trips_and_is_what_the_planner_observes() -> None:
    world = ran(V1)
    host = world.host("h1")
    report = AppReport("h1", 7, "c0ffee", tuple(
        ReportedContainer(c.name, c.status, "healthy", c.image_id, c.labels, "10.0.0.1", 3000 + i)
        for i, c in enumerate(host.containers)), 1.5, images=host.images)
    key = "/reconciler/i/prod/hosts/h1/app-report"
    assert decode_app_report(key, encode_app_report(report)) == report
    seen = report.observed()
    assert [c.name for c in seen.containers] == [c.name for c in host.containers]
    assert seen.containers[0].published == ("10.0.0.1", 3000)
    again = plan(V1, replace(world, hosts=(seen,))).actions
    assert not [a for a in again if isinstance(a, StartContainer | RemoveContainer)]
    with pytest.raises(LBConfigError, match=r"field containers\[0\].port 70000 is not 1-65535"):
        bad = replace(report, containers=(replace(report.containers[0], port=70000),))
        decode_app_report(key, encode_app_report(bad))
