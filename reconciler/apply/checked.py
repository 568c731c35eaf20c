"""LB configs checked ahead of the config step that installs them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.lb.port import LoadBalancerPort


class CheckedConfigs:
    """Checked copies (``LoadBalancerPort.check``) of config texts, by LB host and text,
    some made in the background; thread-safe. A config step takes the copy of the text
    it installs (``take``: none, it checks its own); the copies nobody took are
    discarded at the end of the run (``discard``)."""

    def __init__(self, lbs: Mapping[str, LoadBalancerPort]) -> None:
        self.lbs = lbs
        self._lock = threading.Lock()
        self._copies: dict[str, dict[str, Path]] = {}
        self._pending: dict[tuple[str, str], Future[None]] = {}  # (host, text): under way
        self._pool: ThreadPoolExecutor | None = None

    def check(self, host: str, text: str) -> None:
        """Check ``text`` on ``host`` unless it was; raises the port's refusal."""
        with self._lock:
            if text in self._copies.get(host, {}):
                return
        path = self.lbs[host].check(text)
        with self._lock:
            table = self._copies.setdefault(host, {})
            twice = text in table  # checked meanwhile by another thread
            if not twice:
                table[text] = path
        if twice:
            self.lbs[host].discard(path)

    def check_later(self, host: str, text: str, first: Callable[[], None]) -> None:
        """``first()``, then ``check`` ``text`` on ``host``, in the background; a
        refusal is left to the config step."""

        def quietly() -> None:
            try:
                first()
                self.check(host, text)
            except ReconcilerError:
                return

        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="precheck")
            if (host, text) not in self._pending:
                self._pending[(host, text)] = self._pool.submit(quietly)

    def take(self, host: str, text: str) -> Path | None:
        """The checked copy of ``text`` on ``host`` (None: not checked), now the
        caller's; waits for its check when it is under way."""
        with self._lock:
            future = self._pending.pop((host, text), None)
        if future is not None:
            future.result()
        with self._lock:
            return self._copies.get(host, {}).pop(text, None)

    def discard(self) -> None:
        """Remove every copy not taken (the run stopped first, or went otherwise than
        the checks ahead foresaw)."""
        with self._lock:
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        with self._lock:
            copies, self._copies = self._copies, {}
        for host, table in copies.items():
            for path in table.values():
                self.lbs[host].discard(path)
