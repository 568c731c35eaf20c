"""LB hosts and rollouts tell the truth, on simulated SSH hosts (3 app hosts, 1 LB host).

- A frontend whose address the LB host does not have, or whose port another process
  holds, passes `haproxy -c` but cannot be loaded: it is refused before anything is
  installed, so HAProxy never refuses a connection over it (fresh connections under load).
- A rollout batch whose steps were skipped (its host failed its health gate) reloads
  nothing and says so: its config steps print as skipped with the reason, and the master
  counts exactly one reload per batch that switched.
- `status` shows, per host, which release runs and serves while a rollout is held.
- A changed host key is one clear line.
- Two LB hosts, one of which rejects the new config with `haproxy -c` (its certificate
  was deployed to the other one only): neither is switched, both keep serving on their
  old config; once the certificate is on both, the next pass switches both.

The scenarios build on each other (one set of hosts for the module; h5 is the second LB
host of the last one only).
"""

from __future__ import annotations

import io
import re
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from fleet_support import Fleet, steps
from hosts_support import SimHost, SimHosts, start_hosts
from load_support import HeyLoad, HeyReport

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def sim() -> Iterator[SimHosts]:
    # Not shared with test_ssh_hosts (a session fixture would save ~4 s of start and
    # close): test_sim_hosts, which runs between the two, starts and removes hosts of its
    # own on the one network, and both modules leave state behind on the hosts (images,
    # a broken v3 tag, HAProxy on h4:8080) that the other's assertions would see.
    hosts = start_hosts(5)
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def fleet(sim: SimHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    h1, h2, h3, h4 = sim.hosts[:4]
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
        # the load ran across the whole apply (it starts before and stops after it);
        # how many requests that is depends on how fast the refusal comes (~0.6 s now)
        assert report.responses > 0, report.summary()
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
    h1, h2, h3, _ = sim.hosts[:4]
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
    # the batches that switched (h1's, h3's) added their servers at runtime and wrote the
    # config without a reload: none at all, confirmed by the master itself
    written = [x for x in lines if x[1] == "ok" and "HAProxy config" in x[3]]
    assert len(written) >= 2, out
    assert not [x for x in lines if "reload" in x[3] and "no reload" not in x[3]], out
    assert fleet.haproxy().procs().reloads == reloads, out
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


# --------------------------------------------------------------------------- two LB hosts

@pytest.fixture(scope="module")
def pair(sim: SimHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Another environment: web on h1 behind one load balancer on two LB hosts, h4 and h5,
    each with its own HAProxy on *:8081. The certificate directory is h5's own (its sshd,
    so everything the reconciler runs there, sees an empty tmpfs at that path): what is
    written there from this machine reaches h4 only, as on machines that share nothing."""
    h1, _, _, h4, h5 = sim.hosts
    certs = sim.base / "certs"
    certs.mkdir()
    h5.stop_sshd()
    h5.own_dirs = (str(certs),)
    h5.start_sshd()
    f = Fleet(tmp_path_factory.mktemp("pair"), sim, apps=[h1], lb=h4, extra_lbs=[h5],
              port=8081, bind=":8081")
    try:
        code, out = f.apply()
        assert code == 0, out
        yield f
    finally:
        f.cleanup()
        h5.stop_sshd()
        h5.own_dirs = ()
        h5.start_sshd()


def _ssh(sim: SimHosts, host: SimHost) -> paramiko.SSHClient:
    """An SSH connection to ``host`` as the operator would open one (close it)."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(sim.known_hosts))
    client.connect(host.address, username="root", key_filename=str(sim.key),
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def _https(url: str) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a self-signed certificate
    with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
        return int(resp.status)


def test_a_config_one_lb_host_rejects_switches_no_lb_host(pair: Fleet, sim: SimHosts) -> None:
    # The host that rejects is the later one in plan order (h4's config step comes first):
    # installing host by host without checking them all first would switch h4.
    h4, h5 = pair.lbs
    cert = sim.base / "certs" / "edge.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=edge.test", "-keyout", str(cert), "-out", str(cert)],
                   check=True, capture_output=True)
    with _ssh(sim, h5) as ssh5, ssh5.open_sftp() as sftp5, pytest.raises(FileNotFoundError):
        sftp5.stat(str(cert))  # deployed to h4 only
    configs = {lb.name: (pair.haproxy_dir(lb) / "haproxy.cfg").read_bytes() for lb in pair.lbs}
    procs = {lb.name: pair.haproxy(lb).procs() for lb in pair.lbs}
    pair.frontends_extra = [{"name": "https", "bind": ":8443", "tls": {"certificate": str(cert)},
                             "default_service": "web"}]
    pair.write("https frontend; its certificate is on h4 only")
    with HeyLoad(pair.url_of(h4), concurrency=2, qps=20) as load4, \
            HeyLoad(pair.url_of(h5), concurrency=2, qps=20) as load5:
        code, out = pair.apply()
        reports = {"h4": load4.stop(), "h5": load5.stop()}
    assert code == 1, out
    # Neither LB host was switched: h4 accepted its new config, but it is installed only
    # once every LB host accepted its own.
    for lb in pair.lbs:
        assert (pair.haproxy_dir(lb) / "haproxy.cfg").read_bytes() == configs[lb.name], lb.name
        after = pair.haproxy(lb).procs()
        assert (after.reloads, after.current_pids) == (
            procs[lb.name].reloads, procs[lb.name].current_pids), lb.name
        left = [p.name for p in pair.haproxy_dir(lb).iterdir() if p.name.endswith(".new")]
        assert not left, (lb.name, left)  # the checked file of h4 was not left behind
    assert "LB host h5: haproxy -c rejected the new config; nothing installed" in out, out
    assert "(no LB host was switched)" in out and "LB host h4: haproxy" not in out, out
    assert re.search(r"^run \d+: FAILED \(haproxy failed", out, re.M), out
    for name, report in reports.items():  # both kept serving on their old config
        print(name, report.summary())
        assert report.failed == 0 and report.non_2xx == 0, (name, report.summary())
        assert report.responses > 20, (name, report.summary())
    assert "error: haproxy: LB host h5: haproxy -c rejected the new config" in out, out
    code, text = pair.cli("status")
    assert re.search(r"^last run \d+: failed at commit \w+; .*; haproxy failed$", text, re.M), text
    assert "HELD" not in text, text  # nothing held: every pass tries again

    # The fix: the certificate deployed to h5 too. The next pass (same commit) switches both.
    with _ssh(sim, h5) as ssh5, ssh5.open_sftp() as sftp5:
        sftp5.put(str(cert), str(cert))
    code, out = pair.apply()
    assert code == 0, out
    for lb in pair.lbs:
        assert f"bind :8443 ssl crt {cert}" in pair.haproxy_config(lb), lb.name
        after = pair.haproxy(lb).procs()
        assert after.reloads == procs[lb.name].reloads + 1, (lb.name, after)
        assert not set(after.current_pids) & set(procs[lb.name].current_pids), (lb.name, after)
        assert _https(f"https://{lb.address}:8443/") == 200, lb.name
        with urllib.request.urlopen(pair.url_of(lb), timeout=5) as resp:
            assert resp.status == 200, lb.name
    code, out = pair.apply()
    assert code == 0 and "No changes" in out, out
