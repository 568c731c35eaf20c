"""Health check kinds are declared once each (reconciler/health.py): what a kind means
for the manifest, Docker, the health gate and the load balancer is its class's answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.health import KINDS, NO_HEALTH, Gate, LBCheck, kind_of, read_health
from reconciler.model import HealthCheck

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE = HealthCheck(kind="none", interval_ms=500, timeout_ms=300, retries=5, start_period_ms=7)


def test_the_schema_selects_exactly_the_declared_kinds() -> None:
    health = json.loads((SCHEMAS / "service.schema.json").read_text())["properties"]["health"]
    selecting = {req for alt in health["oneOf"] for req in alt["required"]}
    assert selecting == {k.key for k in KINDS.values() if k.key is not None}
    assert all(name == kind.name for name, kind in KINDS.items())


def test_reading_keeps_the_common_settings_and_adds_the_kinds_own() -> None:
    assert read_health(None, BASE) == NO_HEALTH
    http = read_health({"http": "/ready"}, BASE)
    assert http == HealthCheck("http", "/ready", (), 500, 300, 5, 7)
    command = read_health({"command": ["/app", "check"]}, BASE)
    assert command == HealthCheck("command", "/", ("/app", "check"), 500, 300, 5, 7)
    with pytest.raises(ValueError, match="no known kind"):
        read_health({"interval": "1s"}, BASE)


@pytest.mark.parametrize(
    ("check", "docker", "gate", "lb"),
    [
        (
            HealthCheck("http", path="/h", interval_ms=500, timeout_ms=300, retries=5),
            None,
            Gate("http", "/h"),
            LBCheck("http", 500, 300, 5, "/h"),
        ),
        (
            HealthCheck("command", command=("/bin/true",), interval_ms=500),
            ["CMD", "/bin/true"],
            Gate("docker"),
            LBCheck("tcp", 500, 1000, 3),
        ),
        (NO_HEALTH, None, Gate("tcp"), None),
    ],
)
def test_each_kind_answers_for_docker_the_gate_and_the_load_balancer(
    check: HealthCheck, docker: list[str] | None, gate: Gate, lb: LBCheck | None
) -> None:
    kind = kind_of(check)
    assert kind.docker_test(check) == docker
    assert kind.gate(check) == gate
    assert kind.lb_check(check) == lb
