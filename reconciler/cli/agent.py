"""``reconcile agent --role lb|app``: the host agents of etcd mode (``reconciler.agent``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import fail
from reconciler.cli.options import state_dir_option
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.agent.app import AppAgent
    from reconciler.agent.lb import LBAgent
    from reconciler.cluster.etcd import Etcd
    from reconciler.cluster.keys import Keys


@click.command(short_help="Run a host agent of etcd mode (LB hosts: --role lb).")
@click.option("--role", type=click.Choice(["lb", "app"]), required=True,
              help="What this host is: `lb` keeps its HAProxy serving the published pools, "
              "`app` runs its slice of containers on the local Docker engine.")
@click.option("--etcd", "endpoints", required=True, multiple=True, metavar="URL",
              envvar="RECONCILE_ETCD", help="An etcd endpoint, https://host:port; repeat "
              "the option (or separate with commas) for every member.")
@click.option("--etcd-ca", required=True, type=click.Path(dir_okay=False),
              help="The CA bundle that signed the etcd members' certificates.")
@click.option("--etcd-cert", required=True, type=click.Path(dir_okay=False),
              help="This agent's client certificate.")
@click.option("--etcd-key", required=True, type=click.Path(dir_okay=False),
              help="The key of its client certificate.")
@click.option("--env", "-e", "environment", required=True, help="The environment.")
@click.option("--instance", required=True, metavar="NAME", envvar="RECONCILE_INSTANCE",
              help="The reconciler instance whose keys to follow (the leader's --instance).")
@click.option("--host", "host", default=socket.gethostname, show_default="the hostname",
              help="This host's name in the inventory.")
@state_dir_option("Where the agent keeps its HAProxy files (as `reconcile` does).")
@click.option("--debounce", type=float, default=0.1, show_default=True, metavar="SECONDS",
              help="Wait this long after a change before applying (changes that come "
              "together are applied together).")
@click.option("--resync", type=float, default=None, metavar="SECONDS",
              help="Read and apply everything this often even without a change (drift; "
              "default 30 for lb, 5 for app).")
@click.option("--policy", "policy_path", envvar="RECONCILE_POLICY",
              type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The operator policy (app: where secrets may be read; "
              "default /etc/reconciler/policy.yaml when it exists).")
@click.option("--health-timeout", type=float, default=20.0, show_default=True,
              metavar="SECONDS", help="How long a new server may take to be UP.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log lines on stderr: text, or one JSON object each.")
def agent(role: str, endpoints: tuple[str, ...], etcd_ca: str, etcd_cert: str, etcd_key: str,
          environment: str, instance: str, host: str, state_dir: Path, debounce: float,
          resync: float | None, policy_path: Path | None, health_timeout: float,
          log_format: str) -> None:
    """Keep this host in line with what the leader publishes in etcd.

    With --role lb: watch the environment's pools and load balancer structure in etcd
    and apply every change to this host's HAProxy (the embedded one under
    --state-dir): servers are added, reweighted, drained and deleted through the
    runtime API, the config file is written for persistence after `haproxy -c`, and
    HAProxy reloads only when frontends, routes, TLS bindings or backends' options
    changed. It reports the revision it applied under hosts/<host>/report (bound to
    its own lease) and in its log.

    Losing etcd changes nothing: HAProxy keeps serving the last applied pools and the
    agent retries with backoff. Started while etcd is down, it serves the installed
    config. SIGTERM or SIGINT stop the agent; HAProxy keeps running.

    \b
    Example:
      reconcile agent --role lb --env production --instance edge --host lb1 \\
        --etcd https://10.0.0.1:2379 --etcd https://10.0.0.2:2379 \\
        --etcd-ca ca.crt --etcd-cert lb1.crt --etcd-key lb1.key
    """
    from reconciler.agent.lb import LBAgent, LBAgentConfig
    from reconciler.cli.watch import _log_to_stderr
    from reconciler.cluster.etcd import Etcd
    from reconciler.cluster.keys import Keys
    from reconciler.coordination import EtcdSettings
    from reconciler.lb.haproxy.control import HAProxy
    from reconciler.lb.haproxy.paths import HAProxyPaths

    _log_to_stderr(log_format)
    urls = tuple(u.strip() for e in endpoints for u in e.split(",") if u.strip())
    try:
        keys = Keys(instance, environment)
        client = Etcd(EtcdSettings(urls, etcd_ca, etcd_cert, etcd_key))
        if role == "app":
            _run(_app_agent(keys, host, client, state_dir, policy_path, resync or 5.0,
                            health_timeout))
            return
        cfg = LBAgentConfig(keys, host, debounce_s=debounce, resync_s=resync or 30.0,
                            health_timeout_s=health_timeout)
        lb = HAProxy(HAProxyPaths.embedded(state_dir, environment))
        _run(LBAgent(cfg, client, lb))
    except ReconcilerError as exc:
        fail(exc)


def _app_agent(keys: Keys, host: str, client: Etcd, state_dir: Path, policy_path: Path | None,
               resync: float, health_timeout: float) -> AppAgent:
    """The app agent of ``host`` on the local Docker engine."""
    from reconciler.agent.app import AppAgent, AppAgentConfig
    from reconciler.desired import policy
    from reconciler.transport.dockerapi import local_client

    rules = policy.load(policy_path, state_dir).secret_rules(keys.environment)
    cfg = AppAgentConfig(keys, host, rules, resync_s=resync, health_timeout_s=health_timeout)
    return AppAgent(cfg, client, local_client())


def _run(lb_agent: LBAgent | AppAgent) -> None:
    """Run the agent until SIGTERM or SIGINT."""
    import logging
    import signal
    import threading

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("reconciler.agent").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lb_agent.run(stop)
