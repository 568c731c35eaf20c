"""A real etcd cluster on this machine for tests: three members on 127.0.0.1, TLS for
clients and peers.

``EtcdCluster.start(root)`` makes a throwaway CA, one member certificate (server and
client use: peers authenticate each other with it) and one client certificate for the
reconciler under ``root/pki``, then starts three ``etcd`` processes (Debian's
``etcd-server``, installed by ``.ci/setup``) on free ports, each with its own data dir
under ``root``, and polls every member's ``/health`` until all say true. Members can be
killed (SIGKILL), stopped (SIGTERM) and started again on the same data dir and ports;
``close()`` kills whatever still runs. Each member also dies with the test process
(PR_SET_PDEATHSIG), so a crashed test run leaves no etcd behind.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ETCD = "/usr/bin/etcd"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    """File paths of the throwaway CA and the certificates signed by it."""

    ca: Path
    member_cert: Path
    member_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: a client trusting it must be refused


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str,
          usages: list[x509.ObjectIdentifier], ips: bool,
          address: str = "127.0.0.1") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if ips:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            *{x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", address)},
            x509.DNSName("localhost")]),
            critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_pki(root: Path, address: str = "127.0.0.1") -> Pki:
    """A CA, a member certificate (server + client auth, for 127.0.0.1, ``address`` and
    localhost) and a client certificate, written under ``root`` (created)."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("reconciler-test-etcd-ca")
    member_key, member = _leaf(ca_key, ca, "etcd-member",
                               [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                               ips=True, address=address)
    client_key, client = _leaf(ca_key, ca, "reconciler", [ExtendedKeyUsageOID.CLIENT_AUTH],
                               ips=False)
    _, other = _ca("some-other-ca")
    pem = serialization.Encoding.PEM
    pki = Pki(root / "ca.crt", root / "member.crt", root / "member.key", root / "client.crt",
              root / "client.key", root / "other-ca.crt")
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.member_cert.write_bytes(member.public_bytes(pem))
    _write_key(member_key, pki.member_key)
    pki.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(client_key, pki.client_key)
    pki.other_ca.write_bytes(other.public_bytes(pem))
    return pki


# ------------------------------------------------------------------ the cluster


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"https://{self.address}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}:{self.peer_port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    root: Path
    pki: Pki
    members: list[Member] = field(default_factory=list)
    token: str = "reconciler-test"

    @classmethod
    def start(cls, root: Path, size: int = 3, address: str = "127.0.0.1") -> EtcdCluster:
        """A ``size``-member TLS cluster under ``root``, every member healthy, listening
        on ``address`` (e.g. the simulated hosts' gateway, so their agents reach it)."""
        root.mkdir(parents=True, exist_ok=True)
        cluster = cls(root, make_pki(root / "pki", address), token=f"t{time.time_ns()}")
        for i in range(size):
            cluster.members.append(Member(f"m{i}", free_port(), free_port(),
                                          root / f"m{i}.data", root / f"m{i}.log",
                                          address=address))
        try:
            for i in range(size):
                cluster.start_member(i, wait=False)
            cluster.wait_healthy()
        except BaseException:
            cluster.close()
            raise
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _args(self, m: Member) -> list[str]:
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        p = self.pki
        return [
            ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.endpoint, "--advertise-client-urls", m.endpoint,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--cert-file", str(p.member_cert), "--key-file", str(p.member_key),
            "--trusted-ca-file", str(p.ca), "--client-cert-auth",
            "--peer-cert-file", str(p.member_cert), "--peer-key-file", str(p.member_key),
            "--peer-trusted-ca-file", str(p.ca), "--peer-client-cert-auth",
            # Fast elections: a killed member's leadership moves within about a second.
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--logger", "zap", "--log-outputs", "stderr",
        ]

    def start_member(self, i: int, wait: bool = True) -> None:
        """Start member ``i`` (again: on its data dir and ports); with ``wait``, until it
        answers healthy."""
        m = self.members[i]
        assert not m.running(), f"{m.name} already runs"
        with m.log.open("ab") as log:
            m.proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *self._args(m)],
                                      stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        if wait:
            self.wait_healthy([i])

    def revive(self) -> None:
        """Start every member that does not run (after a test killed some, whether or not
        it got that far), then wait until all answer healthy."""
        for i, m in enumerate(self.members):
            if not m.running():
                self.start_member(i, wait=False)
        self.wait_healthy()

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` and reap it."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(timeout=10)

    def stop(self, i: int) -> None:
        """SIGTERM member ``i`` (a clean stop) and reap it."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.terminate()
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)

    def restart(self, i: int) -> None:
        self.stop(i)
        self.start_member(i)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return ctx

    def healthy(self, i: int) -> bool:
        """Member ``i`` answers /health with true (it has a leader: the cluster has quorum)."""
        url = self.members[i].endpoint + "/health"
        try:
            with urllib.request.urlopen(url, timeout=2, context=self.client_context()) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_healthy(self, which: list[int] | None = None,
                     timeout: float = START_TIMEOUT) -> None:
        which = list(range(len(self.members))) if which is None else which
        deadline = time.monotonic() + timeout
        while not all(self.healthy(i) for i in which):
            for i in which:
                m = self.members[i]
                if m.proc is not None and m.proc.poll() is not None:
                    raise AssertionError(f"etcd {m.name} exited ({m.proc.returncode}):\n"
                                         + m.log.read_text()[-3000:])
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {self.members[i].name}\n"
                                  + self.members[i].log.read_text()[-1500:] for i in which)
                raise AssertionError(f"etcd members {which} not healthy in {timeout:.0f}s\n"
                                     + tails)
            time.sleep(0.2)

    def close(self) -> None:
        """Kill every member; nothing keeps running."""
        for i in range(len(self.members)):
            with contextlib.suppress(Exception):
                self.kill(i)
