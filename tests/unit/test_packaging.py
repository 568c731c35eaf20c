"""What ships beside the package: the pre-commit hook manifest and the systemd unit.

The hook is run the way pre-commit runs it (its entry and args), through the CLI, on a copy
of sample-repo and on a broken copy. The unit is read as INI; its ExecStart must be a
`reconcile watch` command line that the CLI accepts, whenever that command exists.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / ".pre-commit-hooks.yaml"
UNIT = ROOT / "docs" / "systemd" / "reconcile-watch.service"
UNIT_ENV = ROOT / "docs" / "systemd" / "reconcile-watch.env"

# Keys pre-commit accepts in a hook manifest (https://pre-commit.com/#new-hooks); it only
# warns about others, so a misspelt key would silently do nothing.
MANIFEST_KEYS = {
    "id", "name", "entry", "language", "alias", "files", "exclude", "types", "types_or",
    "exclude_types", "additional_dependencies", "args", "always_run", "fail_fast",
    "pass_filenames", "description", "language_version", "log_file", "require_serial",
    "stages", "verbose", "minimum_pre_commit_version",
}  # fmt: skip

# What the unit promises (docs/systemd/reconcile-watch.service).
WATCH_FLAGS = {
    "--repo": None,
    "--branch": "main",
    "--env": "production",
    "--state-dir": "/var/lib/reconciler",
    "--metrics-addr": "127.0.0.1:9108",
    "--log-format": "json",
}


# ------------------------------------------------------------------ pre-commit hook


def load_hook() -> dict[str, object]:
    hooks = yaml.safe_load(HOOKS.read_text())
    assert isinstance(hooks, list) and len(hooks) == 1, "one hook, as a YAML list"
    hook = hooks[0]
    assert isinstance(hook, dict)
    return hook


def hook_argv(hook: dict[str, object], repo: Path | None) -> list[str]:
    """The arguments the hook passes to `reconcile`, with --repo pointing at ``repo``."""
    entry = shlex.split(str(hook["entry"]))
    assert entry[0] == "reconcile"
    args = entry[1:] + [str(a) for a in hook.get("args", [])]  # type: ignore[attr-defined]
    if repo is not None:
        i = args.index("--repo")
        args[i + 1] = str(repo)
    return args


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A copy of sample-repo's manifests, not a git repository (the hook reads the disk)."""
    dest = tmp_path / "manifests"
    shutil.copytree(ROOT / "sample-repo", dest, ignore=shutil.ignore_patterns("app"))
    return dest


def break_replicas(repo: Path) -> int:
    """Misspell `replicas` in services/web.yaml; return the line number of the error."""
    path = repo / "services" / "web.yaml"
    lines = path.read_text().splitlines(keepends=True)
    line = next(i for i, ln in enumerate(lines) if ln.startswith("replicas:"))
    lines[line] = lines[line].replace("replicas:", "replica:")
    path.write_text("".join(lines))
    return line + 1


def test_hook_manifest_has_the_fields_pre_commit_needs() -> None:
    hook = load_hook()
    assert {"id", "name", "entry", "language"} <= hook.keys()
    assert hook.keys() <= MANIFEST_KEYS, hook.keys() - MANIFEST_KEYS
    assert hook["id"] == "reconcile-validate"
    assert hook["language"] == "python"
    # Manifests are valid only together: the whole repository, never a list of files.
    assert hook["pass_filenames"] is False
    assert isinstance(hook["args"], list)
    assert all(isinstance(a, str) for a in hook["args"])
    argv = hook_argv(hook, None)
    assert argv[0] == "validate"
    assert "--worktree" in argv
    assert argv[argv.index("--repo") + 1] == "."
    files = re.compile(str(hook["files"]))  # pre-commit uses re.search
    for name in ("services/web.yaml", "deploy/environments/production.yml", "inventory.yaml"):
        assert files.search(name), name
    for name in ("README.md", "app/server.c", "yaml.txt"):
        assert not files.search(name), name


def test_hook_entry_is_the_packaged_console_script() -> None:
    """language: python installs the repository with pip; `entry` must be its script."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entry = shlex.split(str(load_hook()["entry"]))[0]
    assert project["scripts"][entry] == "reconciler.cli:entry"


def test_hook_passes_on_sample_repo(manifests: Path) -> None:
    r = CliRunner().invoke(main, hook_argv(load_hook(), manifests))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("ok: 6 file(s) valid"), r.stdout
    assert "environments: production, staging" in r.stdout


def test_hook_as_pre_commit_runs_it_from_the_repository_root(
    manifests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pre-commit runs hooks in the repository root, with the manifest's args as written."""
    monkeypatch.chdir(manifests)
    r = CliRunner().invoke(main, hook_argv(load_hook(), None))
    assert r.exit_code == 0, r.output
    break_replicas(manifests)
    assert CliRunner().invoke(main, hook_argv(load_hook(), None)).exit_code == 1


def test_hook_fails_on_a_broken_copy_with_file_and_line(manifests: Path) -> None:
    line = break_replicas(manifests)
    weight = manifests / "services" / "api.yaml"
    weight.write_text(weight.read_text().replace("weight: 100", "weight: lots", 1))
    r = CliRunner().invoke(main, hook_argv(load_hook(), manifests))
    assert r.exit_code == 1
    assert r.stdout == ""
    assert f"error: services/web.yaml:{line}:1: replica: unknown field 'replica'" in r.stderr
    assert re.search(r"error: services/api\.yaml:\d+:\d+: releases\[0\]\.weight: 'lots'", r.stderr)
    assert "2 problem(s) found; nothing was changed." in r.stderr


# ------------------------------------------------------------------ systemd unit


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(UNIT.read_text())
    return unit


def exec_start() -> list[str]:
    value = read_unit()["Service"]["ExecStart"]
    # configparser keeps the indented continuation lines; systemd joins on the backslashes.
    return shlex.split(value.replace("\\\n", " "))


def test_unit_has_the_expected_sections_and_keys() -> None:
    unit = read_unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    assert "docker.service" in unit["Unit"]["After"].split()
    svc = unit["Service"]
    assert svc["Restart"] == "on-failure"
    assert svc["StateDirectory"] == "reconciler"
    assert svc["EnvironmentFile"].lstrip("-").startswith("/etc/reconciler/")
    # SIGTERM reaches the reconciler only, never the embedded HAProxy it started.
    assert svc["KillMode"] == "process"
    assert svc.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert svc["User"] == "root"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["CapabilityBoundingSet"].split() == ["CAP_NET_BIND_SERVICE"]
    assert "AF_UNIX" in svc["RestrictAddressFamilies"].split()  # the Docker socket
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_exec_start_is_reconcile_watch_with_its_flags() -> None:
    argv = exec_start()
    assert argv[0].endswith("/reconcile")
    assert argv[1] == "watch"
    command = " ".join(argv)
    for flag, value in WATCH_FLAGS.items():
        assert flag in argv[2:], flag
        given = argv[argv.index(flag) + 1]
        assert not given.startswith("-"), f"{flag} has no value"
        if value is not None:
            assert given == value, (flag, given)
        assert f"{flag} {given}" in command
    # The state directory systemd creates is the one the reconciler is told to use.
    assert (
        argv[argv.index("--state-dir") + 1]
        == "/var/lib/" + read_unit()["Service"]["StateDirectory"]
    )


def test_unit_exec_start_flags_are_accepted_by_reconcile_watch() -> None:
    """Every flag of the unit's ExecStart line is one `reconcile watch --help` lists, and
    the whole command line parses."""
    argv = exec_start()
    assert argv[1] == "watch", argv
    help_run = CliRunner().invoke(main, ["watch", "--help"])
    assert help_run.exit_code == 0, help_run.output
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", help_run.output), flag
    assert "json" in help_run.output  # --log-format json
    # Parse (and type-check) the whole command line without running it.
    watch = main.commands["watch"]
    ctx = watch.make_context("watch", argv[2:])
    assert ctx.params["log_format"] == "json"
    assert ctx.params["metrics_addr"] == "127.0.0.1:9108"


def test_unit_env_example_is_key_value_lines() -> None:
    for line in UNIT_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S.*", line), line
