"""``reconcile haproxy``: one command to an environment's HAProxy, its answer printed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import fail, load_desired
from reconciler.cli.options import Source, source_options, state_dir_option
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.transport.pool import Connections


def _target(src: Source, state_dir: Path, lb_host: str | None, conns: Connections) -> HAProxyPaths:
    """The paths of the HAProxy to ask: the embedded one of the environment on this
    machine, or (``lb_host``) the one on that LB host, whose connection joins ``conns``."""
    from reconciler.lb.haproxy.paths import HAProxyPaths

    if lb_host is None and src.environment is not None:
        return HAProxyPaths.embedded(state_dir, src.environment)
    _, desired = load_desired(src, state_dir, None)
    if lb_host is None:
        return HAProxyPaths.embedded(state_dir, desired.environment)
    from reconciler.observe.live import lb_paths

    lb_names = {h for lb in desired.loadbalancers for h in lb.hosts}
    if lb_host not in lb_names:
        raise ReconcilerError(
            f"{lb_host!r} is not an LB host of environment {desired.environment} "
            f"(LB hosts: {', '.join(sorted(lb_names)) or 'none'})"
        )
    conns.add(desired.host(lb_host))
    return lb_paths(desired, state_dir, None, desired.host(lb_host))


@click.command(
    context_settings={"ignore_unknown_options": True},  # `show stat -1 4 -1` has words like -1
    short_help="Send one command to HAProxy's CLI and print its answer.",
)
@click.argument("command", nargs=-1, required=True)
@click.option(
    "--master/--stats",
    default=None,
    help="Send to the master CLI, or to the stats socket (runtime API, level admin). "
    "Default: the master for `show proc`, `reload`, `show startup-logs` and `@<process> "
    "...`, the stats socket for everything else.",
)
@click.option(
    "--host",
    "lb_host",
    help="The LB host (its inventory name) whose HAProxy to ask; reads the inventory "
    "from --repo and reaches an SSH host over SSH. Default: the embedded HAProxy of "
    "--env under --state-dir on this machine.",
)
@source_options
@state_dir_option("Where the reconciler keeps its HAProxy files.")
@click.option(
    "--haproxy-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Stats socket of an existing HAProxy (instead of the embedded one's).",
)
@click.option(
    "--haproxy-master-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Master CLI socket of an existing HAProxy (instead of the embedded one's).",
)
def haproxy(
    command: tuple[str, ...],
    master: bool | None,
    lb_host: str | None,
    src: Source,
    state_dir: Path,
    haproxy_socket: Path | None,
    haproxy_master_socket: Path | None,
) -> None:
    """Send COMMAND to the CLI of an environment's HAProxy and print HAProxy's answer.

    COMMAND is given as words (no shell is involved; they are sent as one line joined
    by spaces); a newline or `;` (chaining) is refused. Exit 0 when HAProxy answered,
    even with an error of its own (`Unknown command...`); 1 when it is not running or
    cannot be reached.

    Changes made here (weights, states) are not in git: the next pass puts managed
    servers back as desired.

    \b
    Examples:
      reconcile haproxy show proc --env production          # master CLI
      reconcile haproxy show stat --env production          # stats socket, CSV
      reconcile haproxy show servers state be_web --env production
      reconcile haproxy reload --env production             # loads renewed certificates
      reconcile haproxy show info --host lb1 --repo . --env production   # an SSH LB host
    """
    from reconciler.lb.haproxy.console import ask
    from reconciler.lb.haproxy.control import HAProxy
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.transport.pool import Connections

    conns = Connections()
    try:
        paths = _target(src, state_dir, lb_host, conns)
        paths = HAProxyPaths(
            paths.config,
            haproxy_socket or paths.stats_socket,
            haproxy_master_socket or paths.master_socket,
            managed=False,
        )
        transport = conns.get(lb_host) if lb_host is not None else None
        answer = ask(HAProxy(paths, transport=transport), command, master)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except ReconcilerError as exc:
        fail(exc)
    finally:
        conns.close()
    click.echo(answer, nl=not answer.endswith("\n"))
