"""`reconcile watch`: the loop (``loop``), the followed branch (``source``) and the
backoff after transient failures (``backoff``)."""

from reconciler.watch.backoff import BACKOFF_MAX_S, backoff_delay
from reconciler.watch.loop import WatchConfig, Watcher

__all__ = ["BACKOFF_MAX_S", "WatchConfig", "Watcher", "backoff_delay"]
