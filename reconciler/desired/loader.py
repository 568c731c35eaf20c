"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with marks; we build plain data from them ourselves so
that every value and every mapping key keeps its (line, column). Duplicate keys, which
PyYAML silently accepts, are reported. Loading never raises for bad YAML: it returns
the problems instead, so one run can report every file of a repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.errors import Problem

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """``("services", "web", "env", 0)`` -> ``services.web.env[0]``.

    A key that is empty or holds a non-printable character (a line break, ESC, ...) is
    written quoted, ``env['A\\nB']``, so it reads as one key and cannot break the line
    of the message (``Problem.__str__`` escapes the whole line as well)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part or not part.isprintable():
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass
class Document:
    """One YAML document of a manifest file, with positions (1-based) of its values."""

    file: str
    data: Any
    line: int
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Position of the value at ``path`` (or of its key), else of the nearest parent."""
        table = self.key_positions if key else self.positions
        if path in table:
            return table[path]
        p = path
        while p:
            p = p[:-1]
            if p in self.positions:
                return self.positions[p]
        return (self.line, 1)

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)

    def get(self, path: Path, default: Any = None) -> Any:
        cur = self.data
        for part in path:
            try:
                cur = cur[part]
            except (KeyError, IndexError, TypeError):
                return default
        return cur


@dataclass(frozen=True)
class At:
    """Where a value came from: a document and a path in it."""

    doc: Document
    path: Path

    def problem(self, message: str, *sub: str | int, key: bool = False) -> Problem:
        return self.doc.problem((*self.path, *sub), message, key=key)


# Free-form string maps: their scalars are kept as written ("0755", "1.10", "on"), not
# turned into YAML 1.1 numbers or booleans.
_RAW_MAPS = {"env", "labels", "options"}
MAX_NODES = 100_000  # a guard against alias bombs (a few bytes expanding to millions)
# Nesting deeper than this is refused before it is built. PyYAML's composer, our builder
# and every later walk recurse once per level: 1000 levels ("[[[[...", 2 KB) exhausted
# Python's stack. Real manifests nest about 8 deep.
MAX_DEPTH = 64
MAX_FILE_BYTES = 1024 * 1024  # a manifest file is a few KB; checked by load_manifests


class _TooBig(Exception):
    pass


class _TooDeep(Exception):
    def __init__(self, mark: Any) -> None:  # a yaml Mark (pure-Python or libyaml's)
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than ``MAX_DEPTH``."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                raise _TooDeep(event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.problems: list[Problem] = []
        self.nodes = 0

    def _scalar(self, node: yaml.Node, raw: bool) -> Any:
        if raw and isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
            return str(node.value)
        return self.loader.construct_object(node, deep=True)

    def build(self, node: yaml.Node, path: Path, doc: Document) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig
        if len(path) > MAX_DEPTH:  # an alias of a node inside itself: "&a [*a]"
            raise _TooDeep(node.start_mark)
        doc.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            explicit: set[str] = set()
            for key_node, _ in node.value:  # duplicates among the keys written here
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = str(self._scalar(key_node, raw=True))
                if key in explicit:
                    self.problems.append(
                        Problem(
                            self.file,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                            format_path((*path, key)),
                            f"duplicate key {key!r}",
                        )
                    )
                explicit.add(key)
            self.loader.flatten_mapping(node)  # "<<" merges first; keys written here win
            out: dict[Any, Any] = {}
            raw = bool(path) and path[-1] in _RAW_MAPS
            for key_node, value_node in node.value:
                key = str(self._scalar(key_node, raw=True))
                kpos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                doc.key_positions[(*path, key)] = kpos
                if raw:
                    doc.positions[(*path, key)] = (
                        value_node.start_mark.line + 1,
                        value_node.start_mark.column + 1,
                    )
                    out[key] = (
                        self._scalar(value_node, raw=True)
                        if isinstance(value_node, yaml.ScalarNode)
                        else self.build(value_node, (*path, key), doc)
                    )
                else:
                    out[key] = self.build(value_node, (*path, key), doc)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), doc) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def _explain(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's message, with the commonest ones said in an operator's words."""
    problem = str(exc.problem or exc)
    if "'\\t'" in problem or "\t" in problem:
        return "a tab is used for indentation; YAML needs spaces"
    if "expected <block end>" in problem or "mapping values are not allowed" in problem:
        return f"indentation does not match the lines around it ({problem})"
    return f"{exc.context}: {problem}" if exc.context else problem


def load_yaml(file: str, text: str) -> tuple[list[Document], list[Problem]]:
    """Parse every document of ``text``; ``file`` is the name used in problems."""
    loader = _Loader(text)
    builder = _Builder(file, loader)
    docs: list[Document] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # an empty document
                continue
            doc = Document(file=file, data=None, line=node.start_mark.line + 1)
            doc.data = builder.build(node, (), doc)
            docs.append(doc)
    except _TooBig:
        builder.problems.append(
            Problem(
                file,
                1,
                1,
                "",
                f"more than {MAX_NODES} YAML nodes (aliases expanding too far?); refused",
            )
        )
    except _TooDeep as exc:
        line, col = (exc.mark.line + 1, exc.mark.column + 1) if exc.mark else (1, 1)
        builder.problems.append(
            Problem(file, line, col, "", f"nested more than {MAX_DEPTH} levels deep; refused")
        )
    except RecursionError:  # a guard behind the guards above: never a traceback
        builder.problems.append(Problem(file, 1, 1, "", "nested too deeply; refused"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and "end of stream" in str(exc.problem):
            mark = exc.context_mark  # an unclosed quote or bracket: point where it opened
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = _explain(exc)
        builder.problems.append(Problem(file, line, col, "", f"YAML syntax error: {reason}"))
    except yaml.YAMLError as exc:  # no position known (e.g. a reader error)
        builder.problems.append(Problem(file, 1, 1, "", f"YAML error: {exc}"))
    finally:
        loader.dispose()
    return docs, builder.problems


def walk_strings(data: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """Every string value in ``data`` and every mapping key, with its path."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*path, k), k
            yield from walk_strings(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from walk_strings(v, (*path, i))
    elif isinstance(data, str):
        yield path, data
