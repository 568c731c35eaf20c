"""The reconcile session (``Session``) and what a pass of it returns; commands and
``watch`` are adapters over it."""

from reconciler.apply.passresult import PassResult
from reconciler.session.core import DEFAULT_RETENTION, Preview, ScrubbedError, Session
from reconciler.session.lock import LockTimeout, target_lock

__all__ = [
    "DEFAULT_RETENTION",
    "LockTimeout",
    "PassResult",
    "Preview",
    "ScrubbedError",
    "Session",
    "target_lock",
]
