"""RuntimeSocket and observe_haproxy against a real HAProxy in master-worker mode.

Needs the ``haproxy`` binary (2.6); without it these tests fail, they never skip.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from reconciler.lb.haproxy.observe import observe_haproxy
from reconciler.lb.haproxy.proc import MasterProcs, parse_show_proc
from reconciler.lb.haproxy.runtime import RuntimeSocket
from reconciler.model import ObservedLB, ServerStats

pytestmark = pytest.mark.integration

T = TypeVar("T")
DEADLINE_S = 15.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
    """Call ``probe`` until it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backend_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass(frozen=True)
class HAProxy:
    process: subprocess.Popen[bytes]
    config: Path
    admin: str
    master: str
    frontend_port: int

    def observe(self) -> ObservedLB:
        return observe_haproxy("lb1", self.admin, str(self.config))

    def proc(self) -> MasterProcs:
        return parse_show_proc(RuntimeSocket(self.master).command("show proc"))


CONFIG = """\
# reconciler-section global {digest_global}
# reconciler-section backend web {digest_web}
global
    stats socket {admin} mode 600 level admin expose-fd listeners

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    default-server inter 200ms fastinter 200ms downinter 200ms rise 1 fall 1

frontend http
    bind 127.0.0.1:{frontend_port}
    default_backend web

backend web
    balance roundrobin
    server up1 127.0.0.1:{backend_port} weight 10 check
    server down1 127.0.0.1:{closed_port} weight 20 check
"""


@pytest.fixture
def haproxy(tmp_path_factory: pytest.TempPathFactory, backend_port: int) -> Iterator[HAProxy]:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail(
            "the haproxy binary is not on PATH: install HAProxy 2.6 (Debian: apt-get "
            "install haproxy) to run the HAProxy integration tests",
            pytrace=False,
        )
    workdir = tmp_path_factory.mktemp("hap")  # short: unix socket paths max 107 bytes
    admin, master = str(workdir / "admin.sock"), str(workdir / "master.sock")
    frontend_port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(
        CONFIG.format(
            digest_global="a1" * 32,
            digest_web="b2" * 32,
            admin=admin,
            frontend_port=frontend_port,
            backend_port=backend_port,
            closed_port=free_port(),
        ),
        encoding="utf-8",
    )
    checked_config = subprocess.run(
        [binary, "-c", "-f", str(config)], check=False, capture_output=True, text=True
    )
    assert checked_config.returncode == 0, checked_config.stdout + checked_config.stderr
    log = (workdir / "haproxy.log").open("wb")
    process = subprocess.Popen(
        [binary, "-W", "-S", master, "-f", str(config), "-p", str(workdir / "haproxy.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        running = HAProxy(process, config, admin, master, frontend_port)

        def checked() -> bool | None:
            assert process.poll() is None, (workdir / "haproxy.log").read_text()
            states = {s.server: s.operational for s in running.observe().servers}
            return True if states == {"up1": "running", "down1": "stopped"} else None

        wait_for("haproxy to answer and its checks to settle", checked)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def stat_of(observed: ObservedLB, server: str) -> ServerStats:
    return next(s for s in observed.stats if s.server == server)


def test_observe_reads_servers_stats_and_config_header(haproxy: HAProxy) -> None:
    observed = haproxy.observe()
    assert observed.running
    assert observed.config_sections == (("backend web", "b2" * 32), ("global", "a1" * 32))
    assert [(s.backend, s.server, s.weight, s.operational, s.admin) for s in observed.servers] == [
        ("web", "up1", 10, "running", ()),
        ("web", "down1", 20, "stopped", ()),
    ]
    assert [(s.server, s.status, s.weight) for s in observed.stats] == [
        ("up1", "UP", 10),
        ("down1", "DOWN", 20),
    ]

    url = f"http://127.0.0.1:{haproxy.frontend_port}/"
    for _ in range(3):
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200

    def counted() -> ServerStats | None:
        s = stat_of(haproxy.observe(), "up1")
        return s if s.hrsp_2xx == 3 else None

    up1 = wait_for("three 2xx responses counted on up1", counted)
    assert (up1.total_sessions, up1.current_sessions) == (3, 0)
    assert stat_of(haproxy.observe(), "down1").total_sessions == 0


def test_weight_and_drain_through_the_socket(haproxy: HAProxy) -> None:
    cli = RuntimeSocket(haproxy.admin)
    assert cli.command("set weight web/up1 42").strip() == ""
    observed = haproxy.observe()
    up1 = next(s for s in observed.servers if s.server == "up1")
    assert (up1.weight, up1.operational, up1.admin) == (42, "running", ())
    assert stat_of(observed, "up1").weight == 42

    assert cli.command("set server web/up1 state drain").strip() == ""
    observed = haproxy.observe()
    assert observed.servers[0].admin == ("drain",)
    assert stat_of(observed, "up1").status == "DRAIN"

    assert cli.command("set server web/down1 state maint").strip() == ""
    assert haproxy.observe().servers[1].admin == ("maint",)
    # HAProxy's own complaint comes back as text, not as an exception
    assert "No such server" in cli.command("set weight web/nosuch 1")


def test_master_reload_changes_counter_and_worker(haproxy: HAProxy) -> None:
    before = haproxy.proc()
    assert before.master_pid == haproxy.process.pid
    assert (before.reloads, before.failed_reloads, len(before.current_pids)) == (0, 0, 1)
    RuntimeSocket(haproxy.admin).command("set weight web/up1 42")

    assert RuntimeSocket(haproxy.master).command("reload") == ""

    def reloaded() -> MasterProcs | None:
        try:
            after = haproxy.proc()
        except Exception:  # the master re-executes itself: its socket may refuse briefly
            return None
        done = after.reloads == before.reloads + 1 and not after.old_pids
        return after if done else None

    after = wait_for("the reload to finish and the old worker to leave", reloaded)
    assert after.master_pid == before.master_pid
    assert after.failed_reloads == 0
    assert len(after.current_pids) == 1
    assert set(after.current_pids).isdisjoint(before.current_pids)
    # the new worker took over the admin socket; the runtime weight was not in the config
    def new_worker() -> ObservedLB | None:
        observed = haproxy.observe()
        return observed if observed.running and observed.worker_pid in after.current_pids \
            else None

    observed = wait_for("the new worker to answer on the admin socket", new_worker)
    assert observed.servers[0].weight == 10
