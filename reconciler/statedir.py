"""The state directory is private to the reconciler: mode 0700, its files 0600.

It holds the history (failure messages, plans), the label key, locks and the embedded
HAProxy's files and sockets. Modes are given at creation and set again on what an
earlier version left more open, whatever the process umask (the documented root CLI
path runs under umask 022, which would make them 0755/0644: readable by every user).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def ensure(state_dir: Path) -> Path:
    """Create ``state_dir`` (and missing parents) and make it 0700 when it is ours."""
    state_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(state_dir, DIR_MODE)
    return state_dir


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 unless it exists; make it 0600 when ours.
    Its folder is ``ensure``d first."""
    ensure(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    _tighten(path, FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    """Set ``mode`` on ``path`` when this user owns it and it is more open (a state dir
    made by an earlier version, or under a loose umask). Not following links: a link
    planted in the state dir must not get its target's mode changed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return
    if stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def tighten_existing(path: Path) -> None:
    """``path`` (a file the reconciler or SQLite made) to 0600 when it exists."""
    _tighten(path, FILE_MODE)
