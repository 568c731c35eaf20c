"""The corpus of broken manifest repositories under ``tests/corpus``.

Each case folder is a small complete manifests repository (the sample repository with one
thing broken; ``many-errors`` has several independent errors) and a file ``expected.txt``
with one line per problem that ``reconcile validate --worktree`` must report::

    FILE:LINE: FIELD: SUBSTRING

FIELD is the field path as printed (``(document)`` for a whole document) and SUBSTRING a
distinctive piece of the message, with the bad value where there is one. Other lines
starting with ``#`` are comments. The check is exact both ways: exit status 1, every
expected line matched by a reported problem and every reported problem by an expected
line, one to one. No raw control character (anything ``str.isprintable`` refuses, apart
from the line breaks between problems) may appear in the output: values, keys and file
names are shown escaped.

"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
SAMPLE = ROOT / "sample-repo"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())

_REPORTED = re.compile(r"^error: (?P<file>[^:]+):(?P<line>\d+):\d+: (?P<field>.*?): (?P<msg>.*)$")
_EXPECTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>.*?): (?P<msg>.+)$")
_COUNT = re.compile(r"^(\d+) problem\(s\) found; nothing was changed\.$")


@dataclass(frozen=True)
class Line:
    """A reported problem, or an expected one (then ``msg`` is a substring)."""

    file: str
    line: int
    field: str
    msg: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.msg}"


@dataclass(frozen=True)
class Expectation:
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    crash: str | None  # traceback of an exception other than the CLI's own exit


def read_expected(case: Path) -> Expectation:
    path = case / "expected.txt"
    text = path.read_text(encoding="utf-8")
    lines = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        m = _EXPECTED.match(raw)
        assert m, f"{path}:{n}: not FILE:LINE: FIELD: SUBSTRING: {raw!r}"
        lines.append(Line(m["file"], int(m["line"]), m["field"], m["msg"]))
    assert lines, f"{path}: no expected problem"
    return Expectation(tuple(lines))


def validate(*args: str) -> Outcome:
    """Run ``reconcile validate ARGS`` in-process."""
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()  # click >= 8.2: stderr is always separate
    result = runner.invoke(main, ["validate", *args])
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        crash = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, result.stderr, crash)


def parse_reported(stderr: str) -> tuple[list[Line], list[str]]:
    """The problems printed on stderr, and whatever is malformed about the output."""
    lines = stderr.splitlines()
    if not lines:
        return [], ["nothing on stderr"]
    malformed = []
    count = _COUNT.match(lines[-1])
    if count is None:
        malformed.append(f"last line is not the count line: {lines[-1]!r}")
    reported = []
    for raw in lines[:-1]:
        m = _REPORTED.match(raw)
        if m is None:
            malformed.append(f"not an 'error: FILE:LINE:COL: FIELD: MESSAGE' line: {raw!r}")
        else:
            reported.append(Line(m["file"], int(m["line"]), m["field"], m["msg"]))
    if count is not None and int(count[1]) != len(reported):
        malformed.append(f"count line says {count[1]}, {len(reported)} problem(s) listed")
    return reported, malformed


def matches(expected: Line, reported: Line) -> bool:
    same_place = (expected.file, expected.line, expected.field) == (
        reported.file,
        reported.line,
        reported.field,
    )
    return same_place and expected.msg in reported.msg


def pair(expected: list[Line], reported: list[Line]) -> tuple[list[Line], list[Line]]:
    """Match one to one (bipartite matching); return (unmatched expected, unmatched reported)."""
    owner: dict[int, int] = {}  # reported index -> expected index

    def assign(e: int, seen: set[int]) -> bool:
        for r, rep in enumerate(reported):
            if r not in seen and matches(expected[e], rep):
                seen.add(r)
                if r not in owner or assign(owner[r], seen):
                    owner[r] = e
                    return True
        return False

    missing = [expected[e] for e in range(len(expected)) if not assign(e, set())]
    surplus = [reported[r] for r in range(len(reported)) if r not in owner]
    return missing, surplus


def differences(expectation: Expectation, outcome: Outcome) -> list[str]:
    """How the validator's answer differs from the expectation (empty when it is right)."""
    if outcome.crash:
        return [f"crashed:\n{outcome.crash}"]
    if outcome.code != 1 or "ok:" in outcome.stdout:
        return [
            f"exit {outcome.code}, expected 1; stdout: {outcome.stdout!r}; "
            f"stderr: {outcome.stderr!r}"
        ]
    reported, wrong = parse_reported(outcome.stderr)
    raw = sorted({ch for ch in outcome.stderr if ch != "\n" and not ch.isprintable()})
    if raw:  # user input is escaped in every message, keys and file names included
        wrong.append(f"raw control characters in the output: {raw!r}")
    missing, surplus = pair(list(expectation.lines), reported)
    wrong += [f"expected, not reported: {line}" for line in missing]
    wrong += [f"reported, not expected: {line}" for line in surplus]
    return wrong


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# Taken before any validation runs (at import), compared by test_validate_changes_nothing.
CORPUS_BEFORE = _snapshot(CORPUS)


@cache
def outcome_of(case: Path) -> Outcome:
    """``validate --worktree`` of a case, run once per session."""
    return validate("--worktree", "--repo", str(case))


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 36
    assert len(read_expected(CORPUS / "many-errors").lines) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path) -> None:
    expectation = read_expected(case)
    wrong = differences(expectation, outcome_of(case))
    assert not wrong, "\n".join(wrong)


def test_sample_repo_is_valid() -> None:
    outcome = validate("--worktree", "--repo", str(SAMPLE))
    assert outcome.crash is None, outcome.crash
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout.startswith("ok: ")


def test_unknown_environment_of_valid_repo(tmp_path: Path) -> None:
    for f in SAMPLE.rglob("*.yaml"):
        target = tmp_path / f.relative_to(SAMPLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    outcome = validate("--worktree", "--repo", str(tmp_path), "--env", "nosuchenv")
    assert outcome.code == 1
    assert "error: unknown environment 'nosuchenv' (known: production, staging)" in outcome.stderr


def test_validate_changes_nothing() -> None:
    """No file of the corpus is created, changed or removed by validating every case."""
    for case in CASES:
        outcome_of(case)  # already run (and cached) when test_case ran first
    assert _snapshot(CORPUS) == CORPUS_BEFORE
