"""An ACME validation failure names the domain and the CA's reason, never the key
authorization the CA quotes (pebble and Let's Encrypt do: '... did not match this
challenge "<key authorization>" != "<what was served>"'). A fake ACME client stands in
for the CA; the real one is tested against pebble (tests/integration/test_acme*.py)."""

from __future__ import annotations

from typing import Any

import pytest
from acme import challenges, errors, messages
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWKEC

from reconciler.apply import acme
from reconciler.lb.haproxy.certs import new_key_pem

DOMAIN = "shop.acme.test"


def _authz(error: messages.Error | None) -> messages.AuthorizationResource:
    status = messages.STATUS_INVALID if error else messages.STATUS_PENDING
    chall = messages.ChallengeBody(chall=challenges.HTTP01(token=b"t" * 32),
                                   uri="https://ca.test/chall/1", status=status, error=error)
    body = messages.Authorization(
        identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=DOMAIN),
        challenges=[chall], status=status)
    return messages.AuthorizationResource(body=body, uri="https://ca.test/authz/1")


class _Net:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


class _CA:
    """Fails validation quoting the key authorization it expected, as pebble does."""

    net = _Net()

    def __init__(self) -> None:
        self.published: list[str] = []

    def new_order(self, csr: bytes) -> Any:
        return type("Order", (), {"authorizations": [_authz(None)]})()

    def answer_challenge(self, chall: Any, response: Any) -> None:
        pass

    def poll_and_finalize(self, order: Any, deadline: Any) -> Any:
        (expected,) = self.published
        detail = (f'The key authorization file from the server did not match this challenge '
                  f'"{expected}" != "revision=v1 greeting=hello"')
        error = messages.Error(typ="urn:ietf:params:acme:error:unauthorized", detail=detail)
        raise errors.ValidationError([_authz(error)])


def test_validation_failure_names_the_domain_and_reason_but_not_the_key_authorization(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ca = _CA()
    monkeypatch.setattr(acme, "_client", lambda *args: ca)
    withdrawn: list[str] = []
    with pytest.raises(acme.AcmeError) as e:
        acme.obtain("https://ca.test/dir", (DOMAIN,), None, new_key_pem(),
                    publish=lambda token, value: ca.published.append(value),
                    withdraw=withdrawn.append)
    message = str(e.value)
    (expected,) = ca.published
    assert expected not in message and expected.split(".")[1] not in message, message
    assert message.startswith(f"ACME https://ca.test/dir: validation failed: {DOMAIN}: "), message
    assert '"<key authorization>" != "revision=v1 greeting=hello"' in message, message
    assert withdrawn == [expected.split(".")[0]]  # the challenge was taken down again
