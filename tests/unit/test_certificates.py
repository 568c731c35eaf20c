"""Certificates: the pure parts (PEM facts and payload, HAProxy's answers, the planner's
replace-certificate, the outcome check) and the runtime client's payload gate."""

from __future__ import annotations

import datetime
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import cert_file, converge, desired, service, simulate, with_images

from reconciler.lb.haproxy.certs import (
    PemError,
    config_certificates,
    parse_show_ssl_cert,
    pem_facts,
    pem_payload,
    renewal_due,
)
from reconciler.lb.haproxy.runtime import RuntimeSocket
from reconciler.model import AcmeSpec, DesiredState, Frontend, ObservedState
from reconciler.plan.actions import ObtainCertificate, ReplaceCertificate
from reconciler.plan.planner import plan
from reconciler.plan.verify import verify

PATH = "/etc/ssl/site.pem"


def make_pem(serial: int = 0x1234ABCD) -> tuple[str, str]:
    """(certificate + key PEM, the key's PEM) of a new self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site.test")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem, key_pem


def test_pem_facts_are_haproxys_serial_and_sha1_fingerprint() -> None:
    pem, _ = make_pem(0x00ABC)
    facts = pem_facts(pem)
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert facts.serial == "ABC"
    assert facts.fingerprint == cert.fingerprint(hashes.SHA1()).hex().upper()
    assert facts.validity == (1767225600.0, 1767225600.0 + 90 * 86400)
    assert pem_facts(pem + "\n").digest != facts.digest  # the digest is of the bytes


def test_pem_payload_keeps_blocks_only_and_never_quotes_the_file() -> None:
    pem, key = make_pem()
    payload = pem_payload("\n" + pem.replace("\n-----BEGIN PRIVATE", "\n\n-----BEGIN PRIVATE"))
    assert "\n\n" not in payload and not payload.endswith("\n")  # HAProxy's terminator
    assert payload == pem.strip()
    secret = key.splitlines()[1]
    bad = {
        "no CERTIFICATE block": key,
        "not exactly one private key block": pem.split("-----BEGIN PRIVATE")[0],
        "line 1 is outside a PEM block": "Bag Attributes\n" + pem,
        "is not base64 inside a PEM block": pem.replace(secret, secret + " ;show info"),
        "not exactly one private key block ": pem + key,
        "a PEM block is not closed": pem.rsplit("-----END", 1)[0],
    }
    for why, text in bad.items():
        with pytest.raises(PemError) as exc:
            pem_payload(text)
        assert why.strip() in str(exc.value)
        assert secret not in str(exc.value)


def test_runtime_client_sends_only_pem_payloads() -> None:
    sock = RuntimeSocket("/nonexistent/stats.sock")
    pem, key = make_pem()
    for path, payload in [(PATH, pem), (PATH, pem_payload(pem) + "\n\nshow info"),
                          ("/a b.pem", pem_payload(pem)), ("/a.pem;show info", pem_payload(pem))]:
        with pytest.raises(ValueError) as exc:
            sock.set_ssl_cert(path, payload)
        assert key.splitlines()[1] not in str(exc.value)


def test_parse_show_ssl_cert_reads_served_certificates_only() -> None:
    text = (
        "Filename: /etc/ssl/a.pem\nStatus: Used\nSerial: 00F29B\nnotBefore: x\n"
        "SHA1 FingerPrint: 5a1bdd\nSubject: /CN=a\n\n"
        "Filename: *" + PATH + "\nSerial: 01\nSHA1 FingerPrint: 99\n\n"
        "Can't display the certificate: Not found or the certificate is a bundle!\n"
    )
    assert parse_show_ssl_cert(text) == {"/etc/ssl/a.pem": ("F29B", "5A1BDD")}


def test_config_certificates_reads_bind_crt_words() -> None:
    text = ("frontend a\n    bind 127.0.0.1:443 ssl crt /b.pem\n"
            "frontend b\n    bind :8443 ssl crt /a.pem\n    # crt /c.pem\n"
            "frontend c\n    bind :9443 ssl crt /a.pem\n")
    assert config_certificates(text) == ("/a.pem", "/b.pem")


def tls_desired(lb_hosts: tuple[str, ...] = ("h1",)) -> DesiredState:
    https = Frontend(name="https", bind_address="127.0.0.1", bind_port=8443, routes=(),
                     default_service="web", tls_certificate=PATH)
    plain = Frontend(name="http", bind_address="127.0.0.1", bind_port=8080, routes=(),
                     default_service="web")
    return desired(service("web"), lb_hosts=lb_hosts, frontends=(plain, https))


def renew(world: ObservedState, host: str, serial: str) -> ObservedState:
    """The world after the file at PATH on LB host ``host`` was renewed."""
    new = cert_file(PATH, serial)
    lbs = tuple(
        replace(lb, certificates=tuple(
            replace(c, file_digest=new.file_digest, file_serial=new.file_serial,
                    file_fingerprint=new.file_fingerprint) if c.path == PATH else c
            for c in lb.certificates))
        if lb.host == host else lb
        for lb in world.lbs
    )
    return replace(world, lbs=lbs)


def test_renewed_file_is_replaced_at_runtime_on_every_lb_host_then_nothing() -> None:
    d = tls_desired(lb_hosts=("h1", "h2"))
    world = renew(renew(converge(d), "h1", "2"), "h2", "2")
    assert {a.host: a for a in plan(d, converge(d)).actions} == {}
    assert [str(m) for m in verify(d, world)] == [
        f"{h}: {PATH}: HAProxy serves serial 1; the file holds serial 2" for h in ("h1", "h2")]
    p = plan(d, world)
    assert [(a.kind, a.host) for a in p.actions] == [
        ("replace-certificate", "h1"), ("replace-certificate", "h2")]
    a = p.actions[0]
    assert isinstance(a, ReplaceCertificate)
    assert (a.path, a.old_serial, a.serial) == (PATH, "1", "2")
    assert a.reason == "the file holds certificate serial 2; HAProxy serves serial 1 from that path"
    after = simulate(p, world, d)
    assert verify(d, after) == ()
    assert plan(d, after).empty


def test_no_replacement_when_a_reload_reads_the_file_or_it_cannot_be_read() -> None:
    d = tls_desired()
    world = renew(converge(d), "h1", "2")
    moved = replace(d, loadbalancers=(replace(d.loadbalancers[0], frontends=(
        d.loadbalancers[0].frontends[0],
        replace(d.loadbalancers[0].frontends[1], bind_port=9443))),))
    p = plan(moved, world)
    assert [a.kind for a in p.actions] == ["configure-haproxy"]  # the reload loads it
    assert verify(moved, simulate(p, world, moved)) == ()
    (lb,) = world.lbs
    broken = replace(world, lbs=(replace(lb, certificates=(replace(
        lb.certificates[0], file_fingerprint=None, file_serial=None,
        problem=f"certificate file {PATH}: no CERTIFICATE block"),)),))
    assert plan(d, broken).empty
    assert [m.problem for m in verify(d, broken)] == [
        f"certificate file {PATH}: no CERTIFICATE block"]
    unloaded = replace(world, lbs=(replace(lb, certificates=()),))
    assert [m.problem for m in verify(d, unloaded)] == [
        "HAProxy serves no certificate from this path"]


# --------------------------------------------------------------------------- ACME

NOW = 1_800_000_000.0
ACME = AcmeSpec(directory="https://acme.example/dir", domains=("shop.example.com",))


def acme_desired(lb_hosts: tuple[str, ...]) -> DesiredState:
    shop = Frontend(name="shop", bind_address="127.0.0.1", bind_port=8444, routes=(),
                    default_service="web", tls_acme=ACME)
    plain = Frontend(name="http", bind_address="127.0.0.1", bind_port=8080, routes=(),
                     default_service="web")
    return desired(service("web"), lb_hosts=lb_hosts, frontends=(plain, shop))


def at(world: ObservedState, now: float) -> ObservedState:
    return replace(world, observed_at=now)


def test_acme_issues_once_and_the_other_lb_hosts_copy_then_nothing() -> None:
    d = acme_desired(("h1", "h2"))
    world = at(with_images(ObservedState(), d), NOW)
    p = plan(d, world)
    obtains = [a for a in p.actions if isinstance(a, ObtainCertificate)]
    assert [(a.host, a.source, a.reason) for a in obtains] == [
        ("h1", "", "no certificate yet"), ("h2", "h1", "no certificate yet")]
    assert p.actions[-1] is obtains[-1]  # after the config steps that load the placeholder
    after = simulate(p, world, d)
    assert verify(d, after) == ()
    assert plan(d, after).empty


def test_an_lb_host_added_later_copies_the_certificate() -> None:
    world = at(with_images(ObservedState(), acme_desired(("h1",))), NOW)
    world = simulate(plan(acme_desired(("h1",)), world), world, acme_desired(("h1",)))
    d = acme_desired(("h1", "h2"))
    p = plan(d, world)
    assert [(a.host, a.source) for a in p.actions if isinstance(a, ObtainCertificate)] == [
        ("h2", "h1")]
    after = simulate(p, world, d)
    assert plan(d, after).empty and verify(d, after) == ()


def test_acme_renews_at_two_thirds_of_the_lifetime_and_when_domains_change() -> None:
    d = acme_desired(("h1",))
    world = at(with_images(ObservedState(), d), NOW)
    world = simulate(plan(d, world), world, d)
    due = NOW - 1 + (90 * 86400 + 1) * 2 / 3  # the simulated issue: NOW - 1 .. NOW + 90 days
    assert plan(d, at(world, due - 60)).empty
    p = plan(d, at(world, due))
    assert [(a.kind, a.reason) for a in p.actions] == [
        ("obtain-certificate", "two thirds of its lifetime have passed: renewal due")]
    more = replace(d, loadbalancers=(replace(d.loadbalancers[0], frontends=(
        d.loadbalancers[0].frontends[0],
        replace(d.loadbalancers[0].frontends[1],
                tls_acme=replace(ACME, domains=("a.example.com", "shop.example.com"))))),))
    p = plan(more, world)
    assert [a.kind for a in p.actions] == ["configure-haproxy", "obtain-certificate"]
    assert p.actions[1].reason == "the certificate names shop.example.com"


def test_renewal_due_at_two_thirds() -> None:
    assert not renewal_due((0.0, 90.0), 59.9)
    assert renewal_due((0.0, 90.0), 60.0)
