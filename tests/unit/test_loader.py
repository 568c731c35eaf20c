"""YAML loading: positions, duplicate keys, merges, raw string maps, alias bombs; and
libyaml's fast path giving exactly the pure-Python parser's answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_support import hostile
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired import loader
from reconciler.desired.loader import load_yaml
from reconciler.errors import Problem


def test_positions_of_values_and_keys() -> None:
    (doc,), problems = load_yaml("f.yaml", "a:\n  b: [1, 2]\n  c: x\n")
    assert not problems
    assert doc.where(("a", "b", 1)) == (2, 10)
    assert doc.where(("a", "c"), key=True) == (3, 3)
    assert doc.where(("a", "missing")) == (2, 3)  # nearest known parent


def test_duplicate_key_is_reported_but_merge_override_is_not() -> None:
    _, problems = load_yaml("f.yaml", "a: 1\nb: 2\na: 3\n")
    assert [(p.line, p.message) for p in problems] == [(3, "duplicate key 'a'")]
    text = "base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 3\n"
    (doc,), problems = load_yaml("f.yaml", text)
    assert not problems and doc.data["mine"] == {"x": 1, "y": 3}


def test_env_labels_and_options_keep_scalars_as_written() -> None:
    text = "env:\n  MODE: 0755\n  VERSION: 1.10\n  FLAG: on\n  NO: yes\nreplicas: 2\n"
    (doc,), _ = load_yaml("f.yaml", text)
    assert doc.data["env"] == {"MODE": "0755", "VERSION": "1.10", "FLAG": "on", "NO": "yes"}
    assert doc.data["replicas"] == 2


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    t0 = time.monotonic()
    docs, problems = load_yaml("bomb.yaml", "\n".join(lines) + "\n")
    assert time.monotonic() - t0 < 5
    assert not docs and "YAML nodes" in problems[0].message
    # libyaml's answer is taken as it is here (no position to differ): PyYAML's is the
    # same, the documents before the bomb too
    _same_answer("a: 1\n---\n" + "\n".join(lines) + "\n")


def test_unclosed_quote_points_where_it_opens() -> None:
    _, (problem,) = load_yaml("f.yaml", 'a: 1\nb: "open\nc: 2\n')
    assert problem.line == 2 and "quoted scalar" in problem.message


def test_deep_nesting_is_a_problem_with_its_line_not_a_recursion_error() -> None:
    from reconciler.desired.loader import MAX_DEPTH

    for text in ("a: " + "[" * 1000 + "]" * 1000 + "\n",
                 "a: " + "{b: " * 1000 + "1" + "}" * 1000 + "\n",
                 "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n"):
        docs, problems = load_yaml("services/deep.yaml", text)
        assert docs == [] and len(problems) == 1, problems
        assert str(problems[0]).startswith("services/deep.yaml:"), problems
        assert f"nested more than {MAX_DEPTH} levels deep" in str(problems[0])
    # As deep as allowed: loads.
    ok = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    docs, problems = load_yaml("ok.yaml", ok)
    assert problems == [] and len(docs) == 1


def test_an_alias_inside_itself_is_refused() -> None:
    docs, problems = load_yaml("loop.yaml", "a: &a [*a]\n")
    assert docs == [] and "nested more than" in str(problems[0]), problems


def test_a_huge_manifest_file_is_refused_before_parsing() -> None:
    import pytest

    from reconciler.desired.loader import MAX_FILE_BYTES
    from reconciler.desired.manifests import load_manifests
    from reconciler.errors import ManifestError

    with pytest.raises(ManifestError) as info:
        load_manifests([("services/big.yaml", b"# " + b"x" * MAX_FILE_BYTES + b"\n")])
    assert any(p.file == "services/big.yaml" and "bytes, more than" in p.message
               for p in info.value.problems), info.value.problems


# --------------------------------------------------------------------------- two parsers
# load_yaml reads a file with libyaml when its text is in the alphabet both parsers read
# alike and it loads without a problem; otherwise with PyYAML's pure-Python parser (see
# reconciler/desired/loader.py). Its answer must be the pure-Python one, exactly: the
# same documents, values, positions of every value and key, and problems.

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(
    p
    for folder in ("tests/corpus", "sample-repo")
    for p in (ROOT / folder).rglob("*")
    if p.suffix in (".yaml", ".yml")
)


def test_libyaml_fast_path_is_there() -> None:
    """The fast path's comparisons below must run: the PyYAML wheel .ci/setup installs
    carries libyaml (a missing one fails here, it is not skipped)."""
    assert loader._CLoader is not None, "PyYAML was installed without libyaml"


def _answer(read: Callable[[], tuple[list[loader.Document], list[Problem]]]) -> str:
    """Everything a reading tells: documents, values, positions, problems (or a crash)."""
    try:
        docs, problems = read()
    except Exception as exc:
        return f"raised {exc!r}"
    return repr(([(d.line, d.data, d.positions, d.key_positions) for d in docs], problems))


def _fast_path_taken(text: str) -> bool:
    if loader._CLoader is None or loader._C_UNSAFE.search(text):
        return False
    try:
        return not loader._load("f.yaml", loader._CLoader(text))[1]
    except loader._Unsure:
        return False


def _same_answer(text: str) -> None:
    fast = _answer(lambda: loader.load_yaml("f.yaml", text))
    assert fast == _answer(lambda: loader.read_python("f.yaml", text)), repr(text)


def test_ordinary_manifests_take_the_libyaml_path() -> None:
    """The speed is real: every file of the sample repository is read by libyaml."""
    sample = [p for p in FILES if "sample-repo" in p.parts]
    assert sample
    assert [p for p in sample if not _fast_path_taken(p.read_text())] == []


def test_both_parsers_answer_alike_on_every_file_of_the_corpus() -> None:
    """Every manifest of the corpus of broken repositories and of the sample (95 cases:
    syntax errors, tabs, duplicates, empty values, bad values of every field, ...)."""
    texts = {p.read_text(encoding="utf-8", errors="surrogateescape") for p in FILES}
    assert len(FILES) >= 500 and len(texts) >= 100  # (most cases copy most of the sample)
    for text in texts:
        _same_answer(text)


# Where the two parsers part, each found by the random test below and kept here: libyaml
# takes a tab as a separator, a "#" right after a block scalar header as a comment, a
# "?" inside a plain scalar in a flow collection and tags like "!:x!!str"; it marks some
# empty values and documents (in a flow mapping, at the end of the text) where the next
# token starts; it reads "!" alone as "".
PARTING = (
    "a:\tb\n", "a: b\t\nc: d\n", "a: |#\n  x\n", "- >+#\n", "a: [x?y]\n", "{a: b?c}\n",
    "- !:*a!!str x\n", "!=!!int <<: 1\n", "? k", "---", "a: 1\n---", "{a: }\n", "a: !\n",
    "a:\nb: 1\n", "- \n- x\n",
)


@pytest.mark.parametrize("text", PARTING)
def test_both_parsers_answer_alike_where_they_part(text: str) -> None:
    _same_answer(text)


# Where a planted string goes: a value, a key, an item of a flow and of a block sequence,
# a line of a block scalar, a comment; written raw (often not YAML at all) and quoted.
_PLANTS = (
    "a: {}\nb: 1\n", "{}: 1\n", "a: [x, {}, y]\n", "a:\n  - {}\n  - z\n",
    "a: |\n  {}\n  more\nb: 2\n", "a: 1 # {}\n", "a: {{k: {}}}\n", "- {}\n",
)


def test_both_parsers_answer_alike_on_every_hostile_string() -> None:
    strings = hostile("value") | hostile("") | hostile("a: b")
    for value in strings.values():
        for plant in _PLANTS:
            for written in (value, f"'{value}'", f'"{value}"'):
                _same_answer(plant.replace("{}", written).replace("{{", "{").replace("}}", "}"))


# Pieces of YAML, every indicator among them, glued at random: mostly nonsense, enough of
# it valid and odd (explicit keys, empty values, anchors, tags, flow in flow, directives,
# document markers, block scalars, CRLF, non-ASCII) to find where the parsers part. The
# same generator (and two more: flow collections, indented lines), run offline on
# 1,350,000 texts of which libyaml read about 118,000 without a problem, found no
# difference once the rules of loader._C_UNSAFE and loader._Unsure were in place.
_PIECES = (
    "- ", "-", "key: ", "k", "a: ", ": ", ":", "  ", " ", "\n", "\n", "\r\n", "\r", "[", "]",
    "{", "}", ", ", ",", "&a ", "*a", "<<: ", "'", '"', "|", "|-", ">", ">+", "#", " #c", "---",
    "---\n", "...\n", "? ", "?", "!!str ", "!!int ", "!x ", "!", "%YAML 1.1\n", "é", "☃", "😀",
    "x", "1", "-1", "0755", ".nan", "~", "\\", "\\n", "yes", "1e3", "@", "`", "%", "\u3000",
    "\t", "\ufeff", "\u2028", "\x85", "\x00", "&a", "*a:", "- - ", "|2", ">1-", "!<tag:x> ",
    "%TAG !e! tag:e,2000:\n", "!e!x ", "x#y", "\n...", "\n---",
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=30).map("".join))
def test_both_parsers_answer_alike_on_random_yaml(text: str) -> None:
    _same_answer(text)


def test_a_raw_control_character_is_a_problem_at_its_place_not_a_traceback() -> None:
    for text, (line, column) in (("a: 1\nb: x\x1by\n", (2, 5)), ("a:\r\n  b: '\x00'\n", (2, 7))):
        docs, (problem,) = load_yaml("f.yaml", text)
        assert not docs and (problem.line, problem.column) == (line, column), problem
        assert "may not be written as it is" in problem.message


def test_a_value_its_explicit_tag_cannot_take_is_a_problem_not_a_traceback() -> None:
    for value in ('!!int ""', "!!float ''", "!!bool maybe", "!!timestamp x", "!!int 0x"):
        docs, (problem,) = load_yaml("f.yaml", f"a: 1\nb: {value}\n")
        assert not docs and (problem.line, problem.column) == (2, 4), problem
        assert "is not a valid !!" in problem.message
