"""The executor's ACME step: give an ACME frontend its certificate on one LB host.

Issue (``ObtainCertificate.source`` ""): the account key is read from the first LB host
of the load balancer that has one (a new one is made and written to every LB host
otherwise); every LB host of the load balancer answers the HTTP-01 challenges (any of
them may receive the CA's request); the chain and key are written to this host's state
dir and served through the runtime API. Copy (``source`` set): the file of LB host
``source`` is written here and served. No reload either way. Nothing of a key reaches a
message.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.apply import acme
from reconciler.lb.haproxy.acmefiles import ACCOUNT_KEY
from reconciler.lb.haproxy.certs import PemError, new_key_pem, pem_facts
from reconciler.lb.port import LBError, LoadBalancerPort
from reconciler.model import DesiredState
from reconciler.plan.actions import ObtainCertificate


class AcmeSteps:
    def __init__(self, desired: DesiredState, lbs: Mapping[str, LoadBalancerPort]) -> None:
        self.desired = desired
        self.lbs = lbs

    def _peers(self, lb_host: str) -> list[str]:
        """The LB hosts of the load balancer of ``lb_host`` (sorted)."""
        lb = next(x for x in self.desired.loadbalancers if lb_host in x.hosts)
        return sorted(lb.hosts)

    def obtain(self, a: ObtainCertificate) -> str:
        here = self.lbs[a.host].acme()
        name = f"{a.frontend}.pem"
        if a.source:
            text = self.lbs[a.source].acme().read(name)
            if text is None:
                raise LBError(f"LB host {a.source} has no certificate for {a.frontend} to copy")
            how = f"copied from {a.source}"
        else:
            issued = acme.obtain(
                a.directory,
                a.domains,
                a.email,
                self._account_key(a.host),
                publish=lambda token, value: self._each(a.host, "set", token, value),
                withdraw=lambda token: self._each(a.host, "clear", token, ""),
            )
            text = issued.chain_pem.rstrip("\n") + "\n" + issued.key_pem
            how = f"issued by {a.directory}"
        try:
            facts = pem_facts(text)
        except PemError as e:
            raise LBError(f"the certificate for {a.frontend} ({how}): {e}") from None
        here.write(name, text)
        serial = self.lbs[a.host].replace_certificate(here.cert_path(a.frontend))
        return f"{how}, serial {serial} (valid for {', '.join(facts.names)}), no reload"

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
