"""The status page's server (reconciler.present.web), without a browser: its endpoints
answer the shapes of the shared contract, it is read-only, its headers forbid anything
from elsewhere, a loopback page refuses foreign Host headers, and every asset the HTML
names ships inside the package. The page in a real browser: tests/integration/test_status_page.py.
"""

from __future__ import annotations

import io
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from support import converge, desired, service

from reconciler.present.web import app as web_app
from reconciler.present.web.data import PageData, PageView
from reconciler.present.web.server import AddressError, PageServer, parse_addr
from reconciler.store import Store

ROOT = Path(__file__).resolve().parents[2]


def call(app: Any, path: str, method: str = "GET", host: str = "127.0.0.1:9180") -> tuple[int, dict[str, str], bytes]:
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method,
                               "HTTP_HOST": host, "wsgi.input": io.BytesIO(b"")}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = int(status.split(maxsplit=1)[0]), dict(headers)

    body = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], body


@pytest.fixture
def state(tmp_path: Path) -> Path:
    store = Store(tmp_path / "history.sqlite")
    for status, commit in (("ok", "c0ffee"), ("nothing-to-do", "c0ffee"), ("aborted", "-")):
        run = store.start_run("prod", commit, "{}")
        store.finish_run(run, status, {}, f"summary of {status}")
    store.close()
    return tmp_path


def page(state_dir: Path, view: PageView | None) -> Any:
    return web_app.make_app(PageData(state_dir, lambda: view, "prod"))


def a_view() -> PageView:
    d = desired(service("web", [("v1", 100)]), service("api", [("a1", 100)], replicas=1))
    return PageView(d, converge(d), {}, None, 1700000000.0)


def test_overview_has_the_contract_shape(state: Path) -> None:
    status, headers, body = call(page(state, a_view()), "/api/overview")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    o = json.loads(body)
    assert o["environment"] == "prod"
    assert o["commit"] == {"sha": "c0ffee", "time": None, "author": None, "subject": None}
    web = next(s for s in o["services"] if s["name"] == "web")
    assert web["releases"] == [{"revision": "v1", "weight": 100, "canary": False}]
    assert len(web["containers"]) == 2
    assert set(web["containers"][0]) >= {"host", "name", "revision", "health", "lb_state", "weight"}
    assert {c["revision"] for c in web["containers"]} == {"v1"}
    assert web["canary"] is None


def test_overview_before_anything_was_observed_says_so(state: Path) -> None:
    o = json.loads(call(page(state, None), "/api/overview")[2])
    assert o["services"] == [] and o["environment"] == "prod"
    assert o["error"] == "nothing observed yet"


def test_passes_come_from_the_history_newest_first(state: Path) -> None:
    passes = json.loads(call(page(state, a_view()), "/api/passes?limit=2")[2])
    assert [p["outcome"] for p in passes] == ["aborted", "nothing-to-do"]
    assert [p["kind"] for p in passes] == ["decision", "look"]
    assert set(passes[0]) >= {"t", "kind", "outcome", "commit", "summary"}
    assert passes[0]["commit"] is None and passes[1]["commit"] == "c0ffee"


def test_passes_without_history_are_empty_and_create_nothing(tmp_path: Path) -> None:
    assert json.loads(call(page(tmp_path, None), "/api/passes")[2]) == []
    assert list(tmp_path.iterdir()) == []


def test_series_and_actions_without_records_are_empty_with_a_note(state: Path) -> None:
    status, headers, body = call(page(state, a_view()), "/api/series?service=web&since=600")
    series = json.loads(body)
    assert status == 200 and series["revisions"] == {} and series["note"]
    assert headers["X-Note"] == series["note"]
    status, _, body = call(page(state, a_view()), "/api/actions?service=web&since=600")
    assert status == 200 and json.loads(body) == []


@pytest.mark.parametrize("query", ["service=web&since=abc", "since=60", "service=web&since=-5",
                                   "service=web&since=1e12"])
def test_bad_queries_are_refused(state: Path, query: str) -> None:
    assert call(page(state, a_view()), f"/api/series?{query}")[0] == 400


def test_the_page_is_read_only(state: Path) -> None:
    app = page(state, a_view())
    for path in ("/", "/api/overview", "/api/passes"):
        assert call(app, path, method="POST")[0] == 405, path
    assert call(app, "/static/../data.py")[0] in (403, 404)


def test_every_answer_carries_a_strict_csp(state: Path) -> None:
    app = page(state, a_view())
    for path in ("/", "/api/overview", "/static/page.js", "/nowhere"):
        headers = call(app, path)[1]
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("host", ["127.0.0.1:9180", "localhost:9180", "[::1]:9180", "localhost"])
def test_loopback_page_answers_loopback_hosts(state: Path, host: str) -> None:
    assert call(page(state, a_view()), "/api/overview", host=host)[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:9180", "10.0.0.1:9180", ""])
def test_loopback_page_refuses_other_hosts(state: Path, host: str) -> None:
    """DNS rebinding: a site the operator visits must not read the page."""
    assert call(page(state, a_view()), "/api/overview", host=host)[0] == 403


def test_html_loads_nothing_from_outside_and_every_asset_ships() -> None:
    static = ROOT / "reconciler" / "present" / "web" / "static"
    html = (static / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, html
    for ref in refs:
        assert not re.match(r"(https?:)?//", ref), ref
        if ref.startswith("/static/"):
            assert (static / ref.removeprefix("/static/")).is_file(), ref
    # no inline script, style or handler: the CSP blocks them
    assert "<script>" not in html and "<style" not in html and not re.search(r"\son\w+=", html)
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["reconciler"]
    for f in static.iterdir():
        rel = f.relative_to(ROOT / "reconciler").as_posix()
        assert any(fnmatch(rel, p) for p in patterns), f"{rel} is not package data"
    assert (static / "uPlot.LICENSE").read_text().startswith("The MIT License")


def test_server_binds_and_refuses_bad_addresses(tmp_path: Path) -> None:
    assert parse_addr("127.0.0.1:9180") == ("127.0.0.1", 9180)
    assert parse_addr("[::1]:80") == ("::1", 80)
    for bad in ("9180", "host:", ":9180", "host:99999", "host:port"):
        with pytest.raises(AddressError, match="expected HOST:PORT"):
            parse_addr(bad)
    server = PageServer(PageData(tmp_path, lambda: None), "127.0.0.1:0")
    try:
        with pytest.raises(AddressError, match="cannot serve the status page"):
            PageServer(PageData(tmp_path, lambda: None), f"127.0.0.1:{server.port}")
    finally:
        server.close()
