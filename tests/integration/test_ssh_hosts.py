"""Many hosts over SSH, for real: 3 app hosts and 1 LB host, each a network namespace
with its own dockerd and its own sshd (hosts_support). The reconciler reaches every
host only through SSH (Docker API over streamlocal channels, SFTP, remote commands);
the images are copied to the hosts' engines over SSH (no registry in this module).

The scenarios build on each other (one set of hosts for the module, ~1 min in all):
first deploy on h1+h2; h3 added; a release rolled host by host under load; a host whose
new release is unhealthy stops the rollout, or (on_failure: continue) is skipped while the
later hosts are rolled; host keys changed or unknown are refused; accept-new records the
keys of new hosts and still refuses a host whose key changed; h3 removed from the
inventory is drained, then its containers removed. At the end, nothing but HAProxy (and
the harness's own sshd and dockerd) is left in the LB host's namespace.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from fleet_support import Fleet, steps
from hosts_support import SimHost, SimHosts, main_engine, push_image, start_hosts, start_registry
from load_support import TRAFFIC, HAProxyCounters, HeyLoad, HeyReport

from reconciler.transport.ssh_keys import fingerprint

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def sim() -> Iterator[SimHosts]:
    hosts = start_hosts(4)
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def fleet(sim: SimHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    h1, h2, h3, h4 = sim.hosts
    f = Fleet(tmp_path_factory.mktemp("fleet"), sim, apps=[h1, h2], lb=h4, inventory_extra=[h3])
    try:
        yield f
    finally:
        f.cleanup()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def apply_under_load(fleet: Fleet, *extra: str) -> tuple[int, str, HeyReport]:
    """`reconcile apply` while hey sends ~320 req/s through the LB; prints hey's report."""
    with HeyLoad(fleet.url, concurrency=8, qps=40, max_duration_s=90) as load:
        code, out = fleet.apply(*extra)
        report = load.stop()
    print(report.summary())
    return code, out, report


Sent = dict[tuple[str, str], dict[str, int]]  # (backend, server) -> TRAFFIC counter -> n


def apply_counted(fleet: Fleet, *extra: str) -> tuple[int, str, HeyReport, Sent]:
    """`apply_under_load`, with what HAProxy sent each server of be_web meanwhile: its
    own per-server counters (sessions, responses by class), polled every 50 ms from
    every worker, old ones included, so that reloads and deleted servers lose nothing."""
    with HAProxyCounters(fleet.haproxy(), fields=TRAFFIC) as counters:
        code, out, report = apply_under_load(fleet, *extra)
    sent = counters.totals("be_web")
    print({srv: c for (_, srv), c in sent.items()})
    return code, out, report, sent


def assert_never_sent_to(host: SimHost, revision: str, sent: Sent, report: HeyReport) -> None:
    """No container of ``revision`` on ``host`` got a request through HAProxy (none was
    even a server, or every counter of it stayed 0), while HAProxy's counters did see
    the load: the other servers answered (nearly) every response hey got."""
    mark = f"-web-{revision}-"
    seen = {srv: c for (_, srv), c in sent.items() if srv.startswith(f"{host.name}.") and mark in srv}
    assert not any(any(c.values()) for c in seen.values()), seen
    answered = sum(c["hrsp_2xx"] for c in sent.values())
    assert answered >= 0.9 * report.responses > 0, (answered, report.summary(), sent)


def test_first_deploy_over_ssh(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    code, out = fleet.cli("plan")
    assert code == 2 and "copy" not in out, out
    code, out = fleet.apply()
    assert code == 0, out
    assert fleet.revisions_on(h1) == ["v1"] and fleet.revisions_on(h2) == ["v1"]
    assert fleet.revisions_on(h3) == []  # in the inventory, used by no service yet
    # The image reached each host's own engine with the same id (saved here, loaded there).
    local_id = main_engine().images.get("sample-app:v1").id
    assert h1.docker().images.get("sample-app:v1").id == local_id
    # h4.address (10.213.K.14) exists only in h4's namespace: HAProxy was started there, over SSH.
    assert "revision=v1" in get(fleet.url)
    cfg = fleet.haproxy_config()
    assert "server h1." in cfg and f"{h1.address}:" in cfg and f"{h2.address}:" in cfg
    code, out = fleet.apply()
    assert code == 0 and "No changes" in out, out
    code, out = fleet.cli("plan")
    assert code == 0, out
    # status reads both engines and the LB host's HAProxy over SSH as well.
    code, raw = fleet.cli("status", "-o", "json")
    assert code == 0, raw
    (web,) = json.loads(raw)["services"]
    assert sorted(c["host"] for c in web["containers"]) == ["h1", "h2"], web
    assert all(c["haproxy"].startswith("UP") for c in web["containers"]), web


def test_new_host_is_brought_to_the_desired_state(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    fleet.apps = [h1, h2, h3]
    fleet.write("web on h3 too")
    code, out = fleet.apply()
    assert code == 0, out
    assert fleet.revisions_on(h3) == ["v1"]
    assert "server h3." in fleet.haproxy_config()
    assert fleet.revisions_on(h1) == ["v1"]  # untouched


def test_release_rolls_host_by_host_under_load(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    fleet.revisions = [("v2", 100)]
    fleet.rollout = {"limit": 1, "wait": "500ms"}
    fleet.write("v2, one host at a time")
    code, out, report = apply_under_load(fleet)
    assert code == 0, out
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    assert report.responses > 500, report.summary()
    for h in (h1, h2, h3):
        assert fleet.revisions_on(h) == ["v2"], h.name
    # Batches: each host's new container starts only after the previous host switched.
    done = [s for s in steps(out) if s[1] == "ok"]
    starts = [(n, host) for n, _, host, text in done if text.startswith("start container")]
    assert [host for _, host in starts] == ["h1", "h2", "h3"], out
    reloads = [n for n, _, _, text in done if "reload" in text]
    pairs = itertools.pairwise(n for n, _ in starts)
    assert all(any(a < r < b for r in reloads) for a, b in pairs), out


def break_image_on(host: SimHost) -> None:
    """Tag, on ``host`` only, a sample-app:v3 whose health check fails."""
    dockerfile = io.BytesIO(b"FROM sample-app:v2\nENV FAIL_HEALTH=1\n")
    host.docker().images.build(fileobj=dockerfile, tag="sample-app:v3", rm=True)


def test_unhealthy_host_stops_the_rollout(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    break_image_on(h2)
    fleet.revisions = [("v3", 100)]
    fleet.rollout = {"limit": 1, "on_failure": "stop"}
    fleet.write("v3 (h2's image is broken)")
    code, out, report, sent = apply_counted(fleet)
    assert code == 1, out
    # The broken container never got traffic. Its `/` answers 200 like a good one (only
    # FAIL_HEALTH's /healthz fails), so hey alone cannot tell; HAProxy's counters can.
    assert_never_sent_to(h2, "v3", sent, report)
    assert "host h2" in out and "not healthy" in out and "HTTP 503" in out, out
    assert "rollout stopped after batch 2/3" in out, out
    assert fleet.revisions_on(h1) == ["v3"]  # batch 1 switched
    assert fleet.revisions_on(h2) == ["v2"]  # failed: its new container removed
    assert fleet.revisions_on(h3) == ["v2"]  # never reached
    assert "h2." in fleet.haproxy_config() and "h3." in fleet.haproxy_config()
    # The LB kept serving through it all.
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    assert re.search(r"revision=v[23]", get(fleet.url))


def test_on_failure_continue_rolls_the_hosts_after_a_failed_one(
    fleet: Fleet, sim: SimHosts
) -> None:
    h1, h2, h3, _ = sim.hosts
    # A new config of v3 (new greeting) everywhere; h2's v3 image is still the broken one.
    old = {h.name: {c.id for c in fleet.containers(h)} for h in (h1, h2, h3)}
    fleet.greeting = "rolled on"
    fleet.rollout = {"limit": 1, "on_failure": "continue"}
    fleet.write("v3 with a new greeting; on_failure: continue")
    # The health deadline: 5 s (healthy ones take < 1 s; h2's never gets there).
    code, out, report, sent = apply_counted(fleet, "--health-timeout", "5")
    assert code == 1, out
    assert_never_sent_to(h2, "v3", sent, report)  # (its v2 server kept its share)
    assert re.search(
        r"error: web: host h2: container \S+-web-v3-\S+ is not healthy: GET /healthz: HTTP 503",
        out,
    ), out
    assert "rollout stopped" not in out, out
    assert re.search(r"run \d+: FAILED", out), out
    # h1 (batch 1) and h3 (batch 3, after the failed batch 2) got the new release; h2
    # kept its old container, which HAProxy still sends its share of traffic to.
    for h in (h1, h3):
        assert fleet.revisions_on(h) == ["v3"], h.name
        (c,) = fleet.containers(h)
        assert c.id not in old[h.name] and "GREETING=rolled on" in c.attrs["Config"]["Env"]
    assert {c.id for c in fleet.containers(h2)} == old["h2"]
    assert fleet.revisions_on(h2) == ["v2"]
    starts = [
        (host, text)
        for _, status, host, text in steps(out)
        if status == "ok" and text.startswith("start container")
    ]
    assert [host for host, _ in starts] == ["h1", "h2", "h3"], out  # h2's was removed again
    cfg = fleet.haproxy_config()
    for h in (h1, h2, h3):
        (c,) = fleet.containers(h)
        assert f"server {h.name}.{c.name} " in cfg, (h.name, cfg)
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    bodies = {get(fleet.url).split(" host=")[0] for _ in range(12)}
    assert bodies == {
        "revision=v3 greeting=rolled on",
        "revision=v2 greeting=hello from the fleet",
    }
    # The history names the failure; web is held at this commit (no retry in a loop).
    code, hist = fleet.cli("status")
    assert "HELD: host h2: container" in hist, hist
    code, again = fleet.apply()
    assert code == 0 and "note: service web held" in again, again


def _wrong_key_file(tmp: Path, sim: SimHosts, address: str) -> Path:
    other = paramiko.Ed25519Key.from_private_key_file(str(sim.key))  # a key, not h3's
    lines = [
        line for line in sim.known_hosts.read_text().splitlines() if not line.startswith(address + " ")
    ]
    lines.append(f"{address} {other.get_name()} {other.get_base64()}")
    path = tmp / "known_hosts.wrong"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_host_key_mismatch_and_unknown_host_are_refused(
    fleet: Fleet, sim: SimHosts, tmp_path: Path
) -> None:
    h1, h2, h3, _ = sim.hosts
    before = {h.name: sorted(c.id for c in fleet.containers(h)) for h in (h1, h2, h3)}
    fleet.known_hosts = {"h3": _wrong_key_file(tmp_path, sim, h3.address)}
    fleet.write("h3's known key is wrong")
    code, out = fleet.apply()
    assert code == 1, out
    assert "host h3" in out and "HOST KEY MISMATCH" in out and "refusing" in out, out
    unknown = tmp_path / "known_hosts.partial"
    unknown.write_text(
        "".join(
            line + "\n"
            for line in sim.known_hosts.read_text().splitlines()
            if not line.startswith(h3.address + " ")
        )
    )
    fleet.known_hosts = {"h3": unknown}
    fleet.write("h3 is not in known_hosts")
    code, out = fleet.apply()
    assert code == 1 and "host h3" in out and "is not in" in out and "strict" in out, out
    after = {h.name: sorted(c.id for c in fleet.containers(h)) for h in (h1, h2, h3)}
    assert after == before  # nothing changed on any host


def _known_keys(path: Path) -> dict[str, tuple[str, str]]:
    """address -> (key type, base64) of each key line of a known_hosts file."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            address, keytype, b64 = line.split()[:3]
            assert address not in out, f"{address} twice in {path}"
            out[address] = (keytype, b64)
    return out


def test_accept_new_records_new_keys_and_refuses_a_changed_one(
    fleet: Fleet, sim: SimHosts, tmp_path: Path
) -> None:
    h1, h2, h3, lb = sim.hosts
    expected = _known_keys(sim.known_hosts)
    # The app hosts share a file that knows h1 only, the LB host a file that does not
    # exist yet (nor its folder); every host checks with accept-new.
    apps_file = tmp_path / "known_hosts.apps"
    apps_file.write_text(f"{h1.address} {' '.join(expected[h1.address])}\n")
    lb_file = tmp_path / "new" / "known_hosts.lb"
    fleet.known_hosts = {h.name: apps_file for h in (h1, h2, h3)} | {lb.name: lb_file}
    fleet.host_key_checking = {h.name: "accept-new" for h in (h1, h2, h3, lb)}
    fleet.greeting = "hello from the fleet"
    fleet.revisions = [("v2", 100)]  # h2 runs it already: h1 and h3 come back to it
    fleet.rollout = {}
    fleet.write("accept-new, back to v2")
    try:
        code, out = fleet.apply()
        assert code == 0, out
        assert _known_keys(apps_file) == {h.address: expected[h.address] for h in (h1, h2, h3)}
        # (The file is rewritten as a whole: docs/operations.md, Host keys.)
        assert _known_keys(lb_file) == {lb.address: expected[lb.address]}  # created
        for h in (h1, h2, h3):
            assert fleet.revisions_on(h) == ["v2"], h.name
        known = {p: p.read_bytes() for p in (apps_file, lb_file)}
        code, out = fleet.apply()
        assert code == 0 and "No changes" in out, out
        assert {p: p.read_bytes() for p in known} == known  # known keys are not rewritten

        # h2 is reinstalled: a new host key. Refused, though accept-new: it is not new.
        before = {h.name: sorted(c.id for c in fleet.containers(h)) for h in (h1, h2, h3)}
        config = fleet.haproxy_config()
        old_key = paramiko.Ed25519Key.from_private_key_file(str(h2.host_key))
        saved = {p: p.read_bytes() for p in (h2.host_key, Path(f"{h2.host_key}.pub"))}
        try:
            for p in saved:
                p.unlink()
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(h2.host_key)],
                check=True,
                capture_output=True,
            )
            new_key = paramiko.Ed25519Key.from_private_key_file(str(h2.host_key))
            h2.stop_sshd()
            h2.start_sshd()
            fleet.greeting = "never applied"
            fleet.write("a change that must not reach any host")
            code, out = fleet.apply()
            assert code == 1, out
            assert "host h2" in out and "HOST KEY MISMATCH" in out and "refusing" in out, out
            assert fingerprint(old_key) in out and fingerprint(new_key) in out, out
            assert str(apps_file) in out, out
            assert {p: p.read_bytes() for p in known} == known  # the new key not recorded
            after = {h.name: sorted(c.id for c in fleet.containers(h)) for h in (h1, h2, h3)}
            assert after == before and fleet.haproxy_config() == config  # nothing changed
            assert "greeting=hello from the fleet" in get(fleet.url)
        finally:
            for p, data in saved.items():
                p.write_bytes(data)
            h2.stop_sshd()
            h2.start_sshd()
    finally:
        fleet.greeting = "hello from the fleet"
        fleet.known_hosts = {}
        fleet.host_key_checking = {}


def test_removed_host_is_drained_then_cleaned(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    fleet.known_hosts = {}
    fleet.apps = [h1, h2]
    fleet.inventory_extra = []  # h3 leaves the inventory altogether
    fleet.revisions = [("v2", 100)]
    fleet.write("h3 retired; back to v2")
    code, out, report = apply_under_load(fleet)
    assert code == 0, out
    assert report.failed == 0 and report.non_2xx == 0, report.summary()
    assert fleet.revisions_on(h3) == []
    assert "h3." not in fleet.haproxy_config()
    assert fleet.revisions_on(h1) == ["v2"] and fleet.revisions_on(h2) == ["v2"]
    drains = [n for n, _, _, text in steps(out) if text.startswith("drain be_web/h3.")]
    removals = [n for n, _, host, text in steps(out) if host == "h3" and "remove" in text]
    assert drains and removals and max(drains) < min(removals), out
    code, out = fleet.apply()
    assert code == 0 and "No changes" in out, out


def test_images_come_from_a_registry_when_named(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    start_registry(sim)
    ref = push_image(sim, "sample-app:v3", via=h3)  # h3 is out of the fleet by now
    fleet.image = ref.rsplit(":", 1)[0]
    fleet.revisions = [("v3", 100)]
    fleet.write("v3 from the registry")
    code, out = fleet.cli("plan")
    assert code == 2 and out.count(f"pull image {ref}") == 2, out
    code, out = fleet.apply()
    assert code == 0, out
    for h in (h1, h2):
        assert fleet.revisions_on(h) == ["v3"]
        assert ref in h.docker().images.get(ref).tags  # pulled by the host's own engine
    assert "revision=v3" in get(fleet.url)


def test_unreachable_retired_host_does_not_block(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, _, _ = sim.hosts
    before = [c.id for c in fleet.containers(h2)]
    assert before
    fleet.apps = [h1]
    fleet.write("h2 retired")
    h2.stop_sshd()
    try:
        code, out = fleet.apply()
        assert code == 0, out
        assert "h2." not in fleet.haproxy_config()  # its servers left HAProxy anyway
        assert [c.id for c in fleet.containers(h2)] == before  # could not be reached
    finally:
        h2.start_sshd()
    code, out = fleet.apply()  # reachable again: remembered, so cleaned now
    assert code == 0, out
    assert fleet.containers(h2) == []
    assert "revision=v3" in get(fleet.url)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process of this machine."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            out[int(d.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), comm)
    return out


def _tree(root: int | None, procs: dict[int, tuple[int, str]]) -> set[int]:
    """``root`` and all of its descendants."""
    found = {root} if root is not None else set()
    while more := {p for p, (ppid, _) in procs.items() if ppid in found} - found:
        found |= more
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "(gone)"


def test_no_process_left_in_the_lb_namespace_but_haproxy(fleet: Fleet, sim: SimHosts) -> None:
    """After all the passes above, the LB host's network namespace holds HAProxy and what
    the harness runs on every simulated host (hosts_support), and nothing else:
    - HAProxy: exactly its master and the workers the master lists (`show proc`; old
      workers of a recent reload included), each named haproxy;
    - the harness: the listening sshd itself, not its per-connection children (an SSH
      session the reconciler left open is a leak), and dockerd with its descendants
      (containerd: no container runs on the LB host, so no shim either).
    A helper the reconciler started there and left behind, a session it never closed or a
    second HAProxy fails. Sessions closed by the last pass may take a moment to exit on
    the sshd side: polled up to 10 s."""
    lb = fleet.lb
    assert lb is sim.hosts[3]
    deadline = time.monotonic() + 10
    while True:
        procs = fleet.haproxy().procs()
        haproxy = {procs.master_pid, *procs.current_pids, *procs.old_pids}
        pids = {
            int(p)
            for p in subprocess.run(
                ["ip", "netns", "pids", lb.netns], capture_output=True, text=True, check=True
            ).stdout.split()
        }
        table = _processes()
        harness = {lb.sshd_pid()} | _tree(lb.dockerd_pid(), table)
        left = {p: table[p] for p in pids - haproxy - harness if p in table}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, {p: f"{comm} (parent {ppid}): {_cmdline(p)}" for p, (ppid, comm) in left.items()}
    running = {procs.master_pid, *procs.current_pids}
    assert running <= pids, (running, pids)  # HAProxy does run there
    assert {table[p][1] for p in running} == {"haproxy"}, {p: table[p] for p in running}
    assert all(table[p][0] == procs.master_pid for p in procs.current_pids), table
    assert lb.sshd_pid() in pids and lb.dockerd_pid() in pids  # the allowance is not empty

