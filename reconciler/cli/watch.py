"""``reconcile watch``: the GitOps loop (``reconciler.watch``) as a command."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.common import fail, or_fail
from reconciler.cli.options import (
    F,
    Source,
    apply_options,
    haproxy_options,
    instance_option,
    retention_options,
    source_options,
    state_options,
)
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.records.store import RecordsRetention
    from reconciler.store import Retention
    from reconciler.watch import WatchConfig, Watcher


def _log_to_stderr(log_format: str) -> None:
    """Log (level INFO and up) to stderr as text or one JSON object per line."""
    import logging

    from reconciler.present.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _stop_on_signals(watcher: Watcher) -> None:
    """SIGTERM and SIGINT stop the loop after the current step."""
    import logging
    import signal

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("reconciler.watch").info(
            "signal %d: stopping after the current step", signum, extra={"event": "stop"}
        )
        watcher.stop.set()
        watcher.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _serve_page(watcher: Watcher, ui_addr: str) -> None:
    """Serve the status page of ``watcher`` on ``ui_addr`` in a daemon thread ('off': not).
    Its requests read what the last pass observed and the history: the loop never waits."""
    import logging

    from reconciler.present.web.data import PageData
    from reconciler.present.web.server import PageServer

    if ui_addr == "off":
        return
    data = PageData(watcher.cfg.state_dir, lambda: watcher.view, watcher.cfg.environment)
    server = or_fail(lambda: PageServer(data, ui_addr)).start()
    logging.getLogger("reconciler.watch").info(
        "status page on %s (read-only)", server.url, extra={"event": "ui", "url": server.url}
    )


def _run(cfg: WatchConfig, src: Source, metrics_addr: str, ui_addr: str) -> None:
    """Run the loop until a signal stops it, serving metrics on ``metrics_addr`` and the
    status page on ``ui_addr``."""
    import logging

    from reconciler.present.metrics import Metrics, serve
    from reconciler.watch import Watcher

    watcher = Watcher(cfg, Metrics())
    _stop_on_signals(watcher)
    if metrics_addr != "off":
        serve(watcher.metrics, metrics_addr, stale_after_s=max(3 * cfg.drift_s, 60))
    _serve_page(watcher, ui_addr)
    logging.getLogger("reconciler.watch").info(
        "watching %s (%s) for environment %s",
        src.repo,
        src.branch or "HEAD",
        src.environment or "(the only one)",
        extra={"event": "start"},
    )
    try:
        watcher.run()
    except ReconcilerError as exc:
        fail(exc)


def _signature_options(f: F) -> F:
    f = click.option(
        "--gpg-home",
        type=click.Path(file_okay=False, path_type=Path),
        help="A GnuPG home whose keyring holds the allowed keys (without it, no GPG "
        "signature is accepted).",
    )(f)
    f = click.option(
        "--allowed-signers",
        type=click.Path(dir_okay=False, path_type=Path),
        help="git's allowed signers file (SSH keys; without it, no SSH signature is accepted).",
    )(f)
    return click.option(
        "--require-signed",
        is_flag=True,
        help="Apply only commits signed by an allowed key (--allowed-signers for SSH "
        "signatures, --gpg-home for GPG).",
    )(f)


def _records_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Request records options; the command receives ``records: RecordsRetention |
    None`` (None: not collected)."""

    @functools.wraps(f)
    def wrapper(
        *args: Any, records: bool, records_fine_hours: float, records_coarse_days: float,
        **kwargs: Any,
    ) -> Any:
        from reconciler.records.store import RecordsRetention

        kept = RecordsRetention(records_fine_hours * 3600, records_coarse_days * 86400)
        return f(*args, records=kept if records else None, **kwargs)

    for option in reversed([
        click.option(
            "--records/--no-records",
            default=True,
            show_default=True,
            help="Record every request HAProxy answers (service, revision, action, status, "
            "times) in <state dir>/requests.db and as metrics; a LoadBalancer with "
            "request_records: false has no request log to read either way.",
        ),
        click.option(
            "--records-fine-hours",
            type=click.FloatRange(min=0, min_open=True),
            default=24.0,
            show_default=True,
            help="Keep request records at 10 s resolution this many hours.",
        ),
        click.option(
            "--records-coarse-days",
            type=click.FloatRange(min=0, min_open=True),
            default=14.0,
            show_default=True,
            help="Keep request records at 1 min resolution this many days.",
        ),
    ]):
        wrapper = option(wrapper)
    return wrapper


def _loop_options(f: F) -> F:
    f = click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
    )(f)
    f = click.option(
        "--ui-addr",
        default="127.0.0.1:9180",
        show_default=True,
        help="Address of the read-only status page (charts, canaries, passes; see "
        "`reconcile ui --help`); 'off' to disable. It has no login: keep it on loopback "
        "or behind an authenticating proxy.",
    )(f)
    f = click.option(
        "--metrics-addr",
        default="127.0.0.1:9108",
        show_default=True,
        help="Address of the /metrics and /healthz endpoint; 'off' to disable.",
    )(f)
    f = click.option(
        "--detect-only", is_flag=True, help="Report drift (log, metrics) without changing anything."
    )(f)
    f = click.option(
        "--drift-interval",
        type=float,
        default=60.0,
        show_default=True,
        help="Seconds between full passes that repair drift.",
    )(f)
    return click.option(
        "--poll",
        type=float,
        default=2.0,
        show_default=True,
        help="Seconds between checks of the branch head: `git ls-remote` for a URL "
        "(also file://), so a commit is seen up to this late; a path is also watched "
        "for file events, so a commit there is seen at once.",
    )(f)


@click.command()
@source_options
@state_options
@instance_option
@haproxy_options
@apply_options
@retention_options
@_records_options
@_loop_options
@_signature_options
def watch(
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    external: HAProxyPaths | None,
    lock_timeout: float,
    health_timeout: float,
    retention: Retention,
    records: RecordsRetention | None,
    poll: float,
    drift_interval: float,
    detect_only: bool,
    metrics_addr: str,
    ui_addr: str,
    log_format: str,
    require_signed: bool,
    allowed_signers: Path | None,
    gpg_home: Path | None,
) -> None:
    """Follow a branch and keep the hosts converged (the GitOps loop).

    A new commit is applied as soon as it is seen; every --drift-interval a full pass
    repairs drift; while a canary needs looks, a pass runs every analysis.interval
    of it. SIGTERM (or Ctrl-C) finishes the current step and exits 0: HAProxy never
    points at a stopped container afterwards.

    How soon a commit is seen depends on how --repo is written. A path (also of a
    bare repository) is watched for file events on its refs: a push is seen at
    once, well under a second later. A URL, including file:///..., is asked with
    `git ls-remote` every --poll seconds (and fetched only when its head moved):
    up to --poll seconds later. Use the path when this machine holds the repository.

    \b
    Examples:
      reconcile watch --repo /srv/git/manifests.git -b main --env production
      reconcile watch --repo https://git.example.com/ops/manifests.git -b main \\
          --env production --poll 5 --metrics-addr 0.0.0.0:9108
    """
    from reconciler import instance as inst
    from reconciler.desired.source import RepoSpec
    from reconciler.watch import WatchConfig

    if require_signed and not (allowed_signers or gpg_home):
        raise click.UsageError("--require-signed needs --allowed-signers or --gpg-home")
    _log_to_stderr(log_format)
    cfg = WatchConfig(
        spec=RepoSpec(location=src.repo, branch=src.branch, subdir=src.subdir),
        environment=src.environment,
        state_dir=state_dir,
        external=external,
        poll_s=poll,
        drift_s=drift_interval,
        detect_only=detect_only,
        health_min_s=health_timeout,
        lock_timeout=lock_timeout,
        require_signed=require_signed,
        allowed_signers=allowed_signers,
        gpg_home=gpg_home,
        instance=or_fail(lambda: inst.resolve(state_dir, instance, create=not detect_only)),
        retention=retention,
        records=records,
        policy=or_fail(lambda: src.load_policy(state_dir)),
    )
    _run(cfg, src, metrics_addr, ui_addr)
