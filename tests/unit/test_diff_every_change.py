"""`reconcile diff` shows every change: all releases, canary policy, rollout, and markdown
that no user string can break (scratch git repositories, no Docker)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from repo_support import commit, edit, git, scratch_repo

from reconciler.cli import main

TWO_RELEASES = "releases:\n  - revision: v1\n    weight: 50\n  - revision: v2\n    weight: 50\n"


def diff(repo: Path, base: str, head: str, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["diff", base, head, "--repo", str(repo), *args])
    assert r.exit_code in (0, 2), r.stderr
    return r.exit_code, r.stdout


def two_release_repo(tmp_path: Path) -> tuple[Path, str]:
    repo = scratch_repo(tmp_path)
    edit(repo, "services/web.yaml", "releases:\n  - revision: v1\n    weight: 100\n", TWO_RELEASES)
    edit(repo, "environments/production.yaml", "  web:\n    replicas: 2",
         "  web:\n    replicas: 2\n    releases:\n      - {revision: v1, weight: 50}\n"
         "      - {revision: v2, weight: 50, env: {LOG_LEVEL: debug}}")
    return repo, commit(repo, "two releases")


def test_a_change_of_the_second_release_is_shown_and_fails_exit_code(tmp_path: Path) -> None:
    repo, base = two_release_repo(tmp_path)
    edit(repo, "environments/production.yaml",
         "{revision: v2, weight: 50, env: {LOG_LEVEL: debug}}",
         "{revision: v2, weight: 50, image: 'sample-app:v3', env: {LOG_LEVEL: info}}")
    head = commit(repo, "v2 runs v3, quieter")
    code, out = diff(repo, base, head, "--exit-code", "--env", "production")
    assert code == 2
    assert "    release v2: image sample-app:v2 -> sample-app:v3\n" in out
    assert "    release v2: env LOG_LEVEL changed (debug -> info)\n" in out
    assert "release v1" not in out  # v1 did not change


def test_canary_policy_rollout_and_lb_settings_are_shown(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    canary = ("  - revision: v2\n    weight: 0\n    canary:\n      steps:\n"
              "        - {weight: 10}\n        - {weight: 50}\n")
    edit(repo, "services/web.yaml", "    weight: 100\n", "    weight: 100\n" + canary)
    base = commit(repo, "canary")
    edit(repo, "services/web.yaml", "        - {weight: 10}\n        - {weight: 50}\n",
         "        - {weight: 5}\n        - {weight: 25, min_duration: 2m}\n        - {weight: 50}\n"
         "      analysis: {confidence: 0.95, interval: 30s}\n")
    edit(repo, "environments/staging.yaml", "name: staging\n",
         "name: staging\nrollout: {limit: 1, wait: 1m}\n")
    edit(repo, "loadbalancer.yaml", "client_timeout: 30s", "client_timeout: 1m")
    edit(repo, "loadbalancer.yaml", "      - path_prefix: /api", "      - path_prefix: /v2/api")
    head = commit(repo, "slower canary, batched staging")
    _, out = diff(repo, base, head)
    staging = out.split("environment staging:")[1]
    for line in ("release v2: canary.steps 10%,50% -> 5%,25% (hold 2m),50%",
                 "release v2: canary.confidence 0.99 -> 0.95",
                 "release v2: canary.interval 10s -> 30s",
                 "frontend http: client_timeout 30s -> 1m",
                 "frontend http, route 1: path_prefix /api -> /v2/api"):
        assert f"    {line}\n" in staging, line
    assert "  changed environment staging\n    rollout.limit: all -> 1\n    rollout.wait: 0s -> 1m\n" in staging
    assert "rollout" not in out.split("environment staging:")[0]  # production's is unchanged


def test_markdown_escapes_user_strings_so_no_row_is_hidden(tmp_path: Path) -> None:
    repo = scratch_repo(tmp_path)
    base = git(repo, "rev-parse", "HEAD")
    edit(repo, "services/web.yaml", "LOG_LEVEL: info",
         "LOG_LEVEL: 'tidy-up <!--'\n  NOTE: '*a* _b_ [c](d) `e` | f & g -->'")
    edit(repo, "services/api.yaml", "GREETING: hello from api", "GREETING: hello from the api")
    head = commit(repo, "comment-looking values")
    _, md = diff(repo, base, head, "-o", "markdown", "--env", "production")
    web = next(line for line in md.splitlines() if "service `web`" in line)
    assert "env LOG\\_LEVEL changed (info -&gt; tidy-up &lt;!--)" in web
    # (quoted: the value holds an arrow)
    assert ('env NOTE added ("\\*a\\* \\_b\\_ \\[c\\](d) \\`e\\` \\| f &amp; g --&gt;")'
            in web)
    assert web.endswith(" |") and web.count(" | ") == 2  # the cell is closed, not split
    # the row after web's is still there, and no raw active character leaked anywhere
    assert "| ✏️ changed | service `api` |" in md
    body = md.replace("<br>", "").replace("<sub>", "").replace("</sub>", "")
    assert "<" not in body and "-->" not in body
