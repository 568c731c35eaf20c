"""JSON Schema (draft 2020-12) validation of manifest documents.

The schemas under ``schemas/`` are the published contract of the manifest format; this
module only applies them and turns each error into a ``Problem`` at the right line.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from reconciler.desired.loader import Document
from reconciler.errors import Problem

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
KINDS = {
    "Service": "service.schema.json",
    "Inventory": "inventory.schema.json",
    "LoadBalancer": "loadbalancer.schema.json",
    "Environment": "environment.schema.json",
}
BASE_URI = "https://reconciler.example/schemas/"


def ecma_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled with JSON Schema's (ECMA-262) meaning of ``$``: end of input.

    Python's ``$`` also matches before a final newline, so with jsonschema's default
    ``re.search`` the pattern ``^[a-z0-9-]+$`` accepts ``"web\\n"``; every ``$`` outside a
    character class becomes ``\\Z``."""
    out, escaped, in_class = [], False, False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "$" and not in_class:
            out.append("\\Z")
            continue
        out.append(ch)
    return re.compile("".join(out))


def _pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """The ``pattern`` keyword, matched with ``ecma_regex`` (see there)."""
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return ecma_regex(pattern)


@cache
def _validators() -> dict[str, Any]:
    return build_validators(inline=True)


def build_validators(*, inline: bool) -> dict[str, Any]:
    """A validator per kind; with ``inline``, of the schemas with their references
    inlined (``inline_refs``), which report exactly what the schemas do, faster."""
    # Imported here: jsonschema is slow to import and `--help` must stay fast.
    from jsonschema import Draft202012Validator
    from jsonschema.validators import extend
    from referencing import Registry, Resource

    strict = extend(Draft202012Validator, {"pattern": _pattern_keyword})  # type: ignore[no-untyped-call]

    schemas = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
    registry: Registry[Any] = Registry().with_resources(
        (BASE_URI + name, Resource.from_contents(s)) for name, s in schemas.items()
    )
    return {
        kind: strict(inline_refs(schemas, file) if inline else schemas[file], registry=registry)
        for kind, file in KINDS.items()
    }


# Keywords that only annotate: beside a "$ref" they change nothing a validator reports.
_ANNOTATIONS = frozenset({"description", "title", "$comment", "default", "examples"})


def inline_refs(schemas: dict[str, Any], file: str) -> Any:
    """The schema ``file`` with each ``$ref`` replaced by the subschema it points to, in
    place of the ``$ref`` keyword (so the keywords, and the errors, keep their order).

    A validator then resolves no reference while it validates (looking them up was half
    its time). A ``$ref`` with a sibling keyword that validates, or one that points back
    into itself, stays, made absolute so that it resolves from wherever it now sits."""

    def target(ref: str, base: str) -> tuple[str, Any]:
        name, _, pointer = ref.partition("#")
        name = name or base
        node = schemas[name]
        for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return name, node

    def walk(node: Any, base: str, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, base, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            name, sub = target(ref, base)
            key = f"{name}#{ref.partition('#')[2]}"
            if key not in seen and set(node) - {"$ref"} <= _ANNOTATIONS and isinstance(sub, dict):
                out: dict[str, Any] = {}
                for k, v in node.items():
                    if k == "$ref":
                        out.update(walk(sub, name, (*seen, key)))
                    elif k not in sub:
                        out[k] = v
                return out
            node = {**node, "$ref": BASE_URI + key}
        return {k: walk(v, base, seen) if k != "$ref" else v for k, v in node.items()}

    return walk(schemas[file], file, ())


def _message(error: Any) -> str:
    """A message that names the bad value and, for patterns, what was expected."""
    if error.validator == "pattern":
        expected = error.schema.get("x-pattern-message", f"pattern {error.validator_value}")
        return f"{error.instance!r} is not a valid {expected}"
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hints = [difflib.get_close_matches(e, allowed, n=1) for e in extra]
        said = ", ".join(
            f"{e!r}" + (f" (did you mean {h[0]!r}?)" if h else "")
            for e, h in zip(extra, hints, strict=True)
        )
        return f"unknown field {said}; allowed: {', '.join(allowed)}"
    if error.validator == "required":
        return (
            str(error.message)
            .replace(" is a required property", "")
            .join(("missing required field ", ""))
        )
    if error.validator == "enum" and "x-enum-message" in error.schema:
        return f"{error.instance!r}: {error.schema['x-enum-message']}"
    if error.validator in ("oneOf", "anyOf") and "x-oneOf-message" in error.schema:
        return str(error.schema["x-oneOf-message"])
    if error.validator in ("oneOf", "anyOf"):
        forms = "; ".join(str(e.message) for e in error.context)
        return f"{error.instance!r} matches no allowed form ({forms})"
    return str(error.message)


def _most_relevant(error: Any) -> Any:
    """For a oneOf/anyOf without its own message, the error of the branch that fits the
    value's form and got furthest (so ``connection: {ssh: {host_key_checking: off}}`` is
    reported at host_key_checking, not as "'local' was expected")."""
    while (
        error.validator in ("oneOf", "anyOf")
        and error.context
        and "x-oneOf-message" not in error.schema
    ):
        fitting = [
            e
            for e in error.context
            if e.relative_path or e.validator not in ("const", "type", "enum")
        ]
        if not fitting:
            break
        error = max(fitting, key=lambda e: len(e.relative_path))
    return error


def check_document(doc: Document) -> list[Problem]:
    """Schema problems of one document; an unknown or missing kind is one problem."""
    data = doc.data
    if not isinstance(data, dict):
        return [doc.problem((), f"a manifest must be a mapping, got {type(data).__name__}")]
    kind = data.get("kind")
    known = ", ".join(sorted(KINDS))
    if kind is not None and not isinstance(kind, str):  # a list or mapping is unhashable
        return [doc.problem(("kind",), f"kind must be one of {known}, not a {type(kind).__name__}")]
    if kind not in KINDS:
        if kind is None:
            return [doc.problem((), f"missing 'kind' (one of {known})")]
        return [doc.problem(("kind",), f"unknown kind {kind!r} (one of {known})")]
    validator = _validators()[kind]
    problems = []
    for top in validator.iter_errors(data):
        error = _most_relevant(top)
        path = tuple(error.absolute_path)
        key = False
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            if extra:
                path, key = (*path, extra[0]), True
        elif "propertyNames" in error.schema_path:
            path, key = (*path, error.instance), True
        problems.append(doc.problem(path, _message(error), key=key))
    return problems
