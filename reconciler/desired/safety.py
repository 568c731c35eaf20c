"""Predicates for values that reach an HAProxy config, a Docker call or a label.

Each returns ``None`` when the value is safe in that place, else a short reason that
names what is wrong. They are strict on purpose: anything that could end a line, start a
comment, open a quote or split an argument in the target syntax is refused, so the
renderers and the executor never need to escape.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

_HAPROXY_BAD = {
    " ": "a space",
    "\t": "a tab",
    '"': "a double quote",
    "'": "a quote",
    "#": "'#' (starts a comment in HAProxy)",
    "\\": "a backslash",
    "$": "'$'",
    "{": "'{'",
    "}": "'}'",
}
# Used with fullmatch: "$" in a Python pattern also matches before a final newline.
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,127}$")  # Docker: 2+ characters
_LOG_OPTION = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
RESERVED_LABEL_PREFIX = "io.reconciler."


def control_chars(value: str) -> str | None:
    """Reason if ``value`` has a control or invisible format character (newline, NUL, ...)."""
    for ch in value:
        if ch in "\n\r":
            return "contains a line break"
        if ch == "\x00":
            return "contains a NUL character"
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"contains the control character U+{ord(ch):04X}"
    return None


def haproxy_token(value: str) -> str | None:
    """Reason if ``value`` cannot stand as one bare word in an HAProxy config line."""
    reason = control_chars(value)
    if reason:
        return reason
    for ch, name in _HAPROXY_BAD.items():
        if ch in value:
            return f"contains {name}, not allowed in an HAProxy config"
    if not value.isascii():
        return "contains non-ASCII characters, not allowed in an HAProxy config"
    return None


def path_prefix(value: str) -> str | None:
    """Reason if ``value`` is not a safe URL path prefix for an HAProxy ACL."""
    if not value.startswith("/"):
        return "must start with '/'"
    return haproxy_token(value)


def absolute_path(value: str, *, haproxy: bool = False) -> str | None:
    """Reason if ``value`` is not a clean absolute file path (for a host or in HAProxy)."""
    reason = haproxy_token(value) if haproxy else control_chars(value)
    if reason:
        return reason
    if not value.startswith("/"):
        return "must be an absolute path"
    if ":" in value or "," in value:
        return "must not contain ':' or ','"
    if "/../" in value + "/" or value.endswith("/.."):
        return "must not contain '..'"
    return None


def local_file(value: str) -> str | None:
    """Reason if ``value`` is not a clean path of a file on the reconciler's machine:
    absolute or ``~/...``, no control characters, no ``..`` component (a path that
    climbs out of where it seems to point is a mistake or a trick)."""
    reason = control_chars(value)
    if reason:
        return reason
    if not value.startswith(("/", "~/")):
        return "must be an absolute path or start with '~/'"
    if ".." in value.split("/"):
        return "must not contain '..'"
    return None


def volume_name(value: str) -> str | None:
    if _VOLUME_NAME.fullmatch(value):
        return None
    return "is not a valid Docker volume name (2-128 letters, digits, '_', '.', '-')"


def label_key(value: str) -> str | None:
    if value.startswith(RESERVED_LABEL_PREFIX):
        return f"uses the reserved prefix {RESERVED_LABEL_PREFIX!r}"
    if not _LABEL_KEY.fullmatch(value):
        return "is not a valid label key (letters, digits, '.', '_', '-', '/')"
    return None


def log_option_key(value: str) -> str | None:
    return None if _LOG_OPTION.fullmatch(value) else "is not a valid log option name"


def ipv4_if_numeric(value: str) -> str | None:
    """Reason if ``value`` looks like dotted numbers but is not a valid IPv4 address."""
    if value.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return "is not a valid IPv4 address"
    return None
