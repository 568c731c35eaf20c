"""`reconcile haproxy COMMAND...` against a real embedded HAProxy: routed to the master
CLI or the stats socket, HAProxy's answer printed, a chained or multi-line command
refused, and exit 1 with a clear message once HAProxy is not running."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest
from click.testing import CliRunner
from deploy_support import Deployment

from reconciler import identity
from reconciler.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("haproxy-cmd"), docker.from_env())
    code, out = d.apply()
    assert code == 0, out
    yield d
    d.cleanup()


def run(dep: Deployment, *args: str) -> tuple[int, str, str]:
    """`reconcile haproxy ARGS --env E --state-dir S` (no repository needed)."""
    r = CliRunner().invoke(main, ["haproxy", *args, "--env", dep.env,
                                  "--state-dir", str(dep.state)])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def test_show_proc_goes_to_the_master(dep: Deployment) -> None:
    code, out, err = run(dep, "show", "proc")
    assert code == 0, err
    assert out.startswith("#<PID>") and " master " in out, out
    assert str(dep.haproxy.procs().master_pid) in out


def test_runtime_commands_go_to_the_stats_socket(dep: Deployment) -> None:
    code, out, err = run(dep, "show", "stat")
    assert code == 0, err
    assert out.startswith("# pxname,svname,") and "be_web" in out, out
    (web,) = dep.containers("web")
    server = identity.server_name("local", web.name)
    code, out, err = run(dep, "show", "servers", "state", "be_web")
    assert code == 0 and server in out, (out, err)
    # `show stat -1 4 -1`: words that look like options are HAProxy's
    code, out, err = run(dep, "show", "stat", "-1", "4", "-1")
    assert code == 0 and "be_web" in out and "FRONTEND" not in out, (out, err)
    # forced to the master, a runtime command is the master's business: its own answer
    code, out, err = run(dep, "--master", "show", "servers", "state")
    assert code == 0 and server not in out, out


def test_haproxy_errors_are_printed_and_chaining_is_refused(dep: Deployment) -> None:
    code, out, _ = run(dep, "show", "nonsense")
    assert code == 0 and "Unknown command" in out, out
    for words in (["show info; shutdown sessions server be_web/x"], ["show", "info\nshow stat"]):
        code, out, err = run(dep, *words)
        assert code == 1 and "refusing" in err and out == "", (out, err)


def test_exit_1_when_haproxy_is_not_running(dep: Deployment) -> None:
    dep.haproxy.stop()
    try:
        for words in (["show", "proc"], ["show", "stat"]):
            code, out, err = run(dep, *words)
            assert code == 1 and out == "", out
            assert "error: HAProxy is not running" in err, err
            assert "reconcile apply" in err, err
    finally:
        code, out = dep.apply()  # the next pass starts it again
        assert code == 0, out
