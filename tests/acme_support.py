"""Debian's pebble (an ACME test CA) on loopback for the tests, with
pebble-challtestsrv as its DNS server (every name resolves to ``address``, 127.0.0.1
unless given; ``resolve`` points one name elsewhere), so that its HTTP-01 validation
reaches HAProxy's HTTP frontend on ``http_port`` there."""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from deploy_support import free_port


def _udp_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pebble:
    """pebble on 127.0.0.1 validating HTTP-01 on ``address``:``http_port``; ``ca_bundle``
    trusts its listener, ``directory`` is its ACME directory URL. Stop with ``stop``."""

    def __init__(self, root: Path, http_port: int, address: str = "127.0.0.1") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.mgmt, self.dns_mgmt = free_port(), free_port(), free_port()
        self.dns = _udp_free_port()
        self.ca_bundle = root / "listener.pem"
        key = root / "listener.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(self.ca_bundle)],
                       check=True, capture_output=True)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(self.ca_bundle), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        (root / "pebble.json").write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        self.procs = [
            subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", address,
                              "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns}",
                              "-http01", "", "-https01", "", "-tlsalpn01", "",
                              "-management", f"127.0.0.1:{self.dns_mgmt}"],
                             stdout=(root / "challtestsrv.log").open("w"),
                             stderr=subprocess.STDOUT),
            subprocess.Popen(["pebble", "-config", str(root / "pebble.json"),
                              "-dnsserver", f"127.0.0.1:{self.dns}"],
                             env=env, stdout=(root / "pebble.log").open("w"),
                             stderr=subprocess.STDOUT),
        ]
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        self._wait()

    def _wait(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.directory, context=ctx, timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("pebble did not answer: " + self.log()) from None
                time.sleep(0.1)

    def roots(self) -> str:
        """The PEM of pebble's issuing root (changes every start)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.mgmt}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return str(resp.read().decode())

    def resolve(self, name: str, address: str) -> None:
        """From now on pebble's DNS answers ``name`` with ``address`` only (its
        validation connects there)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # add-a appends to the name's addresses: clear them first.
        for path, body in (("clear-a", {"host": name}),
                           ("add-a", {"host": name, "addresses": [address]})):
            url = f"http://127.0.0.1:{self.dns_mgmt}/{path}"
            data = json.dumps(body).encode()
            with opener.open(urllib.request.Request(url, data=data), timeout=5) as resp:
                assert resp.status == 200, (path, resp.status)

    def log(self) -> str:
        return (self.root / "pebble.log").read_text()[-3000:]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)


def aged_certificate(domain: str, days_used: int, days_left: int) -> str:
    """A self-signed certificate and key for ``domain`` that has used ``days_used`` days
    of its lifetime (to make a renewal due)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=days_used))
            .not_valid_after(now + datetime.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
