"""LB configs checked ahead of the config step that installs them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
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
        self._pending: dict[str, list[Future[None]]] = {}
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

    def check_later(self, host: str, texts: Callable[[], Iterable[str]]) -> None:
        """``check`` each of ``texts()`` on ``host``, in the background; a refusal (or
        an error making them) is left to the config step."""

        def quietly() -> None:
            try:
                for text in texts():
                    self.check(host, text)
            except ReconcilerError:
                return

        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="precheck")
            self._pending.setdefault(host, []).append(self._pool.submit(quietly))

    def wait(self, host: str) -> None:
        """Return once the background checks of ``host`` are done."""
        with self._lock:
            futures = self._pending.pop(host, [])
        for future in futures:
            future.result()

    def take(self, host: str, text: str) -> Path | None:
        """The checked copy of ``text`` on ``host`` (None: not checked), now the caller's."""
        self.wait(host)
        with self._lock:
            return self._copies.get(host, {}).pop(text, None)

    def discard(self) -> None:
        """Remove every copy not taken (the run stopped first, or went otherwise than
        the checks ahead foresaw)."""
        for host in list(self._pending):
            self.wait(host)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        with self._lock:
            copies, self._copies = self._copies, {}
        for host, table in copies.items():
            for path in table.values():
                self.lbs[host].discard(path)
