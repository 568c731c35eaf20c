"""``reconcile ui``: the status page of ``reconcile watch``, for users without watch."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.common import fail, load_desired, or_fail
from reconciler.cli.options import (
    Source,
    haproxy_options,
    instance_option,
    source_options,
    state_dir_option,
)
from reconciler.errors import ReconcilerError

if TYPE_CHECKING:
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.present.web.data import PageView


class LiveView:
    """The world observed at most every ``refresh_s`` seconds, on the first request after
    that (nobody looking: nothing observed). Reads the commit ``src`` names and observes
    as ``reconcile status`` does (``Session.preview``: changes nothing). A failed
    observation keeps the last view, with the error beside it."""

    def __init__(
        self,
        src: Source,
        state_dir: Path,
        instance: str | None,
        external: HAProxyPaths | None,
        refresh_s: float,
    ) -> None:
        self.src, self.state_dir, self.instance = src, state_dir, instance
        self.external, self.refresh_s = external, refresh_s
        self._view: PageView | None = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> PageView | None:
        with self._lock:  # one observation at a time; the others wait for its result
            if time.monotonic() - self._at >= self.refresh_s:
                self._view = self._observe()
                self._at = time.monotonic()
            return self._view

    def _observe(self) -> PageView | None:
        from dataclasses import replace

        from reconciler.present.web.data import PageView
        from reconciler.session import Session

        try:
            loaded, desired = load_desired(self.src, self.state_dir, self.instance)
            with Session(self.state_dir, external=self.external, read_only=True) as session:
                preview = session.preview(desired)
        except ReconcilerError as exc:
            return None if self._view is None else replace(self._view, error=str(exc))
        return PageView(desired, preview.observed, dict(preview.held), loaded.git_dir, time.time())


@click.command()
@source_options
@state_dir_option(
    "The reconciler's state directory (history, canaries, request records): only read."
)
@instance_option
@haproxy_options
@click.option(
    "--addr",
    default="127.0.0.1:9180",
    show_default=True,
    help="Address to serve the page on (HOST:PORT). Keep it on loopback, or put an "
    "authenticating proxy in front: the page has no login.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=1.0),
    default=5.0,
    show_default=True,
    help="Observe Docker and HAProxy at most this often (seconds), while the page is open.",
)
def ui(
    src: Source,
    state_dir: Path,
    instance: str | None,
    external: HAProxyPaths | None,
    addr: str,
    refresh: float,
) -> None:
    """Serve the status page without `reconcile watch` (which serves it on --ui-addr).

    The page shows the environment and its applied commit, each service's releases and
    weights, its containers per host with their health and HAProxy state, a running
    canary's step, weights and evidence over time, charts comparing revisions (request
    rate, error rate, p50/p95/p99) and a per-action table from the request records, and
    the timeline of passes from the history. It updates itself every few seconds.

    Read-only: it changes nothing, neither on the hosts nor in the state directory, and
    has no buttons that act. It reads the commit --repo names and observes Docker and
    HAProxy live, at most every --refresh seconds while someone looks. Ctrl-C stops it.

    \b
    Example:
      reconcile ui --repo /srv/git/manifests.git -b main --env production
      # then open http://127.0.0.1:9180/
    """
    from reconciler.present.web.data import PageData
    from reconciler.present.web.server import PageServer

    view = LiveView(src, state_dir, instance, external, refresh)
    server = or_fail(lambda: PageServer(PageData(state_dir, view, src.environment), addr))
    click.echo(f"status page on {server.url} (read-only); Ctrl-C stops", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        server.close()
    except ReconcilerError as exc:
        fail(exc)
