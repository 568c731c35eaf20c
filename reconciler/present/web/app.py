"""The status page's WSGI application (bottle): one HTML page, its vendored assets and
four read-only JSON endpoints. Nothing here changes anything: there is no POST route.

Every answer carries a strict Content-Security-Policy (scripts, styles and data only from
this origin; no inline script, no frames, no forms), ``nosniff`` and no referrer. A
server bound to a loopback address answers only requests whose Host header names a
loopback host, so a web site the operator visits cannot read the page through DNS
rebinding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bottle

from reconciler.present.web.data import PageData

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_SINCE_S = 14 * 86400.0  # as far back as the records store keeps anything
MAX_PASSES = 500


def _hostname(host_header: str) -> str:
    """'[::1]:9180' -> '::1', 'localhost:9180' -> 'localhost'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _number(name: str, default: float, low: float, high: float) -> float:
    """Query parameter ``name`` as a number in [low, high]; 400 when it is not one."""
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        bottle.abort(400, f"{name} must be a number")
    if not low <= value <= high:
        bottle.abort(400, f"{name} must be between {low:g} and {high:g}")
    return value


def _json(data: Any, note: str | None = None) -> str:
    bottle.response.content_type = "application/json"
    bottle.response.set_header("Cache-Control", "no-store")
    if note:
        bottle.response.set_header("X-Note", note)
    return json.dumps(data, allow_nan=False, default=str)


def make_app(data: PageData, loopback_only: bool = True) -> bottle.Bottle:
    """The page over ``data``; ``loopback_only``: refuse Host headers that are not
    loopback names (see the module doc)."""
    app = bottle.Bottle()

    @app.hook("before_request")  # type: ignore[untyped-decorator]
    def _check_host() -> None:
        if loopback_only and _hostname(bottle.request.get_header("Host", "")) not in LOOPBACK:
            bottle.abort(403, "this page answers only on a loopback address")

    @app.hook("after_request")  # type: ignore[untyped-decorator]
    def _headers() -> None:
        bottle.response.set_header("Content-Security-Policy", CSP)
        bottle.response.set_header("X-Content-Type-Options", "nosniff")
        bottle.response.set_header("Referrer-Policy", "no-referrer")
        bottle.response.set_header("X-Frame-Options", "DENY")

    @app.get("/")  # type: ignore[untyped-decorator]
    def _index() -> Any:
        return bottle.static_file("index.html", root=str(STATIC))

    @app.get("/static/<name>")  # type: ignore[untyped-decorator]
    def _static(name: str) -> Any:
        return bottle.static_file(name, root=str(STATIC))

    @app.get("/api/overview")  # type: ignore[untyped-decorator]
    def _overview() -> str:
        return _json(data.overview())

    @app.get("/api/passes")  # type: ignore[untyped-decorator]
    def _passes() -> str:
        return _json(data.passes(int(_number("limit", 50, 1, MAX_PASSES))))

    @app.get("/api/series")  # type: ignore[untyped-decorator]
    def _series() -> str:
        service = bottle.request.query.get("service") or bottle.abort(400, "service is needed")
        since = _number("since", 3600, 10, MAX_SINCE_S)
        note = data.note()
        return _json({**data.series(service, since), "note": note}, note)

    @app.get("/api/actions")  # type: ignore[untyped-decorator]
    def _actions() -> str:
        service = bottle.request.query.get("service") or bottle.abort(400, "service is needed")
        return _json(data.actions(service, _number("since", 3600, 10, MAX_SINCE_S)), data.note())

    return app
