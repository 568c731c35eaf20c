"""The status page in a real browser (Debian's headless Chromium, tests/browser_support.py).

- During a canary under load (`hey`), `reconcile watch --ui-addr` serves the page of a
  real deployment (Docker, HAProxy): services, containers of both revisions, the
  canary's state and evidence chart, the passes from history, and the charts per
  revision are in the DOM; the browser console has no error (a CSP violation is one).
  The charts and the per-action table show request records of both revisions. The
  page is saved as docs/status-page.png. `reconcile ui` serves the same services and
  containers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from browser_support import Browser
from deploy_support import Deployment, free_port, wait_for
from load_support import HeyLoad
from repo_support import edit
from watch_support import Watch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The page as a person sees it; saved over docs/status-page.png (the README's picture)
# only when RECONCILER_SCREENSHOT=1, so a test run leaves the work tree as it was.
DOCS_SCREENSHOT = ROOT / "docs" / "status-page.png"
WEB = "services/web.yaml"
RELEASES = "releases:\n  - revision: v1\n    weight: 100\n"
# A canary that stays at its first step (50%) for the whole test: long min_duration, and
# a latency floor far above this machine's noise (2 vs 7 ms under a shared CPU aborted it).
CANARY = """releases:
  - revision: v1
    weight: 100
  - revision: v2
    weight: 0
    canary:
      steps:
        - {weight: 50, min_duration: 300s, min_requests: 40}
        - {weight: 100, min_duration: 300s, min_requests: 40}
      analysis:
        confidence: 0.99
        max_error_rate: 0.2
        interval: 1s
        latency: {min_ms: 1000}
"""


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def points(browser: Browser, service: str, chart: str) -> dict[str, int]:
    """Points drawn per series label in one chart of a service (the page's draw hook)."""
    raw = browser.js(f"(document.querySelector('section[data-service=\"{service}\"] "
                     f"[data-chart=\"{chart}\"]') || {{getAttribute: () => null}})"
                     ".getAttribute('data-points')")
    return json.loads(raw) if raw else {}


def assert_charts_show(browser: Browser, service: str, revisions: set[str]) -> None:
    """Each chart of ``service`` is a canvas with points for every revision."""
    for chart, suffix in (("rate", ""), ("errors", " 5xx"), ("latency", " p95")):
        drawn = wait_for(lambda c=chart: points(browser, service, c), 15, f"{chart} chart")
        for rev in revisions:
            assert drawn.get(f"{rev}{suffix}", 0) > 0, (chart, rev, drawn)
        assert browser.js(f"document.querySelectorAll('section[data-service=\"{service}\"] "
                          f"[data-chart=\"{chart}\"] canvas').length") == 1


# ------------------------------------------------------------------ a real deployment


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    os.environ["STAGING_DB_PASSWORD"] = "not-a-real-password"
    d = Deployment(tmp_path_factory.mktemp("page"), docker.from_env())
    code, out = d.apply()
    assert code == 0, out
    yield d
    d.cleanup()


def ui_process(dep: Deployment, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "ui", "--repo", str(dep.repo), "--env", dep.env,
         "--state-dir", str(dep.state), "--addr", f"127.0.0.1:{port}", "--refresh", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def overview_at(port: int) -> dict[str, Any] | None:
    try:
        return dict(get_json(f"http://127.0.0.1:{port}/api/overview"))
    except OSError:
        return None


def names(overview: dict[str, Any]) -> dict[str, set[str]]:
    return {s["name"]: {c["name"] for c in s["containers"]} for s in overview["services"]}


def test_watch_serves_the_page_during_a_canary_under_load(dep: Deployment) -> None:
    port = free_port()
    watch = Watch(dep, "--ui-addr", f"127.0.0.1:{port}", drift=60)
    url = f"http://127.0.0.1:{port}/"
    try:
        edit(dep.repo, WEB, RELEASES, CANARY)
        with HeyLoad(dep.url(), concurrency=5, qps=40, max_duration_s=180):
            watch.push("canary v2 at 50%")
            wait_for(lambda: (o := overview_at(port)) and any(
                (s["canary"] or {}).get("status") == "progressing" for s in o["services"]),
                timeout=90, what="the canary's analysis under way, on the page's data")
            with Browser() as browser:
                browser.load(url)
                check_page(browser, dep)
                check_series(browser, port)
                assert browser.console_errors() == [], browser.console_errors()
                shot = dep.root / "status-page.png"
                browser.screenshot(shot, width=1280)
                assert shot.stat().st_size > 10_000
                if os.environ.get("RECONCILER_SCREENSHOT") == "1":
                    shutil.copyfile(shot, DOCS_SCREENSHOT)
            check_ui_command(dep, port)
    finally:
        assert watch.stop() == 0


def check_page(browser: Browser, dep: Deployment) -> None:
    """What a person sees at a glance, in the DOM."""
    # the page shows a placeholder until its first data arrives
    browser.wait_for(f"document.getElementById('env').textContent === {json.dumps(dep.env)}",
                     15, f"the environment {dep.env}")
    assert browser.js("document.getElementById('commit').textContent").startswith("applied commit")
    services = browser.wait_for(
        "[...document.querySelectorAll('section.service')].map(e => e.dataset.service)",
        15, "services")
    assert {"web", "api"} <= set(services), services
    revisions = browser.wait_for(
        "[...new Set([...document.querySelectorAll('section[data-service=web] tr[data-container]')]"
        ".map(r => r.children[2].textContent))].sort().join(' ') == 'v1 v2' && 'ok'", 20,
        "containers of both revisions of web")
    assert revisions
    canary = browser.js("document.querySelector('section[data-service=web] .canary')")
    assert canary is not None and browser.js(
        "!document.querySelector('section[data-service=web] .canary').hidden")
    text = browser.js("document.querySelector('section[data-service=web] .canary').textContent")
    assert "progressing" in text and "v2 vs v1" in text and "step 1 of 2" in text, text
    assert "v1 50%" in text and "v2 50%" in text, text
    wait_for(lambda: points(browser, "web", "evidence").get("evidence", 0) > 0, 15,
             "the canary's evidence chart")
    browser.wait_for("document.querySelectorAll('#passes tr[data-pass]').length > 0", 15,
                     "passes from history")
    lb_states = browser.js("[...document.querySelectorAll('section[data-service=web] "
                           "tr[data-container] td:nth-child(6)')].map(td => td.textContent)")
    assert lb_states and all(s.startswith("UP") for s in lb_states), lb_states


def check_series(browser: Browser, port: int) -> None:
    """Charts drawn with the request records of both revisions."""
    wait_for(lambda: {"v1", "v2"} <= set(get_json(
        f"http://127.0.0.1:{port}/api/series?service=web&since=3600")["revisions"]),
        60, "request records of both revisions")
    assert_charts_show(browser, "web", {"v1", "v2"})
    # The per-action table: hey's "GET /" with requests on the baseline and the canary.
    cells = browser.wait_for(
        "(r => r && [r.children[1].textContent, r.children[6].textContent])(document."
        "querySelector('section[data-service=web] tr[data-action=\"GET /\"]'))", 20,
        "the per-action table")
    assert all(int(c) > 0 for c in cells), cells


def check_ui_command(dep: Deployment, watch_port: int) -> None:
    """`reconcile ui` serves the same services and containers as watch's page."""
    port = free_port()
    proc = ui_process(dep, port)
    try:
        seen = wait_for(lambda: overview_at(port), 30, "reconcile ui to answer")
        assert names(seen) == names(overview_at(watch_port) or {}), seen
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert b"/static/page.js" in resp.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err.decode()
