"""The traffic helper of the fault tests counts every failure a client can see: a
truncated body or a garbled status line is a failed request, never the silent end of
the load generator."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from fault_support import Traffic

RESPONSES = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nrevision=1",
    # http.client.IncompleteRead: the body ends before Content-Length
    "truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nrevision",
    # http.client.BadStatusLine
    "garbled": b"HTTX/1.1 200 OK\r\n\r\n",
}


@pytest.fixture
def server() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP server on loopback answering each connection with the next of a cycle
    of canned responses (set the cycle through the yielded list)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.02)  # how soon the server sees it should stop
    cycle: list[bytes] = [RESPONSES["ok"]]
    stop = threading.Event()

    def serve() -> None:
        n = 0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(cycle[n % len(cycle)])
                n += 1

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/", cycle
    stop.set()
    t.join(5)
    listener.close()


def _run(url: str, minimum: int) -> Traffic:
    with Traffic(url, minimum=minimum) as traffic:
        pass  # __exit__ waits until ``minimum`` requests were made (deadline 10 s)
    return traffic


def test_clean_traffic_is_served(server: tuple[str, list[bytes]]) -> None:
    url, _ = server
    traffic = _run(url, 20)
    traffic.assert_served()
    assert traffic.revisions == {"revision=1": len(traffic.results)}


@pytest.mark.parametrize("bad", ["truncated", "garbled"])
def test_every_broken_answer_is_a_failure_and_the_load_goes_on(
        server: tuple[str, list[bytes]], bad: str) -> None:
    url, cycle = server
    cycle[:] = [RESPONSES["ok"], RESPONSES[bad]]
    traffic = _run(url, 20)
    assert traffic.died is None and traffic.alive_at_end
    assert len(traffic.results) >= 20  # the thread went on after the first broken answer
    assert 8 <= len(traffic.failures) <= len(traffic.results) - 8, traffic.results
    with pytest.raises(AssertionError, match="requests through HAProxy failed"):
        traffic.assert_served()
