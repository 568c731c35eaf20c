"""Obtain a certificate from an ACME directory with HTTP-01: the one module that speaks
ACME (through the ``acme`` package, certbot's).

``obtain`` registers (or finds) the account of ``account_key_pem``, orders a certificate
for the domains, has each HTTP-01 challenge answered by the caller's ``publish`` (the LB
hosts' HAProxy answers it), asks the CA to validate, finalizes with a new key and returns
the chain and that key. ``withdraw`` is called for every published token, also on
failure. Every failure is an ``AcmeError`` naming the directory and what failed; no key
and no key authorization is ever in a message.

The directory's TLS certificate is checked against the system's CAs, or the bundle in
``REQUESTS_CA_BUNDLE`` (a test CA such as pebble's).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import Error as JoseError
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from reconciler.errors import ReconcilerError
from reconciler.lb.haproxy.certs import new_key_pem


class AcmeError(ReconcilerError):
    """The ACME directory could not be reached, refused, or did not issue in time."""


@dataclass(frozen=True)
class Issued:
    chain_pem: str  # the leaf first, then the intermediates
    key_pem: str


def obtain(
    directory: str,
    domains: tuple[str, ...],
    email: str | None,
    account_key_pem: str,
    publish: Callable[[str, str], None],
    withdraw: Callable[[str], None],
    timeout: float = 90.0,
) -> Issued:
    """A certificate for ``domains`` (see the module's contract)."""
    answers: list[str] = []  # key authorizations: a CA's error may quote them
    try:
        acme = _client(directory, email, account_key_pem)
        key_pem = new_key_pem()
        order = acme.new_order(crypto_util.make_csr(key_pem.encode(), list(domains)))
        published: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # validated earlier for this account
                chall = next(
                    c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)
                )
                response, validation = chall.response_and_validation(acme.net.key)
                token = chall.chall.encode("token")
                answers.append(validation)
                publish(token, validation)
                published.append(token)
                acme.answer_challenge(chall, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
            order = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for token in published:
                withdraw(token)
    except ReconcilerError:  # the LB hosts' own errors (publishing a challenge) as they are
        raise
    except StopIteration:
        raise AcmeError(f"ACME {directory}: the CA offers no HTTP-01 challenge") from None
    except (errors.Error, messages.Error, OSError, JoseError) as e:
        raise AcmeError(_hide(f"ACME {directory}: {_describe(e)}", answers)) from None
    except Exception as e:  # requests' exceptions and others: a message, no traceback
        raise AcmeError(_hide(f"ACME {directory}: {type(e).__name__}: {e}", answers)) from None
    return Issued(chain_pem=order.fullchain_pem, key_pem=key_pem)


def _client(directory: str, email: str | None, account_key_pem: str) -> client.ClientV2:
    """A client logged in to the account of ``account_key_pem`` (registered if new)."""
    key = serialization.load_pem_private_key(account_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError(f"ACME {directory}: the account key is not an EC key")
    net = client.ClientNetwork(JWKEC(key=key), alg=ES256, user_agent="reconciler")
    acme = client.ClientV2(client.ClientV2.get_directory(directory, net), net=net)
    registration = messages.NewRegistration.from_data(
        email=email, terms_of_service_agreed=True
    )
    try:
        acme.new_account(registration)
    except errors.ConflictError as e:  # the key has an account already: use it
        net.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())
    return acme


def _hide(message: str, answers: list[str]) -> str:
    """``message`` without the key authorizations of ``answers`` (a CA quotes the one it
    expected when the answer it fetched differs: "... did not match this challenge")."""
    for answer in answers:
        message = message.replace(answer, "<key authorization>")
    return message


def _describe(e: Exception) -> str:
    if isinstance(e, errors.ValidationError):
        problems = [
            f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
            for a in e.failed_authzrs
            for c in a.body.challenges
            if c.error is not None
        ]
        return "validation failed: " + "; ".join(problems)
    if isinstance(e, errors.TimeoutError):
        return "the order was not ready in time"
    return f"{type(e).__name__}: {e}"
