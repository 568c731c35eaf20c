"""Command line: ``reconcile [--dry-run]``, ``plan``, ``apply``, ``status``, ``history``,
``retry``, ``promote``, ``abort``, ``haproxy``, ``validate``, ``diff``, ``watch``, ``ui``,
``agent``.

Exit codes: 0 success and nothing to change; 2 changes pending (plan / --dry-run); 1 any
error (bad manifests, unreachable host, unknown commit). Heavy libraries (docker, git,
jsonschema) are imported inside the commands so ``--help`` stays fast.

Commands are thin: they parse options, call the session (``reconciler.session``) and
print what ``reconciler.present`` renders. One module per family: ``plan_apply``,
``canary`` (promote, abort, retry), ``inspect`` (status, history), ``haproxy``,
``validate_diff``, ``watch``; shared options in ``options``, loading and errors in
``common``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler import __version__
from reconciler.cli import agent, canary, haproxy, inspect, plan_apply, ui, validate_diff, watch
from reconciler.cli.options import (
    Source,
    apply_options,
    haproxy_options,
    instance_option,
    retention_options,
    rollback_option,
    source_options,
    state_options,
)

if TYPE_CHECKING:
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.store import Retention

__all__ = ["entry", "main"]

# Exit 2 means "changes pending" here; a command-line usage error is an error like any other.
click.UsageError.exit_code = 1


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconcile")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing (as `plan`).")
@source_options
@state_options
@instance_option
@haproxy_options
@apply_options
@retention_options
@rollback_option
@click.pass_context
def main(
    ctx: click.Context,
    dry_run: bool,
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    lock_timeout: float,
    health_timeout: float,
    external: HAProxyPaths | None,
    retention: Retention,
    allow_rollback: bool,
) -> None:
    """Reconcile Docker hosts and HAProxy with the release manifests in git.

    Without a command: read a commit of the manifests repository, observe what really
    runs (Docker containers, HAProxy), plan the smallest set of changes and apply them:
    new containers start next to the old ones and get traffic only once healthy, HAProxy
    configs are installed only after `haproxy -c` accepts them, old containers are
    drained before they are stopped. Exit 0 when all went well, 1 otherwise.

    With --dry-run (or the `plan` command) it prints the plan only and exits 0 when
    nothing would change, 2 when changes are pending, 1 on error.

    \b
    Examples:
      reconcile --repo sample-repo --env production --dry-run
      reconcile --repo sample-repo --env production
      reconcile status --repo sample-repo --env production
      reconcile diff main feature-branch --repo . --output markdown
    """
    if ctx.invoked_subcommand is not None:
        return
    if dry_run:
        plan_apply.run_plan(src, state_dir, output, external, instance)
    plan_apply.run_apply(
        src,
        state_dir,
        output,
        lock_timeout,
        health_timeout,
        external,
        instance,
        retention,
        allow_rollback,
    )


for _command in (
    plan_apply.plan,
    plan_apply.apply,
    canary.promote,
    canary.abort,
    canary.retry,
    inspect.status,
    inspect.history,
    haproxy.haproxy,
    validate_diff.validate,
    validate_diff.diff,
    watch.watch,
    ui.ui,
    agent.agent,
):
    main.add_command(_command)


def entry() -> None:
    """The `reconcile` executable (and ``python -m reconciler``): ``main``, allowed to
    end a one-shot command at once (``common.exit_now``)."""
    from reconciler.cli import common

    common.QUICK_EXIT = True
    main()
