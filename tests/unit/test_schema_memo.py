"""The schema memo: a manifest file that passed the schema check is not checked again
while its bytes and the schemas are the same; a changed file, a changed schema or a
file with problems is checked (and its problems reported) every time."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from reconciler.desired import manifests
from reconciler.desired.schemamemo import SchemaMemo, schema_digest
from reconciler.errors import ManifestError

SAMPLE = Path(__file__).resolve().parents[2] / "sample-repo"


def sample_files() -> list[tuple[str, bytes]]:
    return sorted(
        (str(p.relative_to(SAMPLE)), p.read_bytes())
        for p in SAMPLE.rglob("*.yaml")
        if "app" not in p.parts
    )


@pytest.fixture
def checked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose documents went through the schema check, in order."""
    seen: list[str] = []
    real = manifests.check_document

    def counting(doc: manifests.Document) -> list[manifests.Problem]:
        seen.append(doc.file)
        return real(doc)

    monkeypatch.setattr(manifests, "check_document", counting)
    return seen


def load(files: list[tuple[str, bytes]], state: Path) -> None:
    memo = SchemaMemo.in_state_dir(state)
    try:
        manifests.load_manifests(files, memo)
    finally:
        memo.save()


def test_unchanged_files_are_not_checked_again(tmp_path: Path, checked: list[str]) -> None:
    files = sample_files()
    load(files, tmp_path)
    assert sorted(set(checked)) == [n for n, _ in files]
    checked.clear()
    load(files, tmp_path)
    assert checked == []
    mode = stat.S_IMODE((tmp_path / "schema-memo").stat().st_mode)
    assert mode == 0o600


def test_a_changed_file_is_checked_and_a_bad_one_reported_each_time(
    tmp_path: Path, checked: list[str]
) -> None:
    files = sample_files()
    load(files, tmp_path)
    name = next(n for n, _ in files if n.startswith("services/"))
    changed = [(n, r + b"# a comment\n" if n == name else r) for n, r in files]
    checked.clear()
    load(changed, tmp_path)
    assert set(checked) == {name}  # only the file whose bytes changed

    bad = [(n, r.replace(b"replicas:", b"replicaz:", 1) if n == name else r) for n, r in files]
    assert b"replicaz" in dict(bad)[name]
    for _ in range(2):  # never remembered: reported on every pass
        checked.clear()
        with pytest.raises(ManifestError, match="replicaz"):
            load(bad, tmp_path)
        assert set(checked) == {name}


def test_a_changed_schema_checks_everything_again(tmp_path: Path, checked: list[str]) -> None:
    files = sample_files()
    load(files, tmp_path)
    checked.clear()
    other = SchemaMemo(tmp_path / "schema-memo", salt="0" * 64)  # another schema version
    manifests.load_manifests(files, other)
    assert sorted(set(checked)) == [n for n, _ in files]
    other.save()
    checked.clear()
    load(files, tmp_path)  # the memo of the current schemas starts afresh too
    assert sorted(set(checked)) == [n for n, _ in files]


def test_the_salt_covers_the_schema_files(tmp_path: Path) -> None:
    (tmp_path / "a.schema.json").write_text("{}")
    before = schema_digest(tmp_path)
    schema_digest.cache_clear()
    (tmp_path / "a.schema.json").write_text('{"type": "object"}')
    assert schema_digest(tmp_path) != before
    schema_digest.cache_clear()


def test_no_state_dir_no_memo_file(tmp_path: Path, checked: list[str]) -> None:
    load(sample_files(), tmp_path / "absent")
    assert not (tmp_path / "absent").exists()
    (tmp_path / "schema-memo").write_bytes(b"\xff\xfe garbage")
    checked.clear()
    load(sample_files(), tmp_path)  # an unreadable memo is an empty one
    assert checked
