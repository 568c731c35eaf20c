"""Two reconcilers never interleave on one target: each pass holds an exclusive lock on
``<state dir>/<environment>.lock`` (a second one waits up to ``lock_timeout`` seconds,
then exits with a message naming the holder's pid)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler import statedir
from reconciler.errors import ReconcilerError


class LockTimeout(ReconcilerError):
    pass


@contextlib.contextmanager
def target_lock(state_dir: Path, environment: str, timeout: float) -> Iterator[None]:
    """Exclusive lock of one environment's target; released on exit (and by the kernel
    when the process dies, so a kill -9 never leaves a stale lock)."""
    path = statedir.private_file(state_dir / f"{environment}.lock")
    with open(path, "r+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    holder = f.read().strip() or "unknown"
                    raise LockTimeout(
                        f"another reconciler (pid {holder}) is working on "
                        f"environment {environment!r}; waited {timeout:.0f}s "
                        f"for {path}"
                    ) from None
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
