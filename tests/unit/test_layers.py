"""The package's shape holds: layers import only layers below them (or their own), and
modules and functions stay small (docs/architecture.md, "Where things go").

Layers, bottom to top. A module belongs to the layer of its first package below
``reconciler`` (a top-level module is named on its own)."""

from __future__ import annotations

import ast
from pathlib import Path

import reconciler

ROOT = Path(reconciler.__file__).parent

LAYERS: list[set[str]] = [
    {"errors", "model", "health", "identity", "changes", "redact", "statedir", "instance", "store",
     "coordination", "polling", "__init__"},
    {"transport", "cluster"},
    {"lb"},
    {"desired", "observe"},
    {"plan"},
    {"records"},
    {"canary"},
    {"apply"},
    {"present"},
    {"session", "agent"},
    {"cli", "watch", "__main__"},
]

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Exceptions, each with its reason; the list may only shrink.
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {
    "cli.watch.watch": "its 17 options are its parameters and its docstring is the --help "
    "text; the body is 20 lines",
}


def layer_of(dotted: str) -> int:
    """The layer index of module ``reconciler.<dotted>``."""
    head = dotted.split(".", maxsplit=1)[0]
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"module reconciler.{dotted} is in no layer: add it to LAYERS")


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


def imports_of(path: Path, dotted: str) -> list[tuple[str, int]]:
    """Every ``reconciler`` module ``path`` imports, anywhere in it (functions too)."""
    found = []
    tree = ast.parse(path.read_text())
    package = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module or ""]).strip(".")
            elif node.module and (node.module == "reconciler" or node.module.startswith("reconciler.")):
                mod = node.module.removeprefix("reconciler").lstrip(".")
            else:
                continue
            if not mod:  # from reconciler import x: x is the module
                found += [(a.name, node.lineno) for a in node.names if a.name != "__version__"]
            else:
                found.append((mod, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("reconciler."):
                    found.append((a.name.removeprefix("reconciler."), node.lineno))
    return found


def test_no_layer_imports_a_layer_above_it() -> None:
    upward = []
    for dotted, path in modules():
        own = layer_of(dotted)
        for target, line in imports_of(path, dotted):
            if layer_of(target) > own:
                upward.append(f"reconciler/{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_modules_and_functions_stay_small() -> None:
    long_modules, long_functions = {}, {}
    for dotted, path in modules():
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            long_modules[dotted] = n
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{dotted}.{node.name}"] = length
    extra_modules = {m: n for m, n in long_modules.items() if m not in LONG_MODULES}
    extra_functions = {f: n for f, n in long_functions.items() if f not in LONG_FUNCTIONS}
    assert not extra_modules, f"modules over {MAX_MODULE_LINES} lines: {extra_modules}"
    assert not extra_functions, f"functions over {MAX_FUNCTION_LINES} lines: {extra_functions}"
    stale = (set(LONG_MODULES) - set(long_modules)) | (set(LONG_FUNCTIONS) - set(long_functions))
    assert not stale, f"listed as long but no longer are (remove them from the list): {stale}"
