"""Certificates of TLS frontends: what a PEM file holds and what HAProxy serves. Pure.

A certificate renewed at the same path is noticed by content, not by path: the observer
reads the PEM file on the LB host (``pem_facts``) and asks HAProxy what it loaded from
that path (``show ssl cert PATH``, ``parse_show_ssl_cert``); the planner compares the
leaf certificates' SHA-1 fingerprints (the form HAProxy reports). Nothing here returns
or quotes key material: facts are digests, serials and fingerprints only, and errors
name the path and the kind of problem, never a line of the file.

``pem_payload`` is the one gate for what may be sent to HAProxy as the multi-line
payload of ``set ssl cert``: PEM blocks only, normalised so that HAProxy's payload
terminator (an empty line) cannot occur inside it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

# cryptography is imported where a certificate or key is handled: a pass without TLS
# frontends does not pay for loading it (about 0.1 s of start-up).
if TYPE_CHECKING:
    from cryptography import x509

_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----")
_END = re.compile(r"-----END ([A-Z0-9 ]{1,40})-----")
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]{1,128}")
_KEY_LABELS = ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")
MAX_PEM_BYTES = 256 * 1024


class PemError(ValueError):
    """A PEM file or payload is not what a TLS frontend needs. The message names the
    problem and never quotes the content."""


@dataclass(frozen=True)
class PemFacts:
    """What a certificate file says about its leaf certificate (the first one)."""

    digest: str  # sha256 of the whole file's bytes, hex
    serial: str  # upper-case hex, no leading zeros (as HAProxy prints it)
    fingerprint: str  # SHA-1 of the leaf's DER, upper-case hex (as HAProxy prints it)
    validity: tuple[float, float]  # not before, not after (seconds since the epoch)
    names: tuple[str, ...]  # DNS names (subject alternative names), sorted


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """(label, base64 lines) of each PEM block; ``PemError`` on anything else than
    blocks and blank lines."""
    blocks: list[tuple[str, list[str]]] = []
    label: str | None = None
    body: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if label is None:
            if not line:
                continue
            begin = _BEGIN.fullmatch(line)
            if begin is None:
                raise PemError(f"line {number} is outside a PEM block")
            label, body = begin.group(1), []
            continue
        end = _END.fullmatch(line)
        if end is not None:
            if end.group(1) != label:
                raise PemError(f"line {number} ends a different PEM block than it began")
            blocks.append((label, body))
            label = None
        elif _BASE64_LINE.fullmatch(line):
            body.append(line)
        else:
            raise PemError(f"line {number} is not base64 inside a PEM block")
    if label is not None:
        raise PemError("a PEM block is not closed")
    return blocks


def pem_payload(text: str) -> str:
    """``text`` as the payload of ``set ssl cert``: its PEM blocks, one line each of
    armour or base64, no blank line, no trailing newline. ``PemError`` unless it holds
    at least one CERTIFICATE and exactly one private key block and nothing else."""
    if len(text.encode()) > MAX_PEM_BYTES:
        raise PemError(f"larger than {MAX_PEM_BYTES} bytes")
    blocks = _blocks(text)
    labels = [label for label, _ in blocks]
    if "CERTIFICATE" not in labels:
        raise PemError("no CERTIFICATE block")
    if sum(label in _KEY_LABELS for label in labels) != 1:
        raise PemError("not exactly one private key block")
    if any(label not in ("CERTIFICATE", *_KEY_LABELS) for label in labels):
        raise PemError("a block that is neither a certificate nor a private key")
    lines: list[str] = []
    for label, body in blocks:
        lines += [f"-----BEGIN {label}-----", *body, f"-----END {label}-----"]
    return "\n".join(lines)


def pem_facts(text: str) -> PemFacts:
    """Facts of the first certificate of a PEM file's text; ``PemError`` when it has
    none that parses."""
    from cryptography import x509

    for label, body in _blocks(text):
        if label != "CERTIFICATE":
            continue
        try:
            der = base64.b64decode("".join(body), validate=True)
            cert = x509.load_der_x509_certificate(der)
        except (binascii.Error, ValueError):
            raise PemError("its first certificate does not parse") from None
        return PemFacts(
            digest=hashlib.sha256(text.encode()).hexdigest(),
            serial=f"{cert.serial_number:X}",
            fingerprint=hashlib.sha1(der).hexdigest().upper(),  # noqa: S324 - HAProxy's form
            validity=(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()),
            names=_dns_names(cert),
        )
    raise PemError("no CERTIFICATE block")


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(sorted(n.lower() for n in san.value.get_values_for_type(x509.DNSName)))


def renewal_due(validity: tuple[float, float], now: float) -> bool:
    """True once two thirds of a certificate's lifetime have passed at ``now``: renewal
    comes well before expiry (30 of 90 days left), with time to retry."""
    not_before, not_after = validity
    return now >= not_before + (not_after - not_before) * 2 / 3


CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def acme_files_dir(haproxy_dir: str) -> str:
    """Where an LB host keeps its ACME files: the account key, each ACME frontend's
    certificate and key, and the HTTP-01 challenge map (never in git)."""
    return f"{haproxy_dir}/acme"


def acme_cert_path(acme_dir: str, frontend: str) -> str:
    """The PEM file (chain and key) an ACME frontend binds."""
    return f"{acme_dir}/{frontend}.pem"


def challenge_map(acme_dir: str) -> str:
    """The map HAProxy answers HTTP-01 challenges from: token -> key authorization."""
    return f"{acme_dir}/challenges.map"


def normal_serial(serial: str) -> str:
    """A serial in one form (upper-case hex, no leading zeros) whatever printed it."""
    return serial.strip().upper().lstrip("0") or "0"


def parse_show_ssl_cert(text: str) -> dict[str, tuple[str, str]]:
    """path -> (serial, SHA-1 fingerprint) of each certificate in the answers to one or
    more ``show ssl cert PATH`` commands (concatenated). A path HAProxy does not know
    (its answer has no ``Filename:``) is absent. A transaction's uncommitted copy
    (``Filename: *PATH``) is skipped: only what is served counts."""
    out: dict[str, tuple[str, str]] = {}
    path: str | None = None
    serial = fingerprint = ""
    for line in [*text.splitlines(), "Filename: "]:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Filename":
            if path and not path.startswith("*") and serial and fingerprint:
                out[path] = (normal_serial(serial), fingerprint.upper())
            path, serial, fingerprint = value, "", ""
        elif key == "Serial":
            serial = value
        elif key == "SHA1 FingerPrint":
            fingerprint = value
    return out


def config_certificates(text: str) -> tuple[str, ...]:
    """The certificate paths (``crt PATH`` words of ``bind`` lines) of a config, sorted
    and unique. Reads what ``render`` writes: one path per ``crt``."""
    found: set[str] = set()
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0] != "bind":
            continue
        for word, nxt in itertools.pairwise(tokens):
            if word == "crt":
                found.add(nxt)
    return tuple(sorted(found))


def new_key_pem() -> str:
    """A new EC P-256 private key, PKCS#8 PEM (for certificates and ACME accounts)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def placeholder_pem() -> str:
    """A self-signed certificate and key for an ACME frontend that has none yet, so that
    HAProxy can load its config; it expired a moment ago, so its renewal is due."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key_pem = new_key_pem()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reconciler placeholder")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now - datetime.timedelta(seconds=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem
