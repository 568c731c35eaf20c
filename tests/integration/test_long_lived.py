"""Long-lived connections through a release switch: server-sent event clients connected to
the old release keep their stream through the switch until the drain timeout, and are
then ended cleanly by the old app itself (its last event and the terminating chunk,
sent when its container is stopped), with no reload of HAProxy: `show proc` on the
master CLI shows the same worker before and after, and no old one.

Each client speaks HTTP/1.1 over a plain socket and reads the chunked stream itself, so a
connection cut mid-stream (a reset, an EOF before the terminating chunk, a stall) is
seen as such, not hidden by a library.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import docker
import pytest
from deploy_support import Deployment, wait_for

WEB = "services/web.yaml"
CLIENTS = 6
DRAIN_S = 4  # the service's loadbalancing.drain_timeout in this test
EVENT_EVERY_S = 0.2  # the sample app's /events interval
MAX_GAP_S = 1.0  # a longer pause between two events is a stall


@dataclass
class SSEClient:
    """One client of ``/events`` through HAProxy, reading in its own thread."""

    port: int
    events: list[tuple[float, str]] = field(default_factory=list)  # (when, data line)
    bye: bool = False  # the app's last event ("event: bye") arrived
    clean: bool = False  # ... and then the terminating chunk: a clean end
    error: str = ""
    ended_at: float = 0.0

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        return t

    def _run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"GET /events HTTP/1.1\r\nHost: sse\r\nAccept: text/event-stream\r\n\r\n")
                self._read(s.makefile("rb"))
        except (OSError, ValueError) as exc:  # a reset, a timeout (stall), a bad chunk
            self.error = f"{type(exc).__name__}: {exc}"
        self.ended_at = time.monotonic()

    def _read(self, f: BinaryIO) -> None:
        status = f.readline()
        if b" 200 " not in status:
            raise ValueError(f"status {status!r}")
        while f.readline() not in (b"\r\n", b""):
            pass  # headers
        while True:
            size_line = f.readline()
            if not size_line:
                raise ValueError("EOF before the terminating chunk")
            size = int(size_line.strip(), 16)
            if size == 0:
                f.readline()
                self.clean = self.bye
                return
            chunk = f.read(size + 2)
            if len(chunk) != size + 2:
                raise ValueError("EOF in the middle of an event")
            text = chunk[:-2].decode()
            self.bye = self.bye or text.startswith("event: bye")
            for line in text.splitlines():
                if line.startswith("data: "):
                    self.events.append((time.monotonic(), line[6:]))

    def max_gap(self) -> float:
        times = [t for t, _ in self.events]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@pytest.fixture
def dep(tmp_path_factory: pytest.TempPathFactory,
        docker_client: docker.DockerClient) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("long-lived"), docker_client)
    try:
        yield d
    finally:
        d.cleanup()


def test_sse_clients_keep_their_stream_until_the_drain_timeout_then_end_cleanly(
        dep: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_DB_PASSWORD", "not-a-real-password")
    dep.edit(WEB, "drain_timeout: 10s", f"drain_timeout: {DRAIN_S}s", "short drain")
    code, out = dep.apply()
    assert code == 0, out
    wait_for(lambda: dep.get("/")[1].startswith("revision=v1"), 15, "v1 serving")

    clients = [SSEClient(dep.port) for _ in range(CLIENTS)]
    threads = [c.start() for c in clients]
    wait_for(lambda: all(len(c.events) >= 2 for c in clients), 10, "every client streaming")
    before = dep.haproxy.procs()

    t0 = time.monotonic()
    dep.edit(WEB, "revision: v1", "revision: v2", "web v2")
    code, out = dep.apply()
    applied = time.monotonic() - t0
    for t in threads:
        t.join(15)
    after = dep.haproxy.procs()

    held = sorted(round(c.ended_at - t0, 2) for c in clients)
    kept = [c for c in clients if c.clean and not c.error]
    print(f"\nSSE: {len(kept)}/{CLIENTS} clients kept their stream through the switch and "
          f"ended cleanly; held {held} s after the switch began (drain timeout {DRAIN_S}s); "
          f"events per client {[len(c.events) for c in clients]}; longest gap "
          f"{max(c.max_gap() for c in clients):.2f}s; apply {applied:.2f}s; reloads "
          f"{after.reloads - before.reloads}; workers {before.current_pids} -> "
          f"{after.current_pids}, old {after.old_pids}")
    assert code == 0, out
    assert "HAProxy reloaded" not in out and "reloaded HAProxy" not in out, out
    # no reload: the master counted none, the same worker serves, no old one lingers
    assert after.reloads == before.reloads, (before, after)
    assert (after.current_pids, after.old_pids) == (before.current_pids, ()), after
    for c in clients:
        assert not c.error and c.clean, f"a stream was cut: {c.error or 'no clean end'}"
        # held through the switch until the drain timeout, events flowing all along,
        # every one from the old release (the stream was never moved nor replayed)
        assert c.ended_at - t0 >= DRAIN_S, held
        assert c.max_gap() < MAX_GAP_S, c.max_gap()
        assert all(d.startswith("revision=v1") for _, d in c.events)
        assert len(c.events) >= DRAIN_S / EVENT_EVERY_S / 2
    assert dep.revisions("web") == ["v2"]
    assert dep.get("/")[1].startswith("revision=v2")
    fresh = SSEClient(dep.port)
    fresh.start()
    wait_for(lambda: len(fresh.events) >= 1, 5, "a new stream")
    assert fresh.events[0][1].startswith("revision=v2")
