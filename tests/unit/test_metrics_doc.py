"""The metrics reference in docs/operations.md and the metrics the code registers
(``reconciler.present.metrics.Metrics().registry``) name the same metrics, with the same types
and labels, both ways: neither can change without the other."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from reconciler.present.metrics import Metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
HEADER = "| metric | type | labels | meaning |"

Entry = tuple[str, str, tuple[str, ...]]  # name as queried, type, label names


def documented(text: str) -> dict[str, Entry]:
    """Rows of the one table whose header is HEADER: name -> (name, type, labels)."""
    assert text.count(HEADER) == 1, f"expected one metrics table in {DOC}"
    lines = text[text.index(HEADER):].splitlines()
    assert re.fullmatch(r"\|(-+\|){4}", lines[1]), lines[1]
    out: dict[str, Entry] = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4 and all(cells), f"malformed row: {line}"
        name, kind, labels, _meaning = cells
        assert re.fullmatch(r"`[a-z_]+`", name), f"metric name not in backticks: {line}"
        names = () if labels == "-" else tuple(
            re.fullmatch(r"`([a-z_]+)`", x.strip()).group(1)  # type: ignore[union-attr]
            for x in labels.split(","))
        assert name.strip("`") not in out, f"{name} twice"
        out[name.strip("`")] = (name.strip("`"), kind, tuple(sorted(names)))
    return out


def registered() -> dict[str, Entry]:
    """What Metrics() registers. Names and types come from the registry; label names
    from the collectors (a labelled metric without children shows no labels in the
    registry's output), found among the Metrics attributes and checked to be exactly
    the registry's."""
    metrics = Metrics()
    families = {f.name: f.type for f in metrics.registry.collect()}
    collectors = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    out: dict[str, Entry] = {}
    for c in collectors:
        family = c._name  # the registry's family name: without `_total` for a counter
        assert family in families, f"{family} is not in the registry"
        kind = families[family]
        name = f"{family}_total" if kind == "counter" else family
        out[name] = (name, kind, tuple(sorted(c._labelnames)))
    assert len(collectors) == len(families), "a registered metric is not a Metrics attribute"
    return out


def test_the_table_parser_reads_rows() -> None:
    text = f"x\n\n{HEADER}\n|---|---|---|---|\n| `a_total` | counter | `k`, `j` | m |\n| `b` | gauge | - | n |\n\nafter\n"
    assert documented(text) == {"a_total": ("a_total", "counter", ("j", "k")),
                                "b": ("b", "gauge", ())}


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    doc = documented(DOC.read_text())
    code = registered()
    assert sorted(code.keys() - doc.keys()) == [], "registered but not in docs/operations.md"
    assert sorted(doc.keys() - code.keys()) == [], "in docs/operations.md but not registered"
    assert {k: doc[k] for k in code} == code, "types or labels differ"
