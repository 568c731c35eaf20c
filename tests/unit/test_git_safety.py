"""Pure checks of the git hardening: forced settings and the HAProxy workers' identity.

The attacks themselves run against the real git and HAProxy in
tests/integration/test_git_trust.py and test_haproxy_privileges.py; here the decisions
are checked for hosts the tests cannot reach (an SSH LB host without a haproxy user, a
non-root user holding the Docker group), with a scripted transport.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pytest

from reconciler.desired.gitsafe import forced, git_env
from reconciler.lb.haproxy.privileges import PrivilegeError, RunAs, detect
from reconciler.transport.base import Completed


def test_forced_settings_win_over_earlier_command_line_config() -> None:
    env = git_env([("gpg.ssh.allowedSignersFile", "/etc/signers")],
                  base={"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.fsmonitor",
                        "GIT_CONFIG_VALUE_0": "/evil"})
    n = int(env["GIT_CONFIG_COUNT"])
    pairs = [(env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"]) for i in range(n)]
    assert pairs[0] == ("core.fsmonitor", "/evil")  # the caller's entry is kept, then
    last = dict(pairs)  # later entries win in git, as in this dict
    assert last["core.fsmonitor"] == "false"
    assert last["core.hooksPath"] == "/dev/null"
    assert last["gpg.ssh.allowedSignersFile"] == "/etc/signers"  # the operator's, after ours
    for key in ("gpg.program", "gpg.openpgp.program", "gpg.ssh.program", "gpg.x509.program"):
        assert last[key].startswith("/"), (key, last[key])  # absolute: PATH is not asked
    assert {k for k, _ in forced()} >= {"core.fsmonitor", "core.hooksPath", "gpg.program"}


class Host:
    """A scripted host: ``answers`` maps an argv tuple to (returncode, stdout). ``detect``
    sends one ``sh -c`` script: it runs here, in ``sh``, with every command it calls
    (``id``, ``install``, ``ls``, ``stat``) a stub that answers from the table and notes
    its argv in ``ran``."""

    name = "lb1"

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]]) -> None:
        self.answers = answers
        self.ran: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], timeout: float = 60.0) -> Completed:
        assert list(argv[:2]) == ["sh", "-c"], argv  # one constant script, arguments apart
        with tempfile.TemporaryDirectory() as tmp:
            stubs = Path(tmp)
            table = {" ".join(k): v for k, v in self.answers.items()}
            (stubs / "table.json").write_text(json.dumps(table))
            for name in ("id", "install", "ls", "stat"):
                stub = stubs / name
                stub.write_text(STUB.format(python=sys.executable, dir=tmp, name=name))
                stub.chmod(0o755)
            done = subprocess.run([shutil.which("sh") or "/bin/sh", *argv[1:]], capture_output=True, text=True,
                                  env={"PATH": tmp}, timeout=timeout, check=False)
            ran = (stubs / "ran").read_text() if (stubs / "ran").exists() else ""
        self.ran += [tuple(json.loads(line)) for line in ran.splitlines()]
        return Completed(tuple(argv), done.returncode, done.stdout, done.stderr)


STUB = """#!{python}
import json, sys
argv = ["{name}", *sys.argv[1:]]
with open("{dir}/ran", "a") as f:
    f.write(json.dumps(argv) + "\\n")
code, out = json.load(open("{dir}/table.json")).get(" ".join(argv), (1, ""))
sys.stdout.write(out)
sys.stderr.write("" if code == 0 else "no such thing\\n")
sys.exit(code)
"""


ROOT = PurePosixPath("/var/lib/reconciler/production/haproxy")
EMPTY = str(ROOT / "empty")
MKDIR = ("install", "-d", "-m", "0555", "-o", "0", "-g", "0", EMPTY)


def test_root_on_an_lb_host_runs_the_workers_as_haproxy_in_an_empty_chroot() -> None:
    host = Host({("id", "-u"): (0, "0\n"), ("id", "-gn", "haproxy"): (0, "haproxy\n"),
                 MKDIR: (0, ""), ("ls", "-A", EMPTY): (0, "")})
    found = detect(host, ROOT)  # type: ignore[arg-type]
    assert found == RunAs("haproxy", "haproxy", EMPTY)
    assert found.global_lines() == ["    user haproxy", "    group haproxy",
                                    f"    chroot {EMPTY}"]
    assert MKDIR in host.ran


def test_without_a_haproxy_user_nobody_is_used_and_without_either_it_is_refused() -> None:
    host = Host({("id", "-u"): (0, "0\n"), ("id", "-gn", "nobody"): (0, "nogroup\n"),
                 MKDIR: (0, ""), ("ls", "-A", EMPTY): (0, "")})
    assert detect(host, ROOT) == RunAs("nobody", "nogroup", EMPTY)  # type: ignore[arg-type]
    bare = Host({("id", "-u"): (0, "0\n")})
    with pytest.raises(PrivilegeError, match="neither user haproxy nor nobody"):
        detect(bare, ROOT)  # type: ignore[arg-type]


def test_a_chroot_folder_that_is_not_empty_is_refused() -> None:
    host = Host({("id", "-u"): (0, "0\n"), ("id", "-gn", "haproxy"): (0, "haproxy\n"),
                 MKDIR: (0, ""), ("ls", "-A", EMPTY): (0, "bin\netc\n")})
    with pytest.raises(PrivilegeError, match="is not empty"):
        detect(host, ROOT)  # type: ignore[arg-type]


def test_not_root_adds_nothing_unless_it_holds_the_docker_group() -> None:
    plain = Host({("id", "-u"): (0, "1000\n"), ("id", "-G"): (0, "1000 27\n"),
                  ("stat", "-L", "-c", "%g", "/var/run/docker.sock"): (0, "999\n")})
    assert detect(plain, ROOT) is None  # type: ignore[arg-type]
    docker_group = Host({("id", "-u"): (0, "10001\n"), ("id", "-G"): (0, "10001 999\n"),
                         ("stat", "-L", "-c", "%g", "/var/run/docker.sock"): (0, "999\n")})
    with pytest.raises(PrivilegeError, match="holds group 999"):
        detect(docker_group, ROOT)  # type: ignore[arg-type]
    unknown = Host({})
    with pytest.raises(PrivilegeError, match="cannot tell"):
        detect(unknown, ROOT)  # type: ignore[arg-type]
