"""The corpus of broken manifest repositories under ``tests/corpus``.

Each case folder is a small complete manifests repository (the sample repository with one
thing broken; ``many-errors`` has several independent errors) and a file ``expected.txt``
with one line per problem that ``reconcile validate --worktree`` must report::

    FILE:LINE:COLUMN: FIELD: MESSAGE

FIELD is the field path as printed (``(document)`` for a whole document) and MESSAGE the
whole message, with the bad value where there is one. Other lines starting with ``#``
are comments. The check is exact both ways: exit status 1, every expected line equal to
a reported problem (file, line, column, field and message) and every reported problem
equal to an expected line, one to one. No raw control character (anything ``str.isprintable`` refuses, apart
from the line breaks between problems) may appear in the output: values, keys and file
names are shown escaped.

"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hostile_support import (
    EXTRA_KEY_STRINGS,
    all_fields,
    base_files,
    base_value,
    find_instance,
    hostile,
    template,
)
from repo_support import commit, git, scratch_repo

from reconciler.cli import main
from reconciler.errors import ManifestError

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "corpus"
SAMPLE = ROOT / "sample-repo"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())

_REPORTED = re.compile(
    r"^error: (?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<field>.*?): (?P<msg>.*)$")
_EXPECTED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<field>.*?): (?P<msg>.+)$")
_COUNT = re.compile(r"^(\d+) problem\(s\) found; nothing was changed\.$")


@dataclass(frozen=True)
class Line:
    """A reported problem, or an expected one."""

    file: str
    line: int
    col: int
    field: str
    msg: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.field}: {self.msg}"


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
        assert m, f"{path}:{n}: not FILE:LINE:COLUMN: FIELD: MESSAGE: {raw!r}"
        lines.append(Line(m["file"], int(m["line"]), int(m["col"]), m["field"], m["msg"]))
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
            reported.append(
                Line(m["file"], int(m["line"]), int(m["col"]), m["field"], m["msg"]))
    if count is not None and int(count[1]) != len(reported):
        malformed.append(f"count line says {count[1]}, {len(reported)} problem(s) listed")
    return reported, malformed


def matches(expected: Line, reported: Line) -> bool:
    """Exact: same file, line, column, field and whole message."""
    return expected == reported


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


def _git_state(repo: Path) -> dict[str, object]:
    """What a reader of a repository could change: every file of the work tree and of
    .git except the index (whose stat cache git itself may refresh), the refs, HEAD,
    the status and the stash."""
    return {
        "files": {k: v for k, v in _snapshot(repo).items() if k != ".git/index"},
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(repo, "rev-parse", "HEAD"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "stash": git(repo, "stash", "list"),
        "ls": git(repo, "ls-files", "--stage"),
    }


@pytest.mark.parametrize("broken", [False, True], ids=["valid", "many-errors"])
def test_validate_of_a_git_repository_changes_nothing(tmp_path: Path, broken: bool) -> None:
    """``validate --repo`` (from the commit) and ``validate --worktree`` leave a git
    repository exactly as it was: work tree, refs, HEAD, index entries, status; with an
    uncommitted edit and an untracked file lying around too."""
    repo = scratch_repo(tmp_path)
    if broken:
        for f in (CORPUS / "many-errors").rglob("*.yaml"):
            target = repo / f.relative_to(CORPUS / "many-errors")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
        commit(repo, "broken")
    (repo / "services" / "web.yaml").write_text(
        (repo / "services" / "web.yaml").read_text() + "\n# uncommitted\n")
    (repo / "untracked.yaml").write_text("kind: Nothing\n")
    before = _git_state(repo)
    for args in (["--repo", str(repo)], ["--worktree", "--repo", str(repo)]):
        outcome = validate(*args)
        assert outcome.crash is None, outcome.crash
        want = 1 if broken or "--worktree" in args else 0  # the untracked file is bad
        assert outcome.code == want, (args, outcome.stdout, outcome.stderr)
        assert _git_state(repo) == before, args


# --------------------------------------------------------------------------- hostile input
# Every string field of every kind (from the schemas: see tests/hostile_support.py) x every
# string of a hostile set. Each variant is either rejected with a problem at the file and
# line where the string was planted, every message line escaped, or accepted and shown
# harmless: the HAProxy config rendered for it has the shape of the base's (no forged line,
# no split word, printable ASCII only), and env values arrive in the container spec verbatim.


def _loader_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse and schema-check each unchanged base file once for the whole matrix (both are
    pure functions of the text; the documents are never mutated), so a case costs the
    parse of its one planted file: the matrix runs in seconds."""
    import reconciler.desired.manifests as manifests

    parsed: dict[tuple[str, str], Any] = {}
    checked: dict[int, Any] = {}
    load_yaml, check_document = manifests.load_yaml, manifests.check_document

    def memo_load(file: str, text: str) -> Any:
        if (file, text) not in parsed:
            parsed[(file, text)] = load_yaml(file, text)
        return parsed[(file, text)]

    def memo_check(doc: Any) -> Any:
        if id(doc) not in checked:
            checked[id(doc)] = (doc, check_document(doc))  # keeps doc alive: ids stay unique
        return checked[id(doc)][1]

    monkeypatch.setattr(manifests, "load_yaml", memo_load)
    monkeypatch.setattr(manifests, "check_document", memo_check)


def _config_shape(text: str) -> list[int]:
    """Words per line of a rendered config: a forged line or a split word changes it."""
    return [len(line.split()) for line in text.splitlines()]


def _rendered(m: Any) -> dict[tuple[str, str], str]:
    """The HAProxy config of every load balancer in every environment, with one server per
    release, host and replica (the renderer is pure; the addresses are the hosts')."""
    from reconciler.desired.manifests import resolve
    from reconciler.identity import backend_name, container_name, server_name
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.lb.haproxy.render import render
    from reconciler.lb.port import ServerEntry

    out = {}
    for env in m.environment_names():
        d = resolve(m, env, "0" * 40)
        servers = [
            ServerEntry(backend_name(s.name), server_name(h, container_name(
                env, s.name, r.revision, "0" * 64, i)), d.host(h).address, 30000, r.weight)
            for s in d.services for r in s.releases for h in s.hosts for i in range(s.replicas)
        ]
        for lb in d.loadbalancers:
            paths = HAProxyPaths.embedded(Path("/var/lib/reconciler"), env)
            out[(env, lb.name)] = render(d, lb, servers, paths)
    return out


def _env_arrives_verbatim(m: Any, case: Any) -> list[str]:
    """An accepted env value is in the container spec of its service exactly as written."""
    from reconciler.desired.manifests import resolve

    if case.field.kind != "value" or case.field.path[-2:] != ("env", "{}"):
        return []
    found = {
        value
        for env in m.environment_names()
        for s in resolve(m, env, "0" * 40).services
        for r in s.releases
        for _, value in r.spec.env
    }
    return [] if case.value in found else ["env value accepted but not passed verbatim"]


def _judge(case: Any, base_configs: dict[tuple[str, str], str]) -> list[str]:
    """What is wrong with how the loader treated one planted string (empty: right)."""
    from reconciler.desired.manifests import load_manifests

    files = {**BASE_TEXTS, case.file: case.text}
    try:
        m = load_manifests([(n, t.encode()) for n, t in files.items()])
    except ManifestError as exc:
        lines = exc.report()
        wrong = [f"not escaped: {line!r}" for line in lines if not line.isprintable()]
        reported = [_REPORTED.match(line) for line in lines[:-1]]
        wrong += [f"malformed: {ln!r}" for ln, r in zip(lines, reported, strict=False) if not r]
        here = [r for r in reported if r and (r["file"], int(r["line"])) == (case.file, case.line)]
        if not here:
            wrong.append(f"no problem at {case.file}:{case.line}; reported: {lines}")
        return wrong
    configs = _rendered(m)
    wrong = [
        f"accepted and changed the shape of the HAProxy config of {key}"
        for key, text in configs.items()
        if _config_shape(text) != _config_shape(base_configs[key])
        or not all(ch.isascii() and (ch.isprintable() or ch == "\n") for ch in text)
    ]
    return wrong + _env_arrives_verbatim(m, case)


BASE_TEXTS = base_files()
FIELDS = all_fields()


@cache
def _cases() -> list[Any]:
    cases = []
    for field in FIELDS:
        where = find_instance(field)
        assert where, f"the rich base in tests/hostile_support.py has no {field}: add it"
        strings = hostile(base_value(field, *where))
        if field.kind == "extra":
            strings = {k: strings[k] for k in EXTRA_KEY_STRINGS}
        planted = template(field, *where)
        cases += [planted.plant(name, value) for name, value in strings.items()]
    return cases


# The matrix in shards (every SHARDS-th case), so that `pytest -n` spreads it over CPUs.
SHARDS = 4


def test_hostile_matrix_is_big_enough() -> None:
    assert len(_cases()) >= 1000


@pytest.mark.parametrize("shard", range(SHARDS))
def test_hostile_matrix(monkeypatch: pytest.MonkeyPatch, shard: int) -> None:
    from reconciler.desired.manifests import load_manifests

    _loader_memo(monkeypatch)
    base = load_manifests([(n, t.encode()) for n, t in BASE_TEXTS.items()])
    base_configs = _rendered(base)
    assert base_configs, "the base renders no HAProxy config"
    cases = _cases()[shard::SHARDS]
    failures = []
    for case in cases:
        try:
            wrong = _judge(case, base_configs)
        except Exception:  # a traceback is a failure of the case, reported with the others
            wrong = [f"crashed:\n{traceback.format_exc()}"]
        failures += [f"{case.field} [{case.variant}]: {w}" for w in wrong]
    assert cases
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:40])


def test_hostile_fields_cover_the_schemas() -> None:
    """The matrix reaches keys, extra keys and values of every kind (a schema walk that
    found nothing would make the matrix pass vacuously)."""
    kinds = {(f.doc_kind, f.kind) for f in FIELDS}
    for doc_kind in ("Inventory", "LoadBalancer", "Service", "Environment"):
        assert {(doc_kind, "value"), (doc_kind, "extra")} <= kinds
    assert len([f for f in FIELDS if f.kind == "key"]) >= 8
    assert len([f for f in FIELDS if f.kind == "value"]) >= 60
