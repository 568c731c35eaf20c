"""`--help` texts that explain behaviour users met: `watch` on a path vs a URL."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_watch_help_says_a_path_is_seen_at_once_and_a_url_every_poll() -> None:
    r = CliRunner().invoke(main, ["watch", "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "A path (also of a bare repository) is watched for file events" in text
    assert "A URL, including file:///..., is asked with `git ls-remote` every --poll seconds" in text


def test_docs_say_the_same() -> None:
    ops = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    assert "### A path or a URL" in (ROOT / "docs" / "operations.md").read_text()
    assert "also `file:///srv/manifests.git`" in ops
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "including `file:///...`" in readme and "`git ls-remote` every `--poll`" in readme
