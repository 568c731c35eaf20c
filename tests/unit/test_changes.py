"""One structured differ (reconciler.changes) under both renderings: `reconcile diff`'s
lines and the planner's reasons; its paths, its ABSENT sides and its masking."""

from __future__ import annotations

import json
from dataclasses import replace

from support import desired, service, spec

from reconciler import identity
from reconciler.changes import ABSENT, Change, Field, Item, Key, Member, changes
from reconciler.desired.diff import diff_states
from reconciler.model import CanaryPolicy, CanaryStep, Release, SecretRef, Volume
from reconciler.plan.reasons import describe_changes


def test_records_pairs_members_and_positions_have_their_steps() -> None:
    old = spec(env={"LOG_LEVEL": "info", "GONE": "x"}, volumes=(Volume("volume", "d", "/d"),),
               secrets=(SecretRef("S1", "file", "/s/1"),))
    new = spec(env={"LOG_LEVEL": "debug", "NEW": "y"}, port=9090,
               volumes=(Volume("volume", "d", "/data"), Volume("bind", "/x", "/y")),
               secrets=(SecretRef("S1", "file", "/s/1", "2"), SecretRef("S2", "env", "S2")))
    found = changes(old, new)
    assert found == [
        Change((Field("port"),), 8080, 9090),
        Change((Field("env"), Key("GONE")), "x", ABSENT),
        Change((Field("env"), Key("LOG_LEVEL")), "info", "debug"),
        Change((Field("env"), Key("NEW")), ABSENT, "y"),
        Change((Field("secrets"), Member("S1"), Field("version")), "", "2"),
        Change((Field("secrets"), Member("S2")), ABSENT, SecretRef("S2", "env", "S2")),
        Change((Field("volumes"), Item(0), Field("target")), "/d", "/data"),
        Change((Field("volumes"), Item(1)), ABSENT, Volume("bind", "/x", "/y")),
    ]
    assert changes(old, old) == []


def test_secret_looking_values_are_masked_at_any_depth_and_inputs_are_untouched() -> None:
    old = Release("v1", 100, spec(env={"DB_PASSWORD": "hunter2", "MODE": "a"}))
    new = Release("v1", 100, spec(env={"DB_PASSWORD": "hunter3", "MODE": "a"}))
    assert changes(old, new) == [
        Change((Field("spec"), Field("env"), Key("DB_PASSWORD")), "******", "******")]
    # a whole value (a release added) is masked inside, the model value is not
    [added] = changes((old,), (old, replace(new, revision="v2")))
    assert added.path == (Member("v2"),) and added.old is ABSENT
    assert dict(added.new.spec.env) == {"DB_PASSWORD": "******", "MODE": "a"}
    assert dict(new.spec.env)["DB_PASSWORD"] == "hunter3"
    assert "hunter" not in repr(changes(ABSENT, new))


def test_describing_lists_every_non_empty_part_and_keyed_members_field_by_field() -> None:
    rel = Release("v2", 0, spec(env={"A": "1"}, secrets=(SecretRef("S", "env", "S"),)),
                  canary=CanaryPolicy(steps=(CanaryStep(10), CanaryStep(50))))
    paths = {c.path for c in changes(ABSENT, rel, atomic=(CanaryStep,))}
    assert (Field("weight"),) in paths and (Field("revision"),) not in paths  # the key
    assert (Field("spec"), Field("command")) not in paths  # None: nothing to describe
    assert (Field("spec"), Field("env"), Key("A")) in paths
    assert (Field("spec"), Field("secrets"), Member("S"), Field("location")) in paths
    assert (Field("canary"), Field("steps")) in paths  # atomic: whole


def test_plain_dicts_compare_like_the_model_and_a_missing_key_is_none() -> None:
    old = json.loads(identity.canonical_json(identity.label_spec(spec(), "sha256:aa")))
    new = identity.label_spec(spec(memory_bytes=64 << 20), "sha256:aa")
    assert changes(old, new) == [Change((Field("memory_bytes"),), None, 64 << 20)]
    del old["memory_bytes"]
    assert changes(old, identity.label_spec(spec(), "sha256:aa")) == []


def test_both_renderings_read_the_same_changes() -> None:
    before = spec(env={"LOG_LEVEL": "info", "DB_PASSWORD": "a"})
    after = spec(env={"LOG_LEVEL": "debug", "DB_PASSWORD": "b"}, restart="always")
    reasons = describe_changes(
        json.loads(identity.canonical_json(identity.label_spec(before, "sha256:aa", "k"))),
        identity.label_spec(after, "sha256:aa", "k"))
    assert reasons == ["env DB_PASSWORD changed (****** -> ******)",
                       "env LOG_LEVEL changed (info -> debug)", "restart policy changed"]
    svc = service()
    base = desired(replace(svc, releases=(replace(svc.releases[0], spec=before),)))
    head = desired(replace(svc, releases=(replace(svc.releases[0], spec=after),)))
    [item] = diff_states(base, head).items
    assert item.changes == ("release v1: env DB_PASSWORD changed (****** -> ******)",
                            "release v1: env LOG_LEVEL changed (info -> debug)",
                            "release v1: restart unless-stopped -> always")
