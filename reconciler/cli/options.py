"""Options several commands share, and the ``Source`` they read.

Decorators that turn several options into one value (``source_options`` -> ``src``,
``haproxy_options`` -> ``external``, ``retention_options`` -> ``retention``) import what
they build only when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from reconciler.desired.policy import Policy

F = TypeVar("F", bound=Callable[..., Any])


def default_state_dir() -> str:
    if os.environ.get("RECONCILE_STATE_DIR"):
        return os.environ["RECONCILE_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/reconciler"
    return str(Path.home() / ".local" / "state" / "reconciler")


STATE_DIR_DEFAULT_TEXT = "/var/lib/reconciler as root, else ~/.local/state/reconciler"


@dataclass(frozen=True)
class Source:
    """Which repository, commit and environment a command reads, and the operator's
    policy file that limits what it may ask of the hosts (None: the default path)."""

    repo: str
    branch: str | None
    rev: str | None
    subdir: str
    environment: str | None
    policy: Path | None = None

    def load_policy(self, state_dir: Path | None) -> Policy:
        """The operator's policy (``reconciler.desired.policy.load``), denying ``state_dir``."""
        from reconciler.desired import policy

        return policy.load(self.policy, state_dir)


def _stack(f: Callable[..., Any], options: list[Callable[[Any], Any]]) -> Callable[..., Any]:
    """``f`` with ``options`` applied, the first of them shown first in ``--help``."""
    out: Callable[..., Any] = f
    for option in reversed(options):
        out = option(out)
    return out


def source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the source options; the command receives them as one ``src: Source``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        repo: str,
        branch: str | None,
        rev: str | None,
        subdir: str,
        environment: str | None,
        policy: Path | None,
        **kwargs: Any,
    ) -> Any:
        return f(*args, src=Source(repo, branch, rev, subdir, environment, policy), **kwargs)

    return _stack(
        wrapper,
        [
            click.option(
                "--repo",
                "-r",
                envvar="RECONCILE_REPO",
                default=".",
                show_default=True,
                help="Manifests repository: a local path (a folder inside a git work "
                "tree is the manifests root) or a git URL.",
            ),
            click.option(
                "--branch",
                "-b",
                envvar="RECONCILE_BRANCH",
                help="Branch to read (default: HEAD of a local repository; the remote's "
                "default branch for a URL).",
            ),
            click.option(
                "--rev", help="Commit, tag or other revision to read instead of the branch head."
            ),
            click.option(
                "--path", "subdir", default="", help="Manifests folder inside the repository."
            ),
            click.option(
                "--env",
                "-e",
                "environment",
                envvar="RECONCILE_ENV",
                help="Environment to act on (required when the repository has several).",
            ),
            click.option(
                "--policy",
                envvar="RECONCILE_POLICY",
                type=click.Path(dir_okay=False, path_type=Path),
                help="The operator's policy file: allowed bind mounts, secret sources, SSH "
                "trust; the manifests cannot override it (docs/security.md). Default: "
                "/etc/reconciler/policy.yaml, or the built-in defaults when it is absent.",
            ),
        ],
    )


def state_dir_option(text: str) -> Callable[[F], F]:
    """``--state-dir`` (a resolved ``Path``), described by ``text``."""
    return click.option(
        "--state-dir",
        envvar="RECONCILE_STATE_DIR",
        default=default_state_dir,
        show_default=STATE_DIR_DEFAULT_TEXT,
        type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
        help=text,
    )


def state_options(f: F) -> F:
    """``--state-dir`` and ``--output`` (text or json)."""
    f = state_dir_option("Where the reconciler keeps its HAProxy files, locks and history.")(f)
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(f)


def instance_option(f: F) -> F:
    return click.option(
        "--instance",
        envvar="RECONCILE_INSTANCE",
        metavar="NAME",
        help="This reconciler's instance name: its containers carry it, so several "
        "reconcilers (other state dirs) can share a Docker engine without touching each "
        "other's containers. Default: the name kept in the state dir (made from its path "
        "on the first apply).",
    )(f)


def haproxy_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options naming an existing HAProxy; the command receives ``external``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        haproxy_config: Path | None,
        haproxy_socket: Path | None,
        haproxy_master_socket: Path | None,
        **kwargs: Any,
    ) -> Any:
        from reconciler.lb.haproxy.paths import HAProxyPaths

        given = [haproxy_config, haproxy_socket, haproxy_master_socket]
        if any(given) and not all(given):
            raise click.UsageError(
                "an existing HAProxy needs --haproxy-config, "
                "--haproxy-socket and --haproxy-master-socket together"
            )
        external = (
            HAProxyPaths.external(haproxy_config, haproxy_socket, haproxy_master_socket)
            if haproxy_config and haproxy_socket and haproxy_master_socket
            else None
        )
        return f(*args, external=external, **kwargs)

    path = click.Path(dir_okay=False, path_type=Path)
    return _stack(
        wrapper,
        [
            click.option(
                "--haproxy-config",
                type=path,
                help="Manage an existing HAProxy (master-worker mode) with this config "
                "file instead of the embedded one under --state-dir.",
            ),
            click.option("--haproxy-socket", type=path, help="Its stats socket (level admin)."),
            click.option("--haproxy-master-socket", type=path, help="Its master CLI socket."),
        ],
    )


def retention_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """History retention options; the command receives ``retention: Retention``."""

    @functools.wraps(f)
    def wrapper(*args: Any, history_days: float, history_runs: int, **kwargs: Any) -> Any:
        from reconciler.store import Retention

        return f(*args, retention=Retention(days=history_days, runs=history_runs), **kwargs)

    return _stack(
        wrapper,
        [
            click.option(
                "--history-days",
                type=click.FloatRange(min=0),
                default=30.0,
                show_default=True,
                envvar="RECONCILE_HISTORY_DAYS",
                help="Delete runs (and their steps) older than this many days from the "
                "history database at the end of each pass (0: keep them). The newest run "
                "of an environment and the failures that hold services are always kept.",
            ),
            click.option(
                "--history-runs",
                type=click.IntRange(min=0),
                default=5000,
                show_default=True,
                envvar="RECONCILE_HISTORY_RUNS",
                help="Keep at most this many runs per environment in the history database "
                "(0: no limit). Idle looks at one commit share one run.",
            ),
        ],
    )


def rollback_option(f: F) -> F:
    return click.option(
        "--allow-rollback",
        is_flag=True,
        help="Apply the commit even though it does not descend from the last commit "
        "applied to the environment (the branch was reset, or --rev names an older "
        "commit). Recorded in the history as the operator's decision.",
    )(f)


def apply_options(f: F) -> F:
    f = click.option(
        "--lock-timeout",
        type=float,
        default=60.0,
        show_default=True,
        help="Seconds to wait for another reconciler working on the same environment.",
    )(f)
    return click.option(
        "--health-timeout",
        type=float,
        default=30.0,
        show_default=True,
        help="Minimum seconds a new container may take to become healthy "
        "(more when its health check's start period and retries "
        "need it).",
    )(f)
