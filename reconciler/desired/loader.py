"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with marks; we build plain data from them ourselves so
that every value and every mapping key keeps its (line, column). Duplicate keys, which
PyYAML silently accepts, are reported. Loading never raises for bad YAML: it returns
the problems instead, so one run can report every file of a repository.

Two parsers feed the same composer, builder and checks. libyaml's (``CParser``, about
20 times faster than PyYAML's pure-Python one) reads a file first, unless its text holds
something the two read differently (``_C_UNSAFE``: a tab, a control character, a tag,
...); a file it cannot read without a problem (but for too many nodes, a problem without
a position), or where its events may differ (an empty value: ``_Unsure``), is read again
from the start by the pure-Python parser, whose marks and messages every problem is
reported with. So the fast path changes no answer:
tests/unit/test_loader.py compares the two on every file of the corpus, the hostile
strings, the known parting points and random YAML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

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


class _DepthCap(Composer):
    """A composer that refuses nesting deeper than ``MAX_DEPTH``."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                event: yaml.Event = self.peek_event()  # type: ignore[attr-defined]
                raise _TooDeep(event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Loader(_DepthCap, yaml.SafeLoader):
    """PyYAML's pure-Python SafeLoader, depth-capped: the reference reader."""


# Where libyaml and PyYAML read alike: printable text, line feeds and carriage returns
# (tests/unit/test_loader.py compares them). Not a tab (libyaml takes it where PyYAML
# refuses it), a byte-order mark (PyYAML gives it no column), NEL or the Unicode line
# and paragraph separators, a surrogate or a control character; not a block scalar
# header followed by "#" without a space (libyaml reads a comment, PyYAML refuses); no
# "?" in a file with a flow collection (in one, PyYAML ends a plain scalar at "?"); and
# no "!" where a tag may start (libyaml takes tags that PyYAML refuses).
_C_UNSAFE = re.compile(
    r"[^\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
    r"|[|>][-+0-9]*#"
    r"|^(?=[^?]*[?])(?=[^\[{]*[\[{])"
    r"|(?<![^\s,\[\]{}])!",
)


class _Unsure(Exception):
    """libyaml's events may differ from PyYAML's here: read the file with PyYAML."""


_CLoader: Callable[[str], Any] | None = None
try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: every file takes the Python path
    pass
else:

    class _CParsed(_DepthCap, CParser, SafeConstructor, Resolver):
        """libyaml's parser (events) under the same depth-capped Python composer."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

        def compose_scalar_node(self, anchor: Any) -> yaml.ScalarNode:
            event: Any = self.peek_event()
            if event.value == "" and not event.style:
                # An empty plain scalar (a key or value left out, an empty document):
                # libyaml may mark it where the next token starts ("{a: }", "---" at the
                # end of the text), PyYAML where the one before it ends.
                raise _Unsure
            return super().compose_scalar_node(anchor)

    _CLoader = _CParsed


class _Builder:
    def __init__(self, file: str, loader: Any) -> None:  # _Loader or _CLoader
        self.file = file
        self.loader = loader
        self.problems: list[Problem] = []
        self.nodes = 0

    def _scalar(self, node: yaml.Node, raw: bool) -> Any:
        if raw and isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
            return str(node.value)
        return self._construct(node)

    def _construct(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
            # PyYAML's constructors crash on some values of an explicit tag ("!!int ''")
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {tag}", node.start_mark
            ) from exc

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
        return self._construct(node)


def _explain(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's message, with the commonest ones said in an operator's words."""
    problem = str(exc.problem or exc)
    if "'\\t'" in problem or "\t" in problem:
        return "a tab is used for indentation; YAML needs spaces"
    if "expected <block end>" in problem or "mapping values are not allowed" in problem:
        return f"indentation does not match the lines around it ({problem})"
    return f"{exc.context}: {problem}" if exc.context else problem


def load_yaml(file: str, text: str) -> tuple[list[Document], list[Problem]]:
    """Parse every document of ``text``; ``file`` is the name used in problems.

    libyaml reads it when it can and finds nothing wrong (or only too many nodes);
    otherwise PyYAML reads it again, from the start, and says what is wrong (see the
    module's docstring)."""
    if _CLoader is not None and not _C_UNSAFE.search(text):
        try:
            docs, problems = _load(file, _CLoader(text))
        except _Unsure:
            pass
        else:
            # (the node cap's problem has no position: PyYAML would only take longer to
            # find it, a whole file's worth on a big file)
            if not problems or problems == [_too_big(file)]:
                return docs, problems
    return read_python(file, text)


def _too_big(file: str) -> Problem:
    message = f"more than {MAX_NODES} YAML nodes (aliases expanding too far?); refused"
    return Problem(file, 1, 1, "", message)


def read_python(file: str, text: str) -> tuple[list[Document], list[Problem]]:
    """``load_yaml``'s answer, always by PyYAML's pure-Python parser: the reference."""
    try:
        loader = _Loader(text)  # checks every character first
    except yaml.reader.ReaderError as exc:
        lines = re.split("\r\n|[\n\r\x85\u2028\u2029]", text[: exc.position])
        column = len(lines[-1].replace("\ufeff", "")) + 1  # (as PyYAML counts columns)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = (
            f"YAML syntax error: the character U+{code:04X} may not be written as it is "
            f'(escape it in a double-quoted string: "\\u{code:04x}")'
        )
        return [], [Problem(file, len(lines), column, "", message)]
    return _load(file, loader)


def _load(file: str, loader: Any) -> tuple[list[Document], list[Problem]]:
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
        builder.problems.append(_too_big(file))
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
