"""Which reconciler instance this is: a name kept in the state dir, or given explicitly.

Containers carry the instance's name (label and name prefix), so reconcilers with
different state dirs can share a Docker engine, even for environments of the same name,
without ever observing, adopting or pruning each other's containers.

The default name is derived from the state dir's real path (``r`` and 8 hex digits), so
a plan made before the first apply already names containers as the apply will; the first
apply writes it to ``<state dir>/instance`` and from then on the file is the truth (the
dir may move). A state dir that already had history before instances existed adopts the
managed containers that carry no instance label (and rolls them to named ones once).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import replace
from pathlib import Path

from reconciler import statedir
from reconciler.errors import ReconcilerError
from reconciler.model import Instance

FILE = "instance"
KEY_FILE = "label-key"  # the host-local HMAC key of secret-looking env values in labels
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")


class InstanceError(ReconcilerError):
    pass


def check_name(name: str) -> str:
    """``name`` when it can be a Docker name prefix and part of an HAProxy server name
    (lower-case letters, digits and '-', at most 24, no dot); raises InstanceError."""
    if not _NAME.fullmatch(name):
        raise InstanceError(
            f"instance name {name!r} is not valid: use 1-24 lower-case letters, digits "
            "and '-', starting with a letter or digit"
        )
    return name


def resolve(state_dir: Path, explicit: str | None, create: bool) -> Instance:
    """The instance acting with ``state_dir``. ``explicit`` (``--instance``) must agree
    with the name stored there, if any. ``create``: store the name when the state dir has
    none yet (apply, watch); plan and status never write. Raises InstanceError.

    The instance carries its label key (``label_key``): read from the state dir, made
    there (random, 0600) when ``create``; a command that may not write and finds none
    uses a random key of its own (its plan then names new containers of services with
    secret-looking env values differently from the first apply)."""
    found = _resolve_name(state_dir, explicit, create)
    return replace(found, label_key=label_key(state_dir, create))


def label_key(state_dir: Path, create: bool) -> str:
    """The instance's label key, 64 hex digits (see ``Instance.label_key``)."""
    path = state_dir / KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    except OSError as exc:
        raise InstanceError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if key:
        return key
    key = secrets.token_hex(32)
    if create:
        statedir.ensure(state_dir)
        tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        try:
            os.link(tmp, path)  # never over a key another process made meanwhile
        except FileExistsError:
            key = path.read_text().strip()
        finally:
            os.unlink(tmp)
    return key


def _resolve_name(state_dir: Path, explicit: str | None, create: bool) -> Instance:
    path = state_dir / FILE
    stored = _read(path)
    if explicit is not None:
        check_name(explicit)
        if stored is not None and stored.name != explicit:
            raise InstanceError(
                f"{path} says this state dir belongs to instance {stored.name!r}, not "
                f"{explicit!r}: its containers would be left behind; use "
                f"--instance {stored.name} (or another --state-dir)"
            )
    if stored is not None:
        return stored
    name = explicit or "r" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    # A state dir with history predates instances: its containers have no instance label.
    found = Instance(name=name, adopt_unlabelled=(state_dir / "history.sqlite").exists())
    if create:
        _write(path, found)
    return found


def _read(path: Path) -> Instance | None:
    try:
        data = json.loads(path.read_text())
        return Instance(name=check_name(str(data["name"])), adopt_unlabelled=bool(data["adopt"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstanceError(f"{path} is not readable as an instance file: {exc}") from None


def _write(path: Path, instance: Instance) -> None:
    statedir.ensure(path.parent)
    tmp = path.with_name(f".{FILE}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"name": instance.name, "adopt": instance.adopt_unlabelled}) + "\n")
    os.replace(tmp, path)
