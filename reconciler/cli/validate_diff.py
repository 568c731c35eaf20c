"""Commands that read manifests only and touch no host: ``reconcile validate`` and
``reconcile diff``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import EXIT_CHANGES, fail, load_source
from reconciler.cli.options import Source, default_state_dir, source_options
from reconciler.errors import ReconcilerError, printable

if TYPE_CHECKING:
    from reconciler.desired.diff import EnvironmentDiff
    from reconciler.desired.manifests import Manifests
    from reconciler.desired.source import Snapshot


def _worktree(src: Source) -> tuple[Snapshot, Manifests, str]:
    """The manifests as files on disk under ``src`` (symbolic links noted, not read)."""
    from reconciler.desired.manifests import load_manifests
    from reconciler.desired.source import read_directory

    snapshot = read_directory(str(Path(src.repo) / src.subdir))
    for link in snapshot.skipped:
        click.echo(
            f"note: {printable(link)} is a symbolic link; not read (links are never followed)",
            err=True,
        )
    return snapshot, load_manifests(snapshot.files), f"files under {src.repo}"


@click.command()
@source_options
@click.option(
    "--worktree",
    is_flag=True,
    help="Validate the files on disk instead of a commit (for pre-commit hooks).",
)
def validate(src: Source, worktree: bool) -> None:
    """Check every manifest: YAML, JSON Schema and semantic rules.

    Reports all problems of the repository with file:line:column, field and bad value,
    and exits 1 if there are any. Touches no host.
    """
    try:
        from reconciler.desired.manifests import resolve

        policy = src.load_policy(Path(default_state_dir()))
        if worktree:
            snapshot, manifests, label = _worktree(src)
        else:
            loaded = load_source(src)
            snapshot, manifests, label = loaded.snapshot, loaded.manifests, loaded.label
        if not snapshot.files:
            raise ReconcilerError(f"no manifest files (*.yaml, *.yml) found in {label}")
        envs = [src.environment] if src.environment else manifests.environment_names()
        for env in envs:
            resolve(manifests, env, snapshot.commit, policy)
    except ReconcilerError as exc:
        fail(exc)
    click.echo(
        f"ok: {len(snapshot.files)} file(s) valid at {label}; environments: {', '.join(envs)}"
    )


def _diffs(
    repo: str, subdir: str, revs: tuple[str, str], environment: str | None
) -> tuple[list[EnvironmentDiff], list[Snapshot]]:
    """The diff of each environment (``environment`` only, or every one on either side)
    between the commits ``revs`` names, and the two commits' snapshots."""
    from reconciler.desired.diff import diff_states
    from reconciler.desired.manifests import load_manifests, resolve
    from reconciler.desired.source import RepoSpec, open_repo, read_commit, resolve_rev
    from reconciler.model import DesiredState

    spec = RepoSpec(location=repo, subdir=subdir)
    git_repo, root = open_repo(spec)
    snaps = [read_commit(git_repo, root, resolve_rev(spec, r)) for r in revs]
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
    return diffs, snaps


@click.command()
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

    Lists per environment every change of its desired state: each release of each service
    (image, weight, env with secret-looking values masked, secrets by name and location,
    health, limits, canary policy, ...), replicas, hosts and their SSH settings, load
    balancers with frontends and routes, and the environment's rollout. Runs in a
    pull-request CI with no Docker.
    """
    try:
        from reconciler.present.output import diff_json, diff_markdown, diff_text

        diffs, snaps = _diffs(repo, subdir, (base, head), environment)
    except ReconcilerError as exc:
        fail(exc)
    render = {"text": diff_text, "json": diff_json, "markdown": diff_markdown}[output]
    click.echo(render(diffs, snaps[0].short, snaps[1].short), nl=False)
    if exit_code and any(d.items for d in diffs):
        sys.exit(EXIT_CHANGES)
