"""Command line: ``reconcile [--dry-run]``, ``plan``, ``validate``, ``diff``.

Exit codes: 0 success and nothing to change; 2 changes pending (plan / --dry-run); 1 any
error (bad manifests, unreachable host, unknown commit). Heavy libraries (docker, git,
jsonschema, deepdiff) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from reconciler import __version__
from reconciler.errors import ManifestError, ReconcilerError

if TYPE_CHECKING:
    from reconciler.manifests import Manifests
    from reconciler.source import RepoSpec, Snapshot

F = TypeVar("F", bound=Callable[..., Any])
EXIT_CHANGES = 2


def default_state_dir() -> str:
    if os.environ.get("RECONCILE_STATE_DIR"):
        return os.environ["RECONCILE_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/reconciler"
    return str(Path.home() / ".local" / "state" / "reconciler")


def source_options(f: F) -> F:
    """Options that say which repository, commit and environment to read."""
    options = [
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
    ]
    for option in reversed(options):
        f = option(f)
    return f


def state_options(f: F) -> F:
    f = click.option(
        "--state-dir",
        envvar="RECONCILE_STATE_DIR",
        default=default_state_dir,
        show_default="/var/lib/reconciler as root, else ~/.local/state/reconciler",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where the reconciler keeps its HAProxy files, locks and history.",
    )(f)
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(f)


@dataclass
class Loaded:
    snapshot: Snapshot
    manifests: Manifests
    spec: RepoSpec

    @property
    def label(self) -> str:
        s = self.snapshot
        return f"commit {s.short}" + (f" ({s.summary})" if s.summary else "")


def _load(repo: str, branch: str | None, rev: str | None, subdir: str) -> Loaded:
    from reconciler.manifests import load_manifests
    from reconciler.source import (
        RepoSpec,
        open_repo,
        read_commit,
        resolve_rev,
        worktree_changes,
    )

    spec = RepoSpec(location=repo, branch=branch, subdir=subdir)
    git_repo, root = open_repo(spec)
    snapshot = read_commit(git_repo, root, resolve_rev(spec, rev))
    if not spec.is_remote and rev is None and worktree_changes(git_repo, root):
        click.echo(
            f"note: uncommitted changes under {repo} are ignored; reading commit {snapshot.short}",
            err=True,
        )
    return Loaded(snapshot, load_manifests(snapshot.files), spec)


def _pick_environment(manifests: Manifests, environment: str | None) -> str:
    names = manifests.environment_names()
    if environment:
        return environment
    if len(names) == 1:
        return names[0]
    raise ReconcilerError(
        f"the repository has several environments ({', '.join(names)}): choose one with --env"
    )


def _fail(exc: ReconcilerError) -> None:
    if isinstance(exc, ManifestError):
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        click.echo(f"{len(exc.problems)} problem(s) found; nothing was changed.", err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _run_plan(
    repo: str,
    branch: str | None,
    rev: str | None,
    subdir: str,
    environment: str | None,
    state_dir: Path,
    output: str,
) -> None:
    try:
        from reconciler.manifests import resolve
        from reconciler.observe.live import observe
        from reconciler.output import plan_json, plan_text
        from reconciler.plan import plan

        loaded = _load(repo, branch, rev, subdir)
        env = _pick_environment(loaded.manifests, environment)
        desired = resolve(loaded.manifests, env, loaded.snapshot.commit)
        result = plan(desired, observe(desired, state_dir))
    except ReconcilerError as exc:
        _fail(exc)
        return
    render = plan_json if output == "json" else plan_text
    click.echo(render(result, loaded.label), nl=False)
    sys.exit(0 if result.empty else EXIT_CHANGES)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconcile")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing (as `plan`).")
@source_options
@state_options
@click.pass_context
def main(
    ctx: click.Context,
    dry_run: bool,
    repo: str,
    branch: str | None,
    rev: str | None,
    subdir: str,
    environment: str | None,
    state_dir: Path,
    output: str,
) -> None:
    """Reconcile Docker hosts and HAProxy with the release manifests in git.

    Reads a commit of the manifests repository, observes what really runs (Docker
    containers, HAProxy), and plans the smallest set of changes. With --dry-run (or the
    `plan` command) it prints the plan and exits 0 when nothing would change, 2 when
    changes are pending, 1 on error.

    \b
    Examples:
      reconcile --repo sample-repo --env production --dry-run
      reconcile validate --repo sample-repo
      reconcile diff main feature-branch --repo . --output markdown
    """
    if ctx.invoked_subcommand is not None:
        return
    if not dry_run:
        click.echo(
            "error: applying changes is not available in this version yet; "
            "use --dry-run (or `reconcile plan`) to see what would change.",
            err=True,
        )
        sys.exit(1)
    _run_plan(repo, branch, rev, subdir, environment, state_dir, output)


@main.command()
@source_options
@state_options
def plan(
    repo: str,
    branch: str | None,
    rev: str | None,
    subdir: str,
    environment: str | None,
    state_dir: Path,
    output: str,
) -> None:
    """Show what a reconcile would change (the dry run); change nothing.

    Exits 0 when nothing would change, 2 when changes are pending, 1 on error.
    """
    _run_plan(repo, branch, rev, subdir, environment, state_dir, output)


@main.command()
@source_options
@click.option(
    "--worktree",
    is_flag=True,
    help="Validate the files on disk instead of a commit (for pre-commit hooks).",
)
def validate(
    repo: str,
    branch: str | None,
    rev: str | None,
    subdir: str,
    environment: str | None,
    worktree: bool,
) -> None:
    """Check every manifest: YAML, JSON Schema and semantic rules.

    Reports all problems of the repository with file:line:column, field and bad value,
    and exits 1 if there are any. Touches no host.
    """
    try:
        from reconciler.manifests import load_manifests, resolve
        from reconciler.source import read_directory

        if worktree:
            snapshot = read_directory(str(Path(repo) / subdir))
            manifests = load_manifests(snapshot.files)
            label = f"files under {repo}"
        else:
            loaded = _load(repo, branch, rev, subdir)
            snapshot, manifests, label = loaded.snapshot, loaded.manifests, loaded.label
        if not snapshot.files:
            raise ReconcilerError(f"no manifest files (*.yaml, *.yml) found in {label}")
        envs = [environment] if environment else manifests.environment_names()
        for env in envs:
            resolve(manifests, env, snapshot.commit)
    except ReconcilerError as exc:
        _fail(exc)
        return
    click.echo(
        f"ok: {len(snapshot.files)} file(s) valid at {label}; environments: {', '.join(envs)}"
    )


@main.command()
@click.argument("base")
@click.argument("head")
@click.option(
    "--repo",
    "-r",
    envvar="RECONCILE_REPO",
    default=".",
    show_default=True,
    help="Manifests repository (local path or git URL).",
)
@click.option("--path", "subdir", default="", help="Manifests folder inside the repository.")
@click.option("--env", "-e", "environment", help="Only this environment (default: all).")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="markdown is ready to paste as a pull-request comment.",
)
@click.option("--exit-code", is_flag=True, help="Exit 2 when the desired state differs.")
def diff(
    base: str,
    head: str,
    repo: str,
    subdir: str,
    environment: str | None,
    output: str,
    exit_code: bool,
) -> None:
    """Compare the desired state of two commits (BASE, HEAD) without contacting any host.

    Lists per environment and service what changes: releases and weights, env keys
    (secret-looking values masked), secrets (names only), replicas, hosts, and any other
    setting; and per load balancer its frontends. Runs in a pull-request CI with no Docker.
    """
    try:
        from reconciler.diff import diff_states
        from reconciler.manifests import load_manifests, resolve
        from reconciler.model import DesiredState
        from reconciler.output import diff_json, diff_markdown, diff_text
        from reconciler.source import RepoSpec, open_repo, read_commit, resolve_rev

        spec = RepoSpec(location=repo, subdir=subdir)
        git_repo, root = open_repo(spec)
        snaps = [read_commit(git_repo, root, resolve_rev(spec, r)) for r in (base, head)]
        loaded = [load_manifests(s.files) for s in snaps]
        if environment:
            envs = [environment]
        else:
            envs = sorted(set(loaded[0].environment_names()) | set(loaded[1].environment_names()))
        diffs = []
        for env in envs:
            # An environment that exists on one side only diffs against an empty one.
            base_state, head_state = (
                resolve(m, env, s.commit)
                if env in m.environment_names()
                else DesiredState(env, s.commit, (), (), ())
                for m, s in zip(loaded, snaps, strict=True)
            )
            diffs.append(diff_states(base_state, head_state))
    except ReconcilerError as exc:
        _fail(exc)
        return
    render = {"text": diff_text, "json": diff_json, "markdown": diff_markdown}[output]
    click.echo(render(diffs, snaps[0].short, snaps[1].short), nl=False)
    if exit_code and any(d.items for d in diffs):
        sys.exit(EXIT_CHANGES)
