"""``reconcile plan`` and ``reconcile apply`` (also ``reconcile [--dry-run]``).

Exit codes: plan 0 when nothing would change, 2 when changes are pending; apply 0 when
every step succeeded (or nothing was to do); 1 on any error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from reconciler.cli.common import (
    EXIT_CHANGES,
    Loaded,
    exit_now,
    fail,
    load_desired,
    read_source_meanwhile,
)
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
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.apply.results import StepResult
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.model import DesiredState
    from reconciler.plan.planner import Plan
    from reconciler.session import PassResult, Session
    from reconciler.store import Retention


def run_plan(
    src: Source,
    state_dir: Path,
    output: str,
    external: HAProxyPaths | None,
    instance: str | None,
) -> NoReturn:
    """Print the plan; exit 0 when it is empty, 2 when changes are pending, 1 on error."""
    try:
        from reconciler.cluster.shared import last_applied
        from reconciler.present.output import plan_json, plan_text
        from reconciler.session import Session

        loaded, desired = load_desired(src, state_dir, instance)
        with Session(state_dir, external=external, read_only=True) as session:
            env = desired.environment
            if session.store is not None:
                warn_rollback(loaded, env, last_applied(desired, session.last_commit(env)))
            result = session.preview(desired).plan
    except ReconcilerError as exc:
        fail(exc)
    render = plan_json if output == "json" else plan_text
    click.echo(render(result, loaded.label), nl=False)
    sys.exit(0 if result.empty else EXIT_CHANGES)


def warn_rollback(loaded: Loaded, environment: str, last: str | None) -> None:
    """Say on stderr when ``apply`` would refuse this commit as a rollback."""
    from reconciler.desired.lineage import RollbackRefused, check_forward

    try:
        check_forward(loaded.git_dir, environment, last, loaded.snapshot.commit)
    except RollbackRefused as exc:
        click.echo(f"warning: apply would refuse this commit: {exc}", err=True)


def check_forward(loaded: Loaded, desired: DesiredState, session: Session,
                  allow_rollback: bool) -> None:
    """Refuse (RollbackRefused) a commit that does not descend from the environment's
    last applied commit, unless ``allow_rollback``: then record the operator's decision
    as a run of its own (status ``rollback``) before the pass. Call under the lock."""
    from reconciler.cluster.shared import last_applied
    from reconciler.desired import lineage

    environment = desired.environment
    last = last_applied(desired, session.last_commit(environment))
    try:
        lineage.check_forward(loaded.git_dir, environment, last, loaded.snapshot.commit)
    except lineage.RollbackRefused:
        if not allow_rollback or last is None:
            raise
        commit = loaded.snapshot.commit
        run_id = session.record_decision(
            environment,
            "rollback",
            f"rollback from {last[:7]} to {commit[:7]} by the operator (--allow-rollback)",
            commit=commit,
        )
        click.echo(
            f"note: rolling environment {environment} back from {last[:7]} to "
            f"{commit[:7]} (--allow-rollback; recorded as run {run_id})",
            err=True,
        )


def run_apply(
    src: Source,
    state_dir: Path,
    output: str,
    lock_timeout: float,
    health_timeout: float,
    external: HAProxyPaths | None,
    instance: str | None,
    retention: Retention | None = None,
    allow_rollback: bool = False,
) -> NoReturn:
    """Apply: exit 0 when every step succeeded (or nothing was to do), 1 otherwise.
    The history is pruned to ``retention`` (default: ``Retention()``) after the pass.
    A commit that does not descend from the environment's last applied commit is
    refused (exit 1, nothing changed) unless ``allow_rollback`` (``reconciler.desired.lineage``).
    In etcd mode the pass is the leader's (``reconciler.cluster.once``): it waits up to
    ``lock_timeout`` to lead, and a pass whose fence stopped it exits 1."""
    try:
        read = read_source_meanwhile(src)  # git runs while the pass's modules load
        from reconciler.cluster.once import leadership
        from reconciler.session import DEFAULT_RETENTION, Session, target_lock

        loaded, desired = load_desired(src, state_dir, instance, create=True, read=read)
        on_plan, on_step = _progress(loaded, output == "text")
        policy = src.load_policy(state_dir)
        coord, name, env = desired.coordination, desired.instance.name, desired.environment
        with (
            target_lock(state_dir, desired.environment, lock_timeout),
            leadership(coord, name, env, lock_timeout) as guard,
            Session(state_dir, external=external, policy=policy) as session,
        ):
            check_forward(loaded, desired, session, allow_rollback)
            done = session.apply(
                desired,
                source=loaded.label,
                on_plan=on_plan,
                on_step=on_step,
                health_min_s=health_timeout,
                retention=retention or DEFAULT_RETENTION,
                guard=guard,
            )
    except ReconcilerError as exc:
        fail(exc)
    _report(output, desired, done)
    exit_now(0 if done.result.ok and not done.result.fenced else 1)


def _progress(
    loaded: Loaded, text: bool
) -> tuple[Callable[[Plan], None], Callable[[StepResult], None]]:
    """What an apply prints while it runs (text output only): the plan, then each step."""
    from reconciler.present.apply import step_line
    from reconciler.present.output import plan_text

    def on_plan(p: Plan) -> None:
        if text:
            click.echo(plan_text(p, loaded.label), nl=False)
            if not p.empty:
                click.echo("\nApplying:")

    def on_step(step: StepResult) -> None:
        if text:
            click.echo(step_line(step))

    return on_plan, on_step


def _report(output: str, desired: DesiredState, done: PassResult) -> None:
    """What an apply prints after the pass: the JSON document, or (text, when something
    was to do) the errors and notes on stderr and the verdict."""
    from reconciler.present.apply import apply_json, apply_problems, apply_summary

    res = done.result
    if output == "json":
        click.echo(apply_json(desired, done))
    elif not done.plan.empty or res.mismatches:
        for line in apply_problems(res):
            click.echo(line, err=True)
        click.echo(apply_summary(done))


@click.command()
@source_options
@state_options
@instance_option
@haproxy_options
def plan(
    src: Source, state_dir: Path, output: str, instance: str | None, external: HAProxyPaths | None
) -> None:
    """Show what a reconcile would change (the dry run); change nothing.

    Exits 0 when nothing would change, 2 when changes are pending, 1 on error.
    """
    run_plan(src, state_dir, output, external, instance)


@click.command()
@source_options
@state_options
@instance_option
@haproxy_options
@apply_options
@retention_options
@rollback_option
def apply(
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
    """Apply the plan (the same as `reconcile` without a command).

    A commit that does not descend from the last commit applied to the environment (a
    branch reset to an older commit, or --rev naming one) is refused with exit 1 unless
    --allow-rollback is given; that decision is recorded in the history."""
    run_apply(
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
