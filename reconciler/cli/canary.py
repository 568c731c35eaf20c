"""The operator's decisions: ``reconcile promote`` and ``abort`` (a canary, by hand) and
``reconcile retry`` (forget failures). Each is recorded in the history as a run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import fail, load_desired, or_fail
from reconciler.cli.options import (
    Source,
    haproxy_options,
    instance_option,
    source_options,
    state_options,
)
from reconciler.cli.plan_apply import run_apply
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.lb.haproxy.paths import HAProxyPaths


def decide_canary(
    src: Source,
    state_dir: Path,
    output: str,
    external: HAProxyPaths | None,
    instance: str | None,
    service: str,
    status: str,
) -> None:
    """Promote or abort SERVICE's canary by hand, record it, then apply (the weights
    move through the runtime API, as when the analysis decides)."""
    from reconciler.session import Session

    _, desired = or_fail(lambda: load_desired(src, state_dir, instance))
    env = desired.environment
    with Session(state_dir) as session:
        state = session.canaries(env).get(service)
        if state is None:
            fail(
                ReconcilerError(
                    f"service {service} has no canary under analysis in environment "
                    f"{env} (see `reconcile status`)"
                )
            )
        state.status = status
        state.reason = (
            f"{status} by hand (reconcile {'promote' if status == 'promoted' else 'abort'})"
        )
        state.history.append(state.reason)
        session.save_canary(env, service, state)
        session.record_decision(
            env, status, f"canary {state.canary} of {service} {state.reason}"
        )
    run_apply(src, state_dir, output, 30.0, 30.0, external, instance)


@click.command()
@click.argument("service")
@source_options
@state_options
@instance_option
@haproxy_options
def promote(
    service: str,
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    external: HAProxyPaths | None,
) -> None:
    """Promote SERVICE's canary now: all traffic to it (then make it the only release in
    git). Recorded in the history; applied at once through HAProxy's runtime API."""
    decide_canary(src, state_dir, output, external, instance, service, "promoted")


@click.command()
@click.argument("service")
@source_options
@state_options
@instance_option
@haproxy_options
def abort(
    service: str,
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    external: HAProxyPaths | None,
) -> None:
    """Abort SERVICE's canary now: its weight goes to 0 (the baseline takes all traffic);
    its containers stay for inspection until git changes. Recorded in the history."""
    decide_canary(src, state_dir, output, external, instance, service, "aborted")


@click.command()
@click.argument("service", required=False)
@click.option(
    "--env",
    "-e",
    "environment",
    envvar="RECONCILE_ENV",
    required=True,
    help="Environment of the service.",
)
@state_options
def retry(service: str | None, environment: str, state_dir: Path, output: str) -> None:
    """Forget the recorded failures of SERVICE (default: every service) of an environment,
    at any commit, so the next pass tries it again; a canary of it (aborted or not)
    starts its analysis again from the first step."""
    from reconciler.session import Session

    with Session(state_dir) as session:
        n, restarted = session.forget_failures(environment, service)
        if restarted:
            session.record_decision(
                environment, "retry", f"canary analysis of {', '.join(restarted)} restarted"
            )
    canary = f" and restarted the canary analysis of {', '.join(restarted)}" if restarted else ""
    click.echo(
        f"cleared {n} failure(s){canary}; "
        f"the next pass retries {service or 'every service'} of {environment}"
    )
