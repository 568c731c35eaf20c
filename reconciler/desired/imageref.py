"""Docker image references, checked as the Docker engine parses them.

The grammar is distribution/reference's (``regexp.go``: name components, optional
registry host with port, tag, digest) and the checks are those of its
``ParseNormalizedNamed``: a bare 64-hex name is refused, the repository is lower case,
and the name *after normalization* (``web`` is ``docker.io/library/web``) is at most 255
characters. The digest is checked as go-digest does: an algorithm the engine knows, with
exactly its number of lower-case hex digits. A reference that passes here is one the
engine accepts, so a typo fails ``validate``, not a pull halfway through a rollout.
"""

from __future__ import annotations

import re

# distribution/reference regexp.go, written out. Go's \w is ASCII, Python's is not:
# the classes are spelled out.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = f"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_AND_PORT = f"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_REMOTE_NAME = f"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = f"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(f"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")
# The same grammar without groups, as the JSON Schema's pattern (schemas/common: image),
# so that editors agree with the reconciler (a unit test keeps the two equal).
SCHEMA_PATTERN = f"^{_NAME}(?::{_TAG})?(?:@{_DIGEST})?$"
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")

NAME_TOTAL_LENGTH_MAX = 255
# go-digest's algorithms that the engine registers, with their hex lengths.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


def normalized_name(name: str) -> str:
    """``name`` as Docker names it in full (distribution's ``splitDockerDomain``):
    ``web`` -> ``docker.io/library/web``, ``me/web`` -> ``docker.io/me/web``,
    ``registry.example:5000/web`` unchanged."""
    first, slash, rest = name.partition("/")
    if not slash:
        domain, remote = "docker.io", name
    elif first == "index.docker.io":
        domain, remote = "docker.io", rest
    elif first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        domain, remote = first, rest  # a registry host: has '.', ':', or upper case
    else:
        domain, remote = "docker.io", name
    if domain == "docker.io" and "/" not in remote:
        remote = f"library/{remote}"
    return f"{domain}/{remote}"


def problem(value: str) -> str | None:
    """Why the engine would refuse ``value`` as an image reference, else None.

    The reason names what is wrong, never repeats the value (callers quote it)."""
    if _IDENTIFIER.fullmatch(value):
        return "is a 64-hex id, not a repository name"
    m = REFERENCE.fullmatch(value)
    if m is None:
        return (
            "is not a valid image reference: [registry[:port]/]repository[:tag][@digest], "
            "repository in lower case, tag of at most 128 letters, digits, '_', '.', '-'"
        )
    full = normalized_name(m["name"])
    if len(full) > NAME_TOTAL_LENGTH_MAX:
        return (
            f"has a name of {len(full)} characters as Docker spells it in full "
            f"(with its registry): at most {NAME_TOTAL_LENGTH_MAX}"
        )
    if m["digest"]:
        algorithm, _, hexdigits = m["digest"].partition(":")
        want = DIGEST_HEX_LENGTHS.get(algorithm)
        if want is None:
            known = ", ".join(DIGEST_HEX_LENGTHS)
            return f"has a digest of unknown algorithm {algorithm!r} (known: {known})"
        if len(hexdigits) != want or not re.fullmatch(r"[a-f0-9]+", hexdigits):
            return f"has a {algorithm} digest that is not {want} lower-case hex digits"
    return None
