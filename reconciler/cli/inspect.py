"""What runs and what ran: ``reconcile status`` and ``reconcile history``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import fail, load_desired
from reconciler.cli.options import (
    Source,
    haproxy_options,
    instance_option,
    source_options,
    state_options,
)
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.model import DesiredState
    from reconciler.present.cluster import ClusterView


@click.command()
@source_options
@state_options
@instance_option
@haproxy_options
def status(
    src: Source, state_dir: Path, output: str, instance: str | None, external: HAProxyPaths | None
) -> None:
    """Show services, releases, weights, containers and their health, HAProxy server states,
    and per-revision requests, 5xx and response times from HAProxy's counters."""
    try:
        from reconciler.present.status import status_json, status_text
        from reconciler.session import Session

        loaded, desired = load_desired(src, state_dir, instance)
        with Session(state_dir, external=external) as session:
            preview = session.preview(desired)
            store = session.require_store()
            runs = store.runs(desired.environment, limit=1)
            canaries = session.canaries(desired.environment)
            size = store.size()
        cluster = _cluster_view(desired)
    except ReconcilerError as exc:
        fail(exc)
    render = status_json if output == "json" else status_text
    last = runs[0] if runs else None
    click.echo(
        render(
            preview.desired,
            preview.observed,
            last,
            dict(preview.held),
            loaded.label,
            canaries,
            size,
            cluster,
        ),
        nl=False,
    )


def _cluster_view(desired: DesiredState) -> ClusterView | None:
    """etcd mode: the leading replica, its last commit and the services held there, as
    etcd says now (an error if it cannot be read)."""
    from reconciler.cluster.leader import read_leader
    from reconciler.cluster.shared import read_applied
    from reconciler.present.cluster import ClusterView

    settings = desired.coordination.etcd
    if desired.coordination.mode != "etcd" or settings is None:
        return None
    try:
        leader = read_leader(settings, desired.instance.name, desired.environment)
        applied = read_applied(desired)
        if applied is None:
            return ClusterView("etcd", leader)
        return ClusterView("etcd", leader, applied=applied.commit, held=applied.held)
    except ReconcilerError as exc:
        return ClusterView("etcd", error=str(exc))


@click.command()
@click.option(
    "--env", "-e", "environment", envvar="RECONCILE_ENV", help="Only runs of this environment."
)
@click.option("--limit", "-n", type=int, default=20, show_default=True)
@click.option("--run", "run_id", type=int, help="Show the steps of one run.")
@state_options
def history(
    environment: str | None, limit: int, run_id: int | None, state_dir: Path, output: str
) -> None:
    """List past passes (commit, status, duration), or the steps of one run."""
    from reconciler.present import history as show
    from reconciler.session import Session

    with Session(state_dir, read_only=True) as session:
        store = session.store
        if store is None:
            click.echo(f"no history yet in {state_dir}")
            return
        if run_id is not None:
            steps, failures = store.steps(run_id), store.failures_of(run_id)
            if output == "json":
                text = show.run_json(run_id, store.plan_of(run_id), steps, failures)
            else:
                text = show.run_text(steps, failures)
        else:
            runs = store.runs(environment, limit)
            text = show.runs_json(runs) if output == "json" else show.runs_text(runs)
    click.echo(text, nl=False)
