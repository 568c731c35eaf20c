"""Action names of requests: declared templates first, then bounded path templates."""

from __future__ import annotations

import pytest

from reconciler.model import ActionSpec
from reconciler.records.actions import OTHER, ActionTable, template


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/api/orders/17", "/api/orders/{id}"),
        ("/api/orders/-3.5/items", "/api/orders/{id}/items"),
        ("/u/123e4567-e89b-12d3-a456-426614174000", "/u/{uuid}"),
        ("/blob/deadbeefdeadbeef00", "/blob/{hex}"),
        ("/s/abcDEF123ghiJKL456mno", "/s/{token}"),
        ("/static/app.js", "/static/app.js"),
        ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/..."),
        ("not-a-path", "/"),
    ],
)
def test_template(path: str, expected: str) -> None:
    assert template(path) == expected


def test_declared_actions_win_and_methods_matter() -> None:
    t = ActionTable((ActionSpec("orders.show", "/api/orders/{id}", "GET"),), limit=5)
    assert t.name("GET", "/api/orders/42") == "orders.show"
    assert t.name("DELETE", "/api/orders/42") == "DELETE /api/orders/{id}"
    assert t.name("GET", "/api/orders/42/x") == "GET /api/orders/{id}/x"
    assert t.name("GET", "/api/orders/") == "GET /api/orders/"  # {id} needs a segment


def test_names_are_bounded() -> None:
    t = ActionTable(limit=3)
    names = {t.name("GET", f"/p{i}") for i in range(100)}
    assert names == {"GET /p0", "GET /p1", "GET /p2", OTHER}
    assert t.name("GET", "/p1") == "GET /p1"  # admitted names stay
    assert t.name("BREW", "/") == OTHER and t.name("GET", "<BADREQ>") == OTHER
