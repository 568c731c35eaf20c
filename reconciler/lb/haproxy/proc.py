"""Parser of the master CLI's ``show proc`` (HAProxy 2.6): the master, its reload
counters and its workers. Pure; ``ValueError`` names the line that does not fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from reconciler.lb.haproxy.lines import numbered, where

WorkerStatus = Literal["current", "old"]


@dataclass(frozen=True)
class WorkerProc:
    """One worker listed by the master's ``show proc``."""

    pid: int
    reloads: int  # reloads this worker has survived
    status: WorkerStatus  # "current": under "# workers"; "old": under "# old workers"


@dataclass(frozen=True)
class MasterProcs:
    """The master's ``show proc``: a reload happened when ``reloads`` grew *and* the
    current worker pids changed (a failed reload also increments ``reloads``, sets
    ``failed_reloads`` and keeps the worker)."""

    master_pid: int
    reloads: int
    failed_reloads: int  # the "[failed: N]" of the master line; 0 after a good reload
    workers: tuple[WorkerProc, ...]

    @property
    def current_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers if w.status == "current")

    @property
    def old_pids(self) -> tuple[int, ...]:
        return tuple(w.pid for w in self.workers if w.status == "old")


_PROC_HEADER = re.compile(r"#<PID>\s+<type>\s+<reloads>\s+<uptime>\s+<version>\s*")
_PROC_MASTER = re.compile(r"(\d+)\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?\s+\S+\s+\S+\s*")
_PROC_WORKER = re.compile(r"(\d+)\s+worker\s+(\d+)\s+\S+\s+\S+\s*")
_PROC_PROGRAM = re.compile(r"\d+\s+\S+\s+\d+\s+\S+\s+\S+\s*")
_PROC_SECTIONS: dict[str, WorkerStatus | None] = {
    "# workers": "current",
    "# old workers": "old",
    "# programs": None,
}


def parse_show_proc(text: str) -> MasterProcs:
    """The master CLI's ``show proc`` of HAProxy 2.6.

    Shape: the ``#<PID> <type> <reloads> <uptime> <version>`` header, one ``master``
    line (``<pid> master <reloads> [failed: <n>] <uptime> <version>``), then sections
    ``# workers``, ``# old workers`` (only while old workers live) and ``# programs``.
    Program lines are validated and ignored.
    """
    lines = numbered(text)
    if not lines or not _PROC_HEADER.fullmatch(lines[0][1]):
        number, line = lines[0] if lines else (1, "")
        raise ValueError(f"show proc: {where(number, line)}: expected '#<PID> <type> ...'")
    if len(lines) < 2:
        raise ValueError(f"show proc: {where(*lines[0])}: no master line follows")
    number, line = lines[1]
    master = _PROC_MASTER.fullmatch(line)
    if master is None:
        raise ValueError(f"show proc: {where(number, line)}: expected the master line")
    section: WorkerStatus | None = None
    in_section = False
    workers: list[WorkerProc] = []
    for number, line in lines[2:]:
        if line.startswith("#"):
            key = " ".join(line.split())
            if key not in _PROC_SECTIONS:
                raise ValueError(f"show proc: {where(number, line)}: unknown section")
            section, in_section = _PROC_SECTIONS[key], True
            continue
        if not in_section:
            raise ValueError(f"show proc: {where(number, line)}: line outside a section")
        if section is None:
            if not _PROC_PROGRAM.fullmatch(line):
                raise ValueError(f"show proc: {where(number, line)}: bad program line")
            continue
        worker = _PROC_WORKER.fullmatch(line)
        if worker is None:
            raise ValueError(f"show proc: {where(number, line)}: expected a worker line")
        workers.append(WorkerProc(int(worker[1]), int(worker[2]), section))
    return MasterProcs(
        master_pid=int(master[1]),
        reloads=int(master[2]),
        failed_reloads=int(master[3] or 0),
        workers=tuple(workers),
    )
