"""The executor's ACME step: give an ACME frontend its certificate on one LB host.

Issue (``ObtainCertificate.source`` ""): the account key is read from the first LB host
of the load balancer that has one (a new one is made and written to every LB host
otherwise); every LB host of the load balancer answers the HTTP-01 challenges (any of
them may receive the CA's request); the chain and key are written to this host's state
dir and served through the runtime API. Copy (``source`` set): the file of LB host
``source`` is written here and served, and its account key is written here too (an LB
host added later holds the load balancer's account as well, which so outlives the LB host
that registered it); skipped when the issue on ``source`` failed in this run. No reload
either way. Nothing of a key reaches a message.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.apply.results import StepSkipped
from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.acmefiles import ACCOUNT_KEY
from reconciler.lb.haproxy.certs import PemError, new_key_pem, pem_facts
from reconciler.lb.port import LBError, LoadBalancerPort
from reconciler.model import DesiredState
from reconciler.plan.actions import ObtainCertificate


class AcmeSteps:
    """The ACME steps of one run (one instance per run: it remembers failed issues)."""

    def __init__(self, desired: DesiredState, lbs: Mapping[str, LoadBalancerPort]) -> None:
        self.desired = desired
        self.lbs = lbs
        self._failed: set[tuple[str, str]] = set()  # (LB host, frontend): issue failed

    def _peers(self, lb_host: str) -> list[str]:
        """The LB hosts of the load balancer of ``lb_host`` (sorted)."""
        lb = next(x for x in self.desired.loadbalancers if lb_host in x.hosts)
        return sorted(lb.hosts)

    def obtain(self, a: ObtainCertificate) -> str:
        """Issue or copy (see the module). A copy from a host whose issue failed in this
        run is skipped (StepSkipped): its file is the certificate that was not good, and
        this host keeps serving what it serves."""
        here = self.lbs[a.host].acme()
        if a.source:
            text, how = self._copy(a), f"copied from {a.source}"
        else:
            try:
                text, how = self._issue(a), f"issued by {a.directory}"
            except ReconcilerError:
                self._failed.add((a.host, a.frontend))
                raise
        try:
            facts = pem_facts(text)
        except PemError as e:
            raise LBError(f"the certificate for {a.frontend} ({how}): {e}") from None
        here.write(f"{a.frontend}.pem", text)
        serial = self.lbs[a.host].replace_certificate(here.cert_path(a.frontend))
        return f"{how}, serial {serial} (valid for {', '.join(facts.names)}), no reload"

    def _issue(self, a: ObtainCertificate) -> str:
        """A new chain and key from the directory (PEM)."""
        from reconciler.apply import acme  # slow to import (requests): only to issue

        issued = acme.obtain(
            a.directory,
            a.domains,
            a.email,
            self._account_key(a.host),
            publish=lambda token, value: self._each(a.host, "set", token, value),
            withdraw=lambda token: self._each(a.host, "clear", token, ""),
        )
        return issued.chain_pem.rstrip("\n") + "\n" + issued.key_pem

    def _copy(self, a: ObtainCertificate) -> str:
        """The chain and key of LB host ``a.source`` (PEM); its account key is written
        to ``a.host`` too."""
        if (a.source, a.frontend) in self._failed:
            raise StepSkipped(
                f"LB host {a.source} got no new certificate in this pass: nothing to copy"
            )
        source = self.lbs[a.source].acme()
        text = source.read(f"{a.frontend}.pem")
        if text is None:
            raise LBError(f"LB host {a.source} has no certificate for {a.frontend} to copy")
        account, here = source.read(ACCOUNT_KEY), self.lbs[a.host].acme()
        if account and here.read(ACCOUNT_KEY) != account:
            here.write(ACCOUNT_KEY, account)
        return text

    def _account_key(self, lb_host: str) -> str:
        """The ACME account key of the load balancer's LB hosts (made once, kept on each)."""
        peers = self._peers(lb_host)
        for host in peers:
            key = self.lbs[host].acme().read(ACCOUNT_KEY)
            if key:
                break
        else:
            key = new_key_pem()
        for host in peers:
            if self.lbs[host].acme().read(ACCOUNT_KEY) != key:
                self.lbs[host].acme().write(ACCOUNT_KEY, key)
        return key

    def _each(self, lb_host: str, what: str, token: str, value: str) -> None:
        """Put a challenge answer on (``set``), or take it off (``clear``), every LB host
        of the load balancer of ``lb_host``."""
        for host in self._peers(lb_host):
            files = self.lbs[host].acme()
            if what == "set":
                files.set_challenge(token, value)
            else:
                files.clear_challenge(token)
