"""HAProxy parsers (reconciler.lb.haproxy: stats, proc, installed) against outputs
recorded from HAProxy 2.6; the runtime socket client and observe_haproxy.

The fixtures and the sequence that produced them are described in
tests/fixtures/haproxy/README.md.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ObserveError
from reconciler.lb.haproxy.control import HAProxy
from reconciler.lb.haproxy.installed import parse_config_header, parse_config_servers
from reconciler.lb.haproxy.observe import observe_haproxy
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.lb.haproxy.proc import MasterProcs, WorkerProc, parse_show_proc
from reconciler.lb.haproxy.runtime import RuntimeSocket, SocketUnavailable
from reconciler.lb.haproxy.stats import admin_names, parse_servers_state, parse_stat_csv
from reconciler.model import ObservedLB, ServerState, ServerStats

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "haproxy"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def srv(backend: str, server: str, port: int, weight: int, op: str, *admin: str) -> ServerState:
    return ServerState(backend, server, "127.0.0.1", port, weight, op, admin)  # type: ignore[arg-type]


WEB_STATE = (
    srv("web", "web1", 18081, 10, "running"),
    srv("web", "web2", 18081, 20, "running", "drain"),
    srv("web", "web3", 18089, 5, "stopped"),
    srv("web", "web4", 18081, 0, "running"),  # set weight 0 (iweight stays 40)
)
API_STATE = (
    srv("api", "api1", 18081, 50, "running"),
    srv("api", "api2", 18081, 30, "stopped", "maint"),
    srv("api", "api3", 18090, 1, "running"),  # no check: never leaves "running"
    srv("api", "api4", 18081, 7, "stopped", "maint"),  # "disabled" in config: admin 5
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("show_servers_state.txt", WEB_STATE + API_STATE),
        ("show_servers_state_web.txt", WEB_STATE),
        # admin states and weights restored from the server-state-file on reload
        ("show_servers_state_after_reload.txt", WEB_STATE + API_STATE),
    ],
)
def test_servers_state_fixtures(name: str, expected: tuple[ServerState, ...]) -> None:
    assert parse_servers_state(fixture(name)) == expected


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (0x00, ()),
        (0x01, ("maint",)),  # FMAINT: set server ... state maint
        (0x02, ("maint",)),  # IMAINT: inherited from a tracked server
        (0x04, ()),  # CMAINT alone: "disabled" in config, then set ready at runtime
        (0x05, ("maint",)),  # "disabled" in config
        (0x08, ("drain",)),  # FDRAIN: set server ... state drain
        (0x10, ("drain",)),  # IDRAIN
        (0x0C, ("drain",)),  # CMAINT|FDRAIN: "disabled" in config, then set drain
        (0x20, ("maint",)),  # RMAINT: address resolution failed
        (0x40, ()),  # HMAINT: FQDN set from the CLI, not an admin state
        (0x12, ("maint", "drain")),
    ],
)
def test_admin_names(flags: int, names: tuple[str, ...]) -> None:
    assert admin_names(flags) == names


def stats(
    backend: str, server: str, status: str, weight: int, stot: int, **counters: Any
) -> ServerStats:
    return ServerStats(backend, server, status, weight, 0, stot, **counters)


TIMES = {"rtime_ms": 2, "ttime_ms": 2}
STATS_BEFORE_RELOAD = (
    stats("web", "web1", "UP", 10, 10, hrsp_2xx=10, **TIMES, check_status="L4OK"),
    stats("web", "web2", "DRAIN", 20, 8, hrsp_2xx=7, hrsp_4xx=1, **TIMES, check_status="L4OK"),
    stats("web", "web3", "DOWN", 5, 0, check_status="L4CON"),
    stats("web", "web4", "UP", 0, 15, hrsp_2xx=13, hrsp_4xx=2, **TIMES, check_status="L4OK"),
    stats("api", "api1", "UP", 50, 114, hrsp_4xx=114, **TIMES, check_status="L7OK"),
    stats("api", "api2", "MAINT", 30, 3, hrsp_4xx=3, **TIMES),
    # closed port: 2 x 503 after 3 retries each
    stats("api", "api3", "no check", 1, 8, econ=2, wretr=6),
    stats("api", "api4", "MAINT", 7, 0),
)
STATS_AFTER_RELOAD = tuple(  # counters reset by the reload
    stats(s.backend, s.server, s.status, s.weight, 0, check_status=s.check_status)
    for s in STATS_BEFORE_RELOAD
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("show_stat.txt", STATS_BEFORE_RELOAD),
        ("show_stat_after_reload.txt", STATS_AFTER_RELOAD),
    ],
)
def test_stat_csv_fixtures(name: str, expected: tuple[ServerStats, ...]) -> None:
    assert parse_stat_csv(fixture(name)) == expected


def current(pid: int, reloads: int = 0) -> WorkerProc:
    return WorkerProc(pid, reloads, "current")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("show_proc_before_reload.txt", MasterProcs(3716, 0, 0, (current(3735),))),
        (
            "show_proc_after_reload.txt",
            MasterProcs(3716, 1, 0, (current(10556), WorkerProc(3735, 1, "old"))),
        ),
        ("show_proc_after_old_worker_exit.txt", MasterProcs(3716, 1, 0, (current(10556),))),
        # a failed reload counts, but the worker stays (it only "survived" one more)
        ("show_proc_after_failed_reload.txt", MasterProcs(3716, 2, 1, (current(10556, 1),))),
        ("show_proc_after_recovery_reload.txt", MasterProcs(3716, 3, 0, (current(11243),))),
    ],
)
def test_show_proc_fixtures(name: str, expected: MasterProcs) -> None:
    assert parse_show_proc(fixture(name)) == expected


def test_reload_is_seen_by_counter_and_pids() -> None:
    before = parse_show_proc(fixture("show_proc_before_reload.txt"))
    after = parse_show_proc(fixture("show_proc_after_reload.txt"))
    failed = parse_show_proc(fixture("show_proc_after_failed_reload.txt"))
    recovered = parse_show_proc(fixture("show_proc_after_recovery_reload.txt"))
    assert after.reloads - before.reloads == 1
    assert before.current_pids == (3735,)
    assert after.current_pids == (10556,)
    assert after.old_pids == (3735,)
    # the counter alone would mistake a failed reload for a reload
    assert failed.reloads > after.reloads
    assert failed.current_pids == after.current_pids
    assert recovered.current_pids == (11243,)


def test_config_header_of_fixture() -> None:
    assert parse_config_header(fixture("haproxy.cfg")) == (
        ("backend api", "2" * 64),
        ("global", "1" * 64),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("global\n    maxconn 10\n", ()),
        (
            "# generated\n# reconciler-section frontend http  abc1\n\n"
            "# reconciler-section backend web 3f2a\n#reconciler-section global x\n",
            (("backend web", "3f2a"), ("frontend http", "abc1")),
        ),
        # names may hold spaces; runs of blanks collapse to one
        ("# reconciler-section backend  my   web d1\n", (("backend my web", "d1"),)),
        # only the top comment block is the header
        ("global\n# reconciler-section backend web 3f2a\n", ()),
    ],
)
def test_config_header(text: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_config_header(text) == expected


GOOD_STATE = fixture("show_servers_state_web.txt")
GOOD_STAT = fixture("show_stat.txt")
GOOD_PROC = fixture("show_proc_before_reload.txt")


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (parse_servers_state, "", "empty output"),
        (parse_servers_state, "Can't find backend.\n", "line 1"),
        (parse_servers_state, "1\n", "line 2"),
        (parse_servers_state, "2\n" + GOOD_STATE.split("\n", 1)[1], "line 1"),
        (parse_servers_state, GOOD_STATE.replace("web3 127.0.0.1 0", "web3 127.0.0.1"), "line 5"),
        (parse_servers_state, GOOD_STATE.replace("web2 127.0.0.1 2", "web2 127.0.0.1 7"), "line 4"),
        (parse_servers_state, GOOD_STATE.replace("2 8 20", "2 128 20"), "line 4"),
        (parse_servers_state, GOOD_STATE.replace(" 18081 ", " x "), "line 3"),
        (parse_stat_csv, "", "empty output"),
        (parse_stat_csv, "Unknown command. Please enter one of the following...\n", "line 1"),
        (parse_stat_csv, "# pxname,qcur,qmax\n", "missing"),
        (parse_stat_csv, GOOD_STAT.replace("web,web3,", "web,web3,1,"), "line 5"),
        (parse_stat_csv, GOOD_STAT.replace(",DOWN,5,", ",DOWN,five,"), "line 5"),
        (parse_show_proc, "", "line 1"),
        (parse_show_proc, "Unknown command.\n", "line 1"),
        (parse_show_proc, GOOD_PROC.replace(" master ", " mister "), "line 2"),
        (parse_show_proc, GOOD_PROC.replace("# workers", "# zombies"), "line 3"),
        (parse_show_proc, GOOD_PROC.replace("3735 ", "x3735 "), "line 4"),
        (parse_show_proc, GOOD_PROC.split("# workers")[0] + "3735 worker 0 0d 2.6\n", "line 3"),
        (parse_config_header, "# reconciler-section global\n", "line 1"),
        (parse_config_header, "# reconciler-section abc\n", "line 1"),
        (parse_config_header, "#x\n# reconciler-section a b\n# reconciler-section a c\n", "line 3"),
    ],
)
def test_garbled_input_raises(parser: object, text: str, message: str) -> None:
    assert callable(parser)
    with pytest.raises(ValueError, match=message):
        parser(text)


@pytest.mark.parametrize(
    "cmd", ["", "  ", "show stat\nshutdown frontend http", "a;b", "x\r", "x\0"]
)
def test_runtime_socket_rejects_unsafe_commands(cmd: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        RuntimeSocket("/nonexistent.sock").command(cmd)


def test_runtime_socket_names_path_when_absent(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.sock")
    with pytest.raises(SocketUnavailable, match=re.escape(path)):
        RuntimeSocket(path).command("show info")


def test_runtime_socket_times_out_naming_path(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)  # accepts into the backlog, never answers
        with pytest.raises(ObserveError, match=re.escape(path)) as raised:
            RuntimeSocket(path, timeout=0.2).command("show info")
    assert not isinstance(raised.value, SocketUnavailable)


def test_observe_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("# reconciler-section global ab12\nglobal\n", encoding="utf-8")
    assert observe_haproxy("lb1", str(tmp_path / "none.sock"), None) == ObservedLB(
        host="lb1", running=False
    )
    assert observe_haproxy("lb1", str(tmp_path / "none.sock"), str(cfg)) == ObservedLB(
        host="lb1", running=False, config_sections=(("global", "ab12"),)
    )
    refused = tmp_path / "stale.sock"  # a socket file left behind by a dead process
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(refused))
    observed = observe_haproxy("lb1", str(refused), str(tmp_path / "missing.cfg"))
    assert observed == ObservedLB(host="lb1", running=False)


def test_config_servers_are_read_back_from_the_rendered_config() -> None:
    from pathlib import Path as P

    from support import converge, desired, service

    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.lb.haproxy.render import render
    from reconciler.lb.port import ServerEntry

    d = desired(service("web"), service("api", replicas=1))
    world = converge(d)
    servers = [ServerEntry(s.backend, s.server, s.address, s.port, s.weight)
               for s in world.lbs[0].servers]
    text = render(d, d.loadbalancers[0], servers, HAProxyPaths.embedded(P("/x"), "prod"))
    assert parse_config_servers(text) == tuple(sorted(
        (s.backend, s.name, s.address, s.port, s.weight) for s in servers))
    assert len(parse_config_servers(text)) == 3


def _stat(status: str, check: str) -> ServerStats:
    return ServerStats(backend="be_web", server="local.c0", status=status, weight=100,
                       current_sessions=0, total_sessions=0, check_status=check)


@pytest.mark.parametrize("seen, not_up", [
    # HAProxy shows a server it has just loaded UP before its first check (INI): wait
    ([("UP 1/3", "INI"), ("UP", "L7OK")], []),
    ([("UP 1/3", "INI"), ("DOWN", "L7STS")], ["be_web/local.c0"]),
    ([("UP 1/3", "INI")], ["be_web/local.c0"]),  # never checked within the timeout
    ([("UP", "")], []),  # a server without checks
])
def test_wait_up_counts_only_up_after_a_completed_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen: list[tuple[str, str]],
        not_up: list[str]) -> None:
    lb = HAProxy(HAProxyPaths.embedded(tmp_path, "t"))
    answers = [(_stat(status, check),) for status, check in seen]
    monkeypatch.setattr(lb, "server_stats", lambda: answers.pop(0) if len(answers) > 1
                        else answers[0])
    assert lb.wait_up([("be_web", "local.c0")], timeout=0.5) == not_up
