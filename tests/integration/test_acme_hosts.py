"""ACME certificates on LB hosts reached over SSH (simulated hosts, hosts_support),
against Debian's pebble: h1 runs web, h2 is the load balancer's LB host, h3 an LB host
added later.

- One LB host: its HTTPS frontend asks pebble for a certificate; HAProxy on h2 answers
  the HTTP-01 challenge and serves the issued certificate; the account key and the
  certificate live in h2's state dir, in neither the manifests nor the reconciler's own
  state.
- h3 added to the Inventory and the load balancer (a new commit): the next pass gives it
  the environment's certificate (the one h2 holds, copied: the account and certificate
  belong to the load balancer, not to one LB host) and the account key; both serve it;
  h2's HAProxy is neither reloaded nor restarted.
- Renewal due on both (their files swapped for an old certificate) while the CA cannot
  reach any LB host: the issue on h2 fails, h3's copy of h2's file is skipped, both keep
  serving the current certificate, 0 reloads.
- Renewal due on both, pebble's DNS pointing the domain at h3, the added host (so the
  challenge is answered by it: every LB host answers every challenge): one pass renews
  the certificate once and serves the new one on both, 0 reloads.

The scenarios build on each other (one set of hosts and one pebble for the module).
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from acme_support import Pebble, aged_certificate
from cryptography import x509
from fleet_support import Fleet
from hosts_support import SimHost, SimHosts, start_hosts
from repo_support import git

pytestmark = pytest.mark.integration  # pebble and openssl: .ci/setup installs them

DOMAIN = "shop.acme.test"
HTTP, HTTPS = 8080, 8443


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHosts]:
    hosts = start_hosts(3)
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def pebble(sim: SimHosts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """pebble validating HTTP-01 on h2's HTTP frontend (its DNS resolves every name to h2)."""
    p = Pebble(tmp_path_factory.mktemp("pebble"), http_port=HTTP, address=sim["h2"].address)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REQUESTS_CA_BUNDLE", str(p.ca_bundle))  # the reconciler trusts pebble
        yield p
    p.stop()


@pytest.fixture(scope="module")
def fleet(sim: SimHosts, pebble: Pebble, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("acme"), sim, apps=[sim["h1"]], lb=sim["h2"],
              port=HTTP, bind=f":{HTTP}")
    f.frontends_extra = [{
        "name": "shop", "bind": f":{HTTPS}", "default_service": "web",
        "tls": {"acme": {"directory": pebble.directory, "domains": [DOMAIN],
                         "email": "ops@acme.test"}},
    }]
    f.write("ACME frontend shop")
    try:
        yield f
    finally:
        f.cleanup()


def served(host: SimHost) -> x509.Certificate:
    """The certificate HAProxy on ``host`` presents for DOMAIN (openssl s_client)."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"{host.address}:{HTTPS}",
                        "-servername", DOMAIN], check=False, input=b"", capture_output=True,
                       timeout=20)
    assert b"BEGIN CERTIFICATE" in r.stdout, (host.name, r.stdout[-500:], r.stderr[-500:])
    return x509.load_pem_x509_certificate(r.stdout)


def acme_dir(fleet: Fleet, host: SimHost) -> Path:
    return fleet.haproxy_dir(host) / "acme"


def file_cert(fleet: Fleet, host: SimHost) -> x509.Certificate:
    return x509.load_pem_x509_certificate((acme_dir(fleet, host) / "shop.pem").read_bytes())


def plan(fleet: Fleet) -> tuple[int, dict[str, Any]]:
    code, out = fleet.cli("plan", "-o", "json")
    assert code in (0, 2), out
    return code, json.loads(out[out.index("{"):])


def obtains(first: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """host -> its obtain-certificate action of a plan."""
    return {a["host"]: a for a in first["actions"] if a["kind"] == "obtain-certificate"}


def apply_twice(fleet: Fleet) -> str:
    """apply; apply again changes nothing; plan shows nothing. The first output."""
    code, out = fleet.apply()
    assert code == 0, out
    code, again = fleet.apply()
    assert code == 0 and "No changes" in again, again
    code, left = plan(fleet)
    assert code == 0 and left["actions"] == [], left
    return out


def key_lines(pem: str) -> list[str]:
    """The base64 lines of the private key blocks of ``pem``."""
    out, inside = [], False
    for line in pem.splitlines():
        if line.startswith("-----"):
            inside = "PRIVATE KEY" in line and line.startswith("-----BEGIN")
        elif inside and line:
            out.append(line)
    return out


def assert_nowhere_but_lb_hosts(fleet: Fleet, secrets: list[str], *outputs: str) -> None:
    """No line of ``secrets`` in the manifests repository (files and history), the
    reconciler's own state dir (its SQLite history) or the passes' output."""
    files = [p for base in (fleet.repo, fleet.state) for p in base.rglob("*") if p.is_file()]
    history = git(fleet.repo, "log", "-p", "--all")
    for line in secrets:
        assert not any(line.encode() in p.read_bytes() for p in files), line
        assert line not in history and not any(line in o for o in outputs)
    assert not [p for p in fleet.repo.rglob("*.pem")] and not [
        p for p in fleet.repo.rglob("*.key")]


def test_lb_host_over_ssh_serves_the_issued_certificate(
        fleet: Fleet, sim: SimHosts, pebble: Pebble) -> None:
    h2 = sim["h2"]
    code, first = plan(fleet)
    assert code == 2 and list(obtains(first)) == ["h2"], first
    out = apply_twice(fleet)
    assert "issued by " + pebble.directory in out, out
    cert = served(h2)
    assert "Pebble Intermediate" in cert.issuer.rfc4514_string(), cert.issuer
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [DOMAIN]
    # What h2 serves is what its state dir holds; the key and account key are there, 0600.
    assert file_cert(fleet, h2).serial_number == cert.serial_number
    files = acme_dir(fleet, h2)
    assert files.is_relative_to(h2.state_dir)
    for name in ("account.key", "shop.pem"):
        assert stat.S_IMODE((files / name).stat().st_mode) == 0o600, name
    secrets = key_lines((files / "shop.pem").read_text() + (files / "account.key").read_text())
    assert len(secrets) >= 4, "no key found in h2's ACME files"
    assert_nowhere_but_lb_hosts(fleet, secrets, out)
    # The challenge was taken out of HAProxy's map again.
    assert fleet.haproxy(h2).stats.command(f"show map {files}/challenges.map").strip() == ""


def test_lb_host_added_later_gets_the_certificate_without_reloading_the_first(
        fleet: Fleet, sim: SimHosts) -> None:
    h2, h3 = sim["h2"], sim["h3"]
    cert = served(h2)
    before = fleet.haproxy(h2).procs()
    config = fleet.haproxy_config(h2)
    fleet.extra_lbs = [h3]
    fleet.write("LB host h3 added")
    code, first = plan(fleet)
    assert code == 2, first
    actions = obtains(first)
    assert list(actions) == ["h3"] and actions["h3"]["source"] == "h2", first
    out = apply_twice(fleet)
    assert "copied from h2" in out, out
    # Both serve the environment's one certificate (same serial, same key on disk).
    for host in (h2, h3):
        assert served(host).serial_number == cert.serial_number, host.name
    for name in ("shop.pem", "account.key"):
        assert (acme_dir(fleet, h3) / name).read_bytes() == (
            acme_dir(fleet, h2) / name).read_bytes(), name
        assert stat.S_IMODE((acme_dir(fleet, h3) / name).stat().st_mode) == 0o600, name
    # h2's HAProxy was left alone: same config, no reload, same workers.
    after = fleet.haproxy(h2).procs()
    assert (after.reloads, after.current_pids) == (before.reloads, before.current_pids)
    assert fleet.haproxy_config(h2) == config
    assert fleet.haproxy(h3).procs().current_pids  # h3's own HAProxy runs


def age_both(fleet: Fleet, hosts: tuple[SimHost, ...]) -> None:
    """Renewal due on every host: its file swapped for one certificate that has used two
    thirds of its lifetime (HAProxy still serves what it served)."""
    aged = aged_certificate(DOMAIN, days_used=61, days_left=29)
    for host in hosts:
        (acme_dir(fleet, host) / "shop.pem").write_text(aged)


def test_failed_renewal_copies_nothing_and_changes_nothing_served(
        fleet: Fleet, sim: SimHosts, pebble: Pebble) -> None:
    h1, h2, h3 = sim["h1"], sim["h2"], sim["h3"]
    serial = served(h2).serial_number
    before = {h.name: fleet.haproxy(h).procs() for h in (h2, h3)}
    age_both(fleet, (h2, h3))
    pebble.resolve(DOMAIN, h1.address)  # the app host: no LB answers the challenge there
    # (A short health timeout: the failed pass re-checks its outcome for at most that long.)
    code, out = fleet.cli("apply", "--health-timeout", "2")
    assert code == 1, out
    assert re.search(r"FAILED +h2: certificate for shop.acme.test .* - ACME https://", out), out
    # h3's copy of h2's file (the certificate due for renewal) is skipped, not served.
    assert re.search(r"skipped +h3: .*LB host h2 got no new certificate in this pass", out), out
    for host in (h2, h3):
        assert served(host).serial_number == serial, host.name
        after = fleet.haproxy(host).procs()
        assert (after.reloads, after.current_pids) == (
            before[host.name].reloads, before[host.name].current_pids), host.name
        assert fleet.haproxy(host).stats.command(
            f"show map {acme_dir(fleet, host)}/challenges.map").strip() == "", host.name


def test_renewal_on_both_lb_hosts_within_one_pass_without_reload(
        fleet: Fleet, sim: SimHosts, pebble: Pebble) -> None:
    h2, h3 = sim["h2"], sim["h3"]
    old = served(h2)
    before = {h.name: fleet.haproxy(h).procs() for h in (h2, h3)}
    age_both(fleet, (h2, h3))  # (again: the previous test may have run or not)
    # The CA now reaches the domain on h3 only: the added host answers the challenge.
    pebble.resolve(DOMAIN, h3.address)
    code, first = plan(fleet)
    assert code == 2, first
    actions = obtains(first)
    assert [a["kind"] for a in first["actions"]] == ["obtain-certificate"] * 2, first
    assert all("renewal due" in a["reason"] for a in actions.values()), first
    assert (actions["h2"]["source"], actions["h3"]["source"]) == ("", "h2"), first
    out = apply_twice(fleet)
    new = served(h2)
    assert "Pebble Intermediate" in new.issuer.rfc4514_string(), new.issuer
    assert new.serial_number != old.serial_number
    assert served(h3).serial_number == new.serial_number
    for host in (h2, h3):
        assert file_cert(fleet, host).serial_number == new.serial_number, host.name
        after = fleet.haproxy(host).procs()
        assert (after.reloads, after.current_pids) == (
            before[host.name].reloads, before[host.name].current_pids), host.name
        files = acme_dir(fleet, host)
        assert fleet.haproxy(host).stats.command(
            f"show map {files}/challenges.map").strip() == "", host.name
    assert_nowhere_but_lb_hosts(fleet, key_lines((acme_dir(fleet, h2) / "shop.pem").read_text()),
                                out)
