"""LB hosts and rollouts tell the truth, on simulated SSH hosts (3 app hosts, 1 LB host).

- A frontend whose address the LB host does not have, or whose port another process
  holds, passes `haproxy -c` but cannot be loaded: it is refused before anything is
  installed, so HAProxy never refuses a connection over it (fresh connections under load).
- A rollout batch whose steps were skipped (its host failed its health gate) reloads
  nothing and says so: its config steps print as skipped with the reason, and the master
  counts exactly one reload per batch that switched.
- `status` shows, per host, which release runs and serves while a rollout is held.
- A changed host key is one clear line.

The scenarios build on each other (one set of hosts for the module).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from fleet_support import Fleet
from hosts_support import SimHost, SimHosts, start_hosts
from load_support import HeyLoad, HeyReport

pytestmark = pytest.mark.integration

STEP = re.compile(r"^\s+\[\s*(\d+)\] (\w+)\s+([\w-]+): (.*)$", re.M)


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
    f = Fleet(tmp_path_factory.mktemp("truth"), sim, apps=[h1, h2, h3], lb=h4)
    try:
        code, out = f.apply()
        assert code == 0, out
        yield f
    finally:
        f.cleanup()


def under_load(fleet: Fleet, keepalive: bool = True) -> tuple[int, str, HeyReport]:
    """`reconcile apply` while hey sends ~160 req/s through the LB."""
    with HeyLoad(fleet.url, concurrency=4, qps=40, max_duration_s=90,
                 keepalive=keepalive) as load:
        code, out = fleet.apply()
        report = load.stop()
    print(report.summary())
    return code, out, report


def steps(output: str) -> list[tuple[int, str, str, str]]:
    return [(int(n), status, host, text) for n, status, host, text in STEP.findall(output)]


@pytest.mark.parametrize("bind, why", [
    ("10.231.0.99:8443", "10.231.0.99:8443: the address is not on this host"),
    ("{lb}:22", "{lb}:22: the port is in use by pid"),  # the LB host's own sshd
])
def test_a_bind_the_host_cannot_give_is_refused_before_install(
        fleet: Fleet, sim: SimHosts, bind: str, why: str) -> None:
    lb = sim.hosts[3]
    config = fleet.haproxy_config()
    before = fleet.haproxy().procs()
    fleet.frontends_extra = [{"name": "alt", "bind": bind.format(lb=lb.address),
                              "default_service": "web"}]
    fleet.write(f"frontend alt on {bind}")
    try:
        code, out, report = under_load(fleet, keepalive=False)
        assert report.failed == 0 and report.non_2xx == 0, report.summary()
        assert code == 1, out
        assert why.format(lb=lb.address) in out and "nothing installed" in out, out
        # nothing installed, nothing reloaded, and no connection refused meanwhile
        assert fleet.haproxy_config() == config
        after = fleet.haproxy().procs()
        assert (after.reloads, after.current_pids) == (before.reloads, before.current_pids)
        assert report.responses > 100, report.summary()
    finally:
        fleet.frontends_extra = []
        fleet.write("no frontend alt")
    code, out = fleet.apply()
    assert code == 0, out


def break_image_on(host: SimHost) -> None:
    """Tag, on ``host`` only, a sample-app:v3 whose health check fails."""
    dockerfile = io.BytesIO(b"FROM sample-app:v1\nENV FAIL_HEALTH=1\n")  # v1 is there
    host.docker().images.build(fileobj=dockerfile, tag="sample-app:v3", rm=True)


def test_a_skipped_batch_reloads_nothing_and_says_so(fleet: Fleet, sim: SimHosts) -> None:
    h1, h2, h3, _ = sim.hosts
    break_image_on(h2)
    fleet.revisions = [("v3", 100)]
    fleet.rollout = {"limit": 1, "on_failure": "continue"}
    fleet.write("v3, host by host (h2's image is broken)")
    reloads = fleet.haproxy().procs().reloads
    code, out, report = under_load(fleet)
    assert code == 1, out
    assert (fleet.revisions_on(h1), fleet.revisions_on(h2), fleet.revisions_on(h3)) == (
        ["v3"], ["v1"], ["v3"])
    lines = steps(out)
    starts = {host: n for n, _, host, text in lines if text.startswith("start container")}
    h2_batch = [x for x in lines if starts["h2"] <= x[0] < starts["h3"]]
    configs = [x for x in h2_batch if "HAProxy config" in x[3] or "reload" in x[3]]
    assert configs, out
    for n, status, _, text in configs:
        assert status == "skipped", f"step {n} of h2's failed batch: {status} {text}"
    assert all("web failed" in text for _, _, _, text in configs), configs
    # one reload per batch that switched (h1's, h3's), confirmed by the master itself
    done = [x for x in lines if x[1] == "ok" and "reloaded HAProxy" in x[3]]
    assert len(done) == 2, out
    assert fleet.haproxy().procs().reloads - reloads == 2, out
    assert re.search(r"^run \d+: FAILED \(web failed", out, re.M), out
    assert report.failed == 0 and report.non_2xx == 0, report.summary()


def test_status_shows_what_each_host_serves(fleet: Fleet) -> None:
    code, text = fleet.cli("status")
    assert code == 0, text
    assert re.search(r"^  v1\s+serves\s", text, re.M), text  # not "gone": h2 serves it
    assert "on h1: v3 (1/1 serving)" in text, text
    assert "on h2: v1 (1/1 serving)" in text, text
    assert "on h3: v3 (1/1 serving)" in text, text


def test_a_changed_host_key_is_one_clear_line(fleet: Fleet, sim: SimHosts,
                                             tmp_path: Path) -> None:
    h3 = sim.hosts[2]
    other = paramiko.Ed25519Key.from_private_key_file(str(sim.key))  # a key, not h3's
    wrong = tmp_path / "known_hosts.wrong"
    wrong.write_text("".join(
        line + "\n" for line in sim.known_hosts.read_text().splitlines()
        if not line.startswith(h3.address + " ")) + f"{h3.address} {other.get_name()} "
        f"{other.get_base64()}\n")
    fleet.known_hosts = {"h3": wrong}
    fleet.write("h3's known key is wrong")
    try:
        code, out = fleet.apply()
    finally:
        fleet.known_hosts = {}
        fleet.write("known keys restored")
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    (line,) = errors
    assert line.startswith(f"error: host h3 (root@{h3.address}:22): HOST KEY MISMATCH: "
                           f"{wrong} has "), line
    assert line.count("SHA256:") == 2 and f"ssh-keygen -R {h3.address}" in line, line
    assert "Docker" not in line and "host h3: host h3" not in line, line
