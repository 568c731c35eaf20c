"""Debian's pebble (an ACME test CA) on loopback for the tests, with
pebble-challtestsrv as its DNS server (every name resolves to 127.0.0.1), so that its
HTTP-01 validation reaches HAProxy's HTTP frontend on ``http_port``."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from deploy_support import free_port


def _udp_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pebble:
    """pebble on 127.0.0.1 validating HTTP-01 on ``http_port``; ``ca_bundle`` trusts its
    listener, ``directory`` is its ACME directory URL. Stop with ``stop``."""

    def __init__(self, root: Path, http_port: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.mgmt = free_port(), free_port()
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
            subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1",
                              "-defaultIPv6", "", "-dns01", f"127.0.0.1:{self.dns}",
                              "-http01", "", "-https01", "", "-tlsalpn01", "",
                              "-management", f"127.0.0.1:{free_port()}"],
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

    def log(self) -> str:
        return (self.root / "pebble.log").read_text()[-3000:]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=10)
