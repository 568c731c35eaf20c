"""`reconcile diff` and `validate` on scratch git repositories (no Docker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from repo_support import commit, edit, git, scratch_repo

from reconciler.cli import main


@pytest.fixture
def two_commits(tmp_path: Path) -> tuple[Path, str, str]:
    repo = scratch_repo(tmp_path)
    base = git(repo, "rev-parse", "HEAD")
    # production: canary v2 at 10%, a changed and a secret-looking env value, a new secret,
    # more replicas; staging: web moves to a new host.
    edit(repo, "environments/production.yaml", "  web:\n    replicas: 2",
         "  web:\n    replicas: 3\n    env:\n      SESSION_SECRET: s3cr3t-value\n"
         "    releases:\n      - {revision: v1, weight: 90}\n      - {revision: v2, weight: 10}")
    edit(repo, "services/web.yaml", "LOG_LEVEL: info", "LOG_LEVEL: warn")
    edit(repo, "services/web.yaml", "labels:", "secrets: [API_TOKEN]\nlabels:")
    for env in ("production", "staging"):
        edit(repo, f"environments/{env}.yaml", "secrets:\n",
             "secrets:\n  API_TOKEN:\n    env: API_TOKEN\n")
    edit(repo, "inventory.yaml", "    connection: local",
         "    connection: local\n  - name: local2\n    address: 127.0.0.2\n    roles: [app]\n"
         "    connection: {ssh: {user: deploy}}")
    edit(repo, "environments/staging.yaml", "    replicas: 1", "    replicas: 1\n    hosts: [local2]")
    head = commit(repo, "canary web v2")
    return repo, base, head


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_diff_text(two_commits: tuple[Path, str, str]) -> None:
    repo, base, head = two_commits
    code, out, err = run("diff", base, head, "--repo", str(repo))
    assert code == 0, err
    assert f"Desired state {base[:7]} -> {head[:7]}" in out
    prod = out.split("environment production:")[1].split("environment staging:")[0]
    for line in ("changed service web", "release v2 added at weight 10%",
                 "release v1: weight 100% -> 90%", "replicas: 2 -> 3",
                 "release v1: env LOG_LEVEL changed (info -> warn)",
                 "release v1: env SESSION_SECRET added (******)",
                 "release v1: secret API_TOKEN added (source env, location API_TOKEN)",
                 # the new release against the one it runs next to: only its image differs
                 "release v2 (vs v1): image sample-app:v1 -> sample-app:v2"):
        assert line in prod, line
    assert "release v2 (vs v1): env" not in prod
    staging = out.split("environment staging:")[1]
    assert "host local2 added" in staging and "host local removed" in staging
    assert "added host local2\n    address: 127.0.0.2\n    roles: app\n    ssh.user: deploy" in staging
    assert "s3cr3t-value" not in out
    assert "api" not in out  # unchanged services are not listed


def test_diff_json_and_markdown(two_commits: tuple[Path, str, str]) -> None:
    repo, base, head = two_commits
    code, out, _ = run("diff", base, head, "--repo", str(repo), "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["base"] == base[:7] and doc["head"] == head[:7]
    envs = {e["environment"]: e["changes"] for e in doc["environments"]}
    assert set(envs) == {"production", "staging"}
    (web,) = envs["production"]
    assert web["kind"] == "service" and web["name"] == "web" and web["status"] == "changed"
    assert "release v1: weight 100% -> 90%" in web["changes"]
    assert "s3cr3t-value" not in out
    code, md, _ = run("diff", base, head, "--repo", str(repo), "--output", "markdown")
    assert code == 0
    assert md.startswith(f"### reconcile diff `{base[:7]}` → `{head[:7]}`")
    assert "#### Environment `production`" in md and "| ✏️ changed | service `web` |" in md
    assert "release v2 added at weight 10%<br>" in md
    assert "s3cr3t-value" not in md and "SESSION\\_SECRET added (\\*\\*\\*\\*\\*\\*)" in md


def test_diff_exit_code_and_no_change(two_commits: tuple[Path, str, str]) -> None:
    repo, base, head = two_commits
    assert run("diff", base, head, "--repo", str(repo), "--exit-code")[0] == 2
    code, out, _ = run("diff", head, head, "--repo", str(repo), "--exit-code", "-o", "markdown")
    assert code == 0 and "No change to the desired state" in out


def test_diff_of_a_broken_commit_fails_with_the_problem(two_commits: tuple[Path, str, str]) -> None:
    repo, base, _ = two_commits
    edit(repo, "services/api.yaml", "weight: 100", "weight: 50")
    bad = commit(repo, "broken weights")
    code, _, err = run("diff", base, bad, "--repo", str(repo))
    assert code == 1
    assert "services/api.yaml:8:3: releases:" in err and "add up to 50" in err


def test_validate_reads_the_commit_not_the_working_tree(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    edit(repo, "services/web.yaml", "weight: 100", "weight: 7")  # not committed
    code, out, err = run("validate", "--repo", str(repo))
    assert code == 0, err
    assert "environments: production, staging" in out
    assert "uncommitted changes" in err
    code, _, err = run("validate", "--repo", str(repo), "--worktree")
    assert code == 1 and "add up to 7" in err


def test_unknown_revision_and_environment_are_clear_errors(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    code, _, err = run("diff", "HEAD", "nosuchbranch", "--repo", str(repo))
    assert code == 1 and "unknown revision 'nosuchbranch'" in err
    code, _, err = run("plan", "--repo", str(repo), "--env", "nope")
    assert code == 1 and "unknown environment 'nope' (known: production, staging)" in err
    code, _, err = run("plan", "--repo", str(repo))
    assert code == 1 and "choose one with --env" in err
    code, _, err = run("plan", "--repo", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in err


def test_help_lists_the_commands() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for cmd in ("diff", "plan", "validate", "--dry-run", "--env"):
        assert cmd in out


def test_remote_url_with_branch_is_mirrored_and_fetched(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = scratch_repo(tmp_path)
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    git(work, "remote", "add", "origin", str(bare))
    url = f"file://{bare}"
    code, out, err = run("validate", "--repo", url, "--branch", "main")
    assert code == 0, err
    first = git(work, "rev-parse", "--short=7", "HEAD")
    assert f"commit {first}" in out
    edit(work, "services/web.yaml", "weight: 100", "weight: 99")
    head = commit(work, "break weights")
    git(work, "push", "-q", "origin", "main")
    code, _, err = run("validate", "--repo", url, "--branch", "main")
    assert code == 1 and "add up to 99" in err  # the new head was fetched
    code, out, _ = run("diff", first, head, "--repo", url)
    assert code == 1  # the head is invalid: diff refuses it with the problem
    code, _, err = run("validate", "--repo", f"file://{tmp_path}/nope.git")
    assert code == 1 and "cannot fetch" in err


def test_history_database_of_an_earlier_version_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    from reconciler.store import Store

    db = sqlite3.connect(tmp_path / "history.sqlite")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, environment TEXT NOT NULL, "
               "commit_id TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL, "
               "status TEXT NOT NULL, plan_json TEXT NOT NULL, summary TEXT NOT NULL "
               "DEFAULT '')")
    db.commit()
    db.close()
    store = Store(tmp_path / "history.sqlite")
    run = store.start_run("prod", "c0ffee", "{}")
    store.finish_run(run, "failed", {"web": "unhealthy"}, "1/2 steps ok")
    assert store.failures_of(run) == {"web": "unhealthy"}
    store.close()
