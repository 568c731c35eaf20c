"""An LB host's ACME files and HTTP-01 answers: what the executor's ACME steps need of
the HAProxy on one LB host.

Files live in ``certs.acme_files_dir`` of the HAProxy's directory on that host (reached
through its transport, local or SSH), written atomically with mode 0600: the account key
(``account.key``), each ACME frontend's chain and key (``<frontend>.pem``) and the
challenge map HAProxy answers from. Challenges are put in and taken out of that map
through the runtime API (``add map``/``del map``), never by a reload. Nothing here prints
a file's content; errors name the file.
"""

from __future__ import annotations

import re

from reconciler.lb.haproxy.certs import acme_cert_path, challenge_map, placeholder_pem
from reconciler.lb.haproxy.runtime import RuntimeSocket
from reconciler.lb.port import LBError
from reconciler.transport.base import Transport, TransportError

ACCOUNT_KEY = "account.key"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{16,128}\.[A-Za-z0-9_-]{16,128}")


class AcmeFiles:
    """The ACME files and challenge map of one LB host's HAProxy."""

    def __init__(self, transport: Transport, stats: RuntimeSocket, acme_dir: str) -> None:
        self.transport = transport
        self.stats = stats
        self.dir = acme_dir
        self._on = "" if transport.name == "local" else f"LB host {transport.name}: "

    def cert_path(self, frontend: str) -> str:
        return acme_cert_path(self.dir, frontend)

    def read(self, name: str) -> str | None:
        """The text of ``name`` in the ACME folder; None when absent. LBError (naming
        the file, quoting nothing) when it cannot be read."""
        try:
            return self.transport.read_text(f"{self.dir}/{name}")
        except TransportError as e:
            raise LBError(f"{self._on}ACME file {name}: {e}") from None

    def write(self, name: str, text: str) -> None:
        """Replace ``name`` in the ACME folder atomically, mode 0600."""
        try:
            self.transport.write_text(f"{self.dir}/{name}", text, mode=0o600)
        except TransportError as e:
            raise LBError(f"{self._on}ACME file {name}: {e}") from None

    def prepare(self, frontends: list[str]) -> None:
        """What a config with ACME frontends needs before ``haproxy -c``: the challenge
        map (empty) and, for each frontend without a certificate yet, a self-signed
        placeholder that is already due for renewal (the pass then obtains the real one
        through the runtime API). Idempotent; keeps what exists."""
        map_path = challenge_map(self.dir)
        name = map_path.rsplit("/", 1)[1]
        if self.read(name) is None:
            self.write(name, "")
        for fe in frontends:
            pem = f"{fe}.pem"
            if self.read(pem) is None:
                self.write(pem, placeholder_pem())

    def set_challenge(self, token: str, key_authorization: str) -> None:
        """HAProxy answers ``/.well-known/acme-challenge/<token>`` with
        ``key_authorization`` from now on (runtime API, no reload)."""
        if not _BASE64URL.fullmatch(token) or not _KEY_AUTHORIZATION.fullmatch(key_authorization):
            raise LBError(f"{self._on}refusing an ACME challenge that is not base64url")
        map_path = challenge_map(self.dir)
        answer = self.stats.commands(
            [f"del map {map_path} {token}", f"add map {map_path} {token} {key_authorization}"]
        )
        if answer.strip() and "not found" not in answer.lower():
            raise LBError(f"{self._on}HAProxy refused the ACME challenge: {answer.strip()}")

    def clear_challenge(self, token: str) -> None:
        """Stop answering ``token`` (gone already: no error)."""
        if _BASE64URL.fullmatch(token):
            self.stats.command(f"del map {challenge_map(self.dir)} {token}")
