"""The operator's policy: what the manifests may ask of the hosts. Git cannot change it.

Whoever can push to the manifests repository decides what runs as root on every app
host. The policy file (``/etc/reconciler/policy.yaml`` by default, ``--policy`` /
``RECONCILE_POLICY`` for another) is where the operator limits that: which host paths
may be bind-mounted, where ``file:`` secrets must live, which variables of the
reconciler's environment ``env:`` secrets may name, and how each SSH host is trusted
(known_hosts, key, host key checking). It is read once per command and handed to
validation (``reconciler.desired.trust``) and to the executor (reading secrets); the planner
never sees it.

Every setting has a default (``Policy()``), chosen so that ``sample-repo`` validates and
nothing dangerous is allowed; see docs/security.md for the file format. A policy file
that is missing at the default path means the defaults; a file given explicitly must
exist. A file that others may write is refused: it would hand the boundary to them.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.desired import safety
from reconciler.desired.loader import Document, load_yaml
from reconciler.errors import ManifestError, Problem, ReconcilerError

DEFAULT_PATH = Path("/etc/reconciler/policy.yaml")
DEFAULT_BIND_ALLOWED = ("/srv",)
# Never bind-mountable, whatever the policy allows: a container given one of these (or
# a folder holding one) controls the host or reads every secret. The state dir(s) and
# the SSH hosts' Docker sockets are added per command (``Policy.denied_binds``).
ALWAYS_DENIED_BINDS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/docker",
    "/run/docker",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/etc/reconciler",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
)
DEFAULT_SECRETS_DIRECTORY = "/etc/reconciler/secrets/{environment}"
DEFAULT_ENV_PREFIX = "{ENVIRONMENT}_"
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"

HostKeyChecking = Literal["strict", "accept-new"]


class PolicyError(ReconcilerError):
    """The policy file cannot be read or is not a valid policy."""


@dataclass(frozen=True)
class SecretRules:
    """Where one environment's secrets may come from."""

    directory: str  # ``file:`` secrets resolve inside it (no symlink below it)
    env_prefix: str  # ``env:`` secrets name a variable starting with it ("" = any)

    def file_problem(self, path: str) -> str | None:
        """Why ``path`` may not be a ``file:`` secret here; None when it may."""
        inside = self.relative(path)
        if inside is None:
            return f"is outside the secrets directory {self.directory} of the operator's policy"
        return None

    def relative(self, path: str) -> str | None:
        """``path`` relative to ``directory`` (normalised, no ``.``/``..``), or None
        when it does not lie strictly inside it."""
        norm = posixpath.normpath(path)
        if norm != path.rstrip("/") or path.startswith("//"):
            return None  # "/a/./b", "/a//b": not the clean path it seems to be
        base = self.directory.rstrip("/") or "/"
        rel = posixpath.relpath(norm, base) if norm.startswith(base + "/") else None
        if rel is None or rel.startswith("..") or rel == ".":
            return None
        return rel

    def env_problem(self, variable: str) -> str | None:
        """Why ``variable`` may not be an ``env:`` secret here; None when it may."""
        if self.env_prefix and not variable.startswith(self.env_prefix):
            return (
                f"does not start with {self.env_prefix!r}, the prefix the operator's policy "
                "allows for this environment"
            )
        return None


@dataclass(frozen=True)
class SshTrust:
    """How the operator trusts one SSH host (or every host without its own entry)."""

    known_hosts: str = DEFAULT_KNOWN_HOSTS
    key: str | None = None  # None: the SSH agent and ~/.ssh/id_* of the reconciler's user
    host_key_checking: HostKeyChecking = "strict"
    address: str | None = None  # pinned: the inventory must give this address


@dataclass(frozen=True)
class EnvironmentRules:
    secrets_directory: str | None = None
    env_prefix: str | None = None


@dataclass(frozen=True)
class Policy:
    """The operator's limits; ``Policy()`` is the documented default."""

    source: str = "built-in defaults"
    bind_allowed: tuple[str, ...] = DEFAULT_BIND_ALLOWED
    bind_denied: tuple[str, ...] = ()  # the operator's own, added to ALWAYS_DENIED_BINDS
    secrets_directory: str = DEFAULT_SECRETS_DIRECTORY
    env_prefix: str = DEFAULT_ENV_PREFIX
    environments: tuple[tuple[str, EnvironmentRules], ...] = ()
    ssh: SshTrust = field(default_factory=SshTrust)
    ssh_hosts: tuple[tuple[str, SshTrust], ...] = ()
    state_dirs: tuple[str, ...] = ()  # the reconciler's own, never bind-mountable

    def with_state_dir(self, state_dir: Path | str) -> Policy:
        """This policy, also denying ``state_dir`` as a bind source."""
        from dataclasses import replace

        return replace(self, state_dirs=(*self.state_dirs, os.path.abspath(state_dir)))

    def secret_rules(self, environment: str) -> SecretRules:
        """The rules of ``environment``: its own entry, else the defaults, with
        ``{environment}`` (the name) and ``{ENVIRONMENT}`` (upper case, ``-`` -> ``_``)
        filled in."""
        own = dict(self.environments).get(environment, EnvironmentRules())
        directory = own.secrets_directory or self.secrets_directory
        prefix = own.env_prefix if own.env_prefix is not None else self.env_prefix
        upper = environment.upper().replace("-", "_")
        return SecretRules(
            directory=directory.replace("{environment}", environment).rstrip("/") or "/",
            env_prefix=prefix.replace("{ENVIRONMENT}", upper),
        )

    def ssh_for(self, host: str) -> SshTrust:
        return dict(self.ssh_hosts).get(host, self.ssh)

    def denied_binds(self, extra: Iterable[str] = ()) -> tuple[str, ...]:
        return (*ALWAYS_DENIED_BINDS, *self.bind_denied, *self.state_dirs, *extra)

    def bind_problem(self, source: str, extra_denied: Iterable[str] = ()) -> str | None:
        """Why ``source`` may not be bind-mounted; None when it may. Denied paths win:
        a source that is, lies under, or holds a denied path is refused; ``/`` always."""
        src = posixpath.normpath(source)
        if src == "/":
            return "is the host's root file system; the operator's policy never allows it"
        for denied in self.denied_binds(extra_denied):
            d = posixpath.normpath(denied)
            if _under(src, d) or _under(d, src):
                return (
                    f"is or holds {d}, which the operator's policy never allows to be "
                    "bind-mounted"
                )
        if not any(_under(src, posixpath.normpath(a)) for a in self.bind_allowed):
            allowed = ", ".join(self.bind_allowed) or "none"
            return (
                f"is not under a bind-mount source the operator's policy allows ({allowed})"
            )
        return None


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


# --------------------------------------------------------------------------- reading


def load(path: Path | None, state_dir: Path | None = None) -> Policy:
    """The policy at ``path`` (None: ``DEFAULT_PATH``, or the defaults when it does not
    exist), denying ``state_dir`` as a bind source. Raises PolicyError naming the file
    and line of every problem."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if explicit:
            raise PolicyError(f"policy file {str(path)!r} does not exist") from None
        policy = Policy()
        return policy.with_state_dir(state_dir) if state_dir else policy
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {str(path)!r}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o022 or st.st_uid not in (0, os.geteuid()):
        raise PolicyError(
            f"policy file {str(path)!r} may be written by users other than root and "
            "the reconciler's own user (owner, mode); refusing it: make it owned by root "
            "(or this user) and not group- or world-writable"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy file {str(path)!r}: {exc}") from None
    policy = parse(str(path), text)
    return policy.with_state_dir(state_dir) if state_dir else policy


_TOP = {"bind_mounts", "secrets", "environments", "ssh"}
_SSH_KEYS = {"known_hosts", "key", "host_key_checking", "address"}


def parse(name: str, text: str) -> Policy:
    """A Policy from the YAML ``text`` of file ``name``; raises ManifestError-style
    problems (file:line: field: message) as a PolicyError."""
    docs, problems = load_yaml(name, text)
    if problems:
        raise _failed(problems)
    if not docs:
        return Policy(source=name)
    if len(docs) > 1:
        raise _failed([docs[1].problem((), "a policy file holds one YAML document")])
    doc = docs[0]
    if not isinstance(doc.data, dict):
        raise _failed([doc.problem((), "a policy file is a mapping")])
    p = _Parser(doc)
    policy = p.policy(name)
    if p.problems:
        raise _failed(p.problems)
    return policy


def _failed(problems: list[Problem]) -> PolicyError:
    text = ManifestError(problems)
    return PolicyError("invalid operator policy:\n" + str(text))


class _Parser:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def bad(self, path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, key=key))

    def mapping(self, path: tuple[str | int, ...], allowed: set[str] | None) -> dict[str, Any]:
        value = self.doc.get(path, {})
        if not isinstance(value, dict):
            self.bad(path, "must be a mapping")
            return {}
        for k in value:
            if allowed is not None and k not in allowed:
                self.bad((*path, k), f"unknown setting {k!r}; known: {', '.join(sorted(allowed))}",
                         key=True)
        return value

    def path(self, path: tuple[str | int, ...], value: Any, *, home: bool = False) -> str | None:
        if not isinstance(value, str):
            self.bad(path, f"{value!r} is not a path")
            return None
        why = safety.local_file(value) if home else safety.absolute_path(value)
        if why:
            self.bad(path, f"{value!r} {why}")
            return None
        return value

    def paths(self, path: tuple[str | int, ...]) -> tuple[str, ...] | None:
        value = self.doc.get(path)
        if value is None:
            return None
        if not isinstance(value, list):
            self.bad(path, "must be a list of absolute paths")
            return None
        out = [self.path((*path, i), v) for i, v in enumerate(value)]
        return tuple(p for p in out if p is not None)

    def prefix(self, path: tuple[str | int, ...], value: Any) -> str | None:
        if not isinstance(value, str) or safety.control_chars(value):
            self.bad(path, f"{value!r} is not a variable name prefix")
            return None
        return value

    def trust(self, path: tuple[str | int, ...], base: SshTrust, per_host: bool) -> SshTrust:
        data = self.doc.get(path, {})
        data = data if isinstance(data, dict) else {}  # the caller reported its shape
        known = self.path((*path, "known_hosts"), data["known_hosts"], home=True) if (
            "known_hosts" in data
        ) else base.known_hosts
        key = self.path((*path, "key"), data["key"], home=True) if data.get("key") else (
            None if "key" in data else base.key
        )
        checking = data.get("host_key_checking", "strict" if per_host else base.host_key_checking)
        if checking not in ("strict", "accept-new"):
            self.bad((*path, "host_key_checking"), f"{checking!r} is not 'strict' or 'accept-new'")
            checking = "strict"
        address = data.get("address")
        if address is not None and not isinstance(address, str):
            self.bad((*path, "address"), f"{address!r} is not an address")
            address = None
        if checking == "accept-new" and (not per_host or address is None):
            # Trust on first use of whatever answers at an address git chooses would let a
            # commit bring its own host: accept-new only for a host pinned to its address.
            self.bad(
                (*path, "host_key_checking"),
                "accept-new is allowed only per host, with that host's address pinned "
                "(ssh.hosts.<name>.address)",
            )
            checking = "strict"
        return SshTrust(
            known_hosts=known or base.known_hosts,
            key=key,
            host_key_checking=checking,
            address=address,
        )

    def policy(self, name: str) -> Policy:
        self.mapping((), _TOP)
        binds = self.mapping(("bind_mounts",), {"allowed", "denied"})
        secrets = self.mapping(("secrets",), {"directory", "env_prefix"})
        allowed = self.paths(("bind_mounts", "allowed")) if "allowed" in binds else None
        denied = self.paths(("bind_mounts", "denied")) if "denied" in binds else None
        directory = (
            self.path(("secrets", "directory"), secrets["directory"])
            if "directory" in secrets
            else None
        )
        prefix = (
            self.prefix(("secrets", "env_prefix"), secrets["env_prefix"])
            if "env_prefix" in secrets
            else None
        )
        envs = []
        for env, _ in self.mapping(("environments",), None).items():
            at = ("environments", env)
            data = self.mapping(at, {"secrets_directory", "env_prefix"})
            envs.append(
                (
                    str(env),
                    EnvironmentRules(
                        secrets_directory=self.path(
                            (*at, "secrets_directory"), data["secrets_directory"]
                        )
                        if "secrets_directory" in data
                        else None,
                        env_prefix=self.prefix((*at, "env_prefix"), data["env_prefix"])
                        if "env_prefix" in data
                        else None,
                    ),
                )
            )
        self.mapping(("ssh",), _SSH_KEYS - {"address"} | {"hosts"})
        default_trust = self.trust(("ssh",), SshTrust(), per_host=False)
        hosts = []
        for h in self.mapping(("ssh", "hosts"), None):
            self.mapping(("ssh", "hosts", h), _SSH_KEYS)
            hosts.append((str(h), self.trust(("ssh", "hosts", h), default_trust, per_host=True)))
        return Policy(
            source=name,
            bind_allowed=DEFAULT_BIND_ALLOWED if allowed is None else allowed,
            bind_denied=denied or (),
            secrets_directory=directory or DEFAULT_SECRETS_DIRECTORY,
            env_prefix=DEFAULT_ENV_PREFIX if prefix is None else prefix,
            environments=tuple(envs),
            ssh=default_trust,
            ssh_hosts=tuple(hosts),
        )
