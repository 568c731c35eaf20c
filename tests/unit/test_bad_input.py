"""Bad input in messages and in the files the SSH transport reads.

Escaping (``reconciler.errors.printable``), image references as Docker parses them
(``reconciler.desired.imageref``), and the SSH key / known_hosts files: an unreadable or
unparsable file is one error that quotes nothing from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import paramiko
import pytest

from reconciler.desired import imageref
from reconciler.errors import ManifestError, Problem, ReconcilerError, printable
from reconciler.model import Host, SshConnection
from reconciler.transport.base import TransportError
from reconciler.transport.ssh import HostKeyRefused, SshTransport

ROOT = Path(__file__).resolve().parents[2]
SECRET_LINE = "root:x:0:0:TOPSECRET-LINE:/root:/bin/bash"


def test_printable_escapes_every_control_character_and_keeps_the_rest() -> None:
    assert printable("a\r\nb\x1b[31m\x00\u202e\u2028 é'\"\\") == (
        "a\\r\\nb\\x1b[31m\\x00\\u202e\\u2028 é'\"\\"
    )
    assert printable(repr("a\nb")) == repr("a\nb")  # already quoted: unchanged


def test_problem_line_cannot_be_forged_by_a_key() -> None:
    key = "A\r\nerror: web.yaml:1:1: forged\x1b]0;title\x07"
    problem = Problem("f\n.yaml", 3, 5, f"env.{key}", f"value of {key} is bad")
    text = str(problem)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\x07" not in text
    assert text.startswith("f\\n.yaml:3:5: env.A\\r\\nerror")
    lines = ManifestError([problem]).report()
    assert len(lines) == 2 and lines[-1].startswith("1 problem(s) found")


def test_other_errors_are_escaped_and_cannot_start_a_line() -> None:
    lines = ReconcilerError("cannot pull 'x'\nerror: forged\x1b[2J").report()
    assert lines == ["error: cannot pull 'x'", "  error: forged\\x1b[2J"]


# ------------------------------------------------------------------ image references

VALID = [
    "sample-app",
    "sample-app:v1",
    "registry.example:5000/team/sample-app:v3",
    "localhost/a__b/c--d.e:latest",
    "[::1]:5000/a:b",
    "a@sha256:" + "a" * 64,
    "a:t@sha512:" + "0" * 128,
    "a" * 237,  # docker.io/library/ + 237 = 255
    "x/" + "a" * 243,  # docker.io/x/... = 255
    "a:" + "t" * 128,
]
INVALID = [
    "Sample-App",
    "a___b",
    "a.-b",
    "a:" + "t" * 129,
    "a:-t",
    "a:é",
    "a" * 238,
    "x/" + "a" * 244,
    "registry.example/" + "a" * 239,
    "a@sha256:" + "A" * 64,
    "a@sha256:" + "a" * 63,
    "a@md5:" + "a" * 32,
    "f" * 64,
    "a\n",
    "a:v1\n",
    "",
]


@pytest.mark.parametrize("ref", VALID, ids=lambda r: r[:30])
def test_image_reference_valid(ref: str) -> None:
    assert imageref.problem(ref) is None


@pytest.mark.parametrize("ref", INVALID, ids=lambda r: repr(r[:30]))
def test_image_reference_invalid(ref: str) -> None:
    assert imageref.problem(ref) is not None


def test_schema_pattern_is_the_reconcilers_grammar() -> None:
    common = json.loads((ROOT / "schemas" / "common.schema.json").read_text())
    assert common["$defs"]["image"]["pattern"] == imageref.SCHEMA_PATTERN


# ------------------------------------------------------------------ SSH files


def _transport(tmp_path: Path, **ssh: str) -> SshTransport:
    conn = SshConnection(user="deploy", **ssh)  # type: ignore[arg-type]
    # 192.0.2.1 (TEST-NET-1): never reached, the files are refused before connecting.
    host = Host(name="app1", address="192.0.2.1", roles=("app",), ssh=conn)
    return SshTransport(host, timeout=0.5)


def _passwd_like(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.write_text(f"{SECRET_LINE}\nlist:x:38:38:Mailing List Manager:/var/list:/bin/sh\n")
    return path


@pytest.mark.parametrize("content", ["passwd", "binary", "missing", "directory"])
def test_known_hosts_that_is_not_one_is_one_clear_error(tmp_path: Path, content: str) -> None:
    path = {
        "passwd": _passwd_like(tmp_path),
        "binary": tmp_path / "bin",
        "missing": tmp_path / "nope",
        "directory": tmp_path,
    }[content]
    if content == "binary":
        path.write_bytes(b"host ssh-ed25519 \xd0\xff\x00" + SECRET_LINE.encode())
    with pytest.raises(HostKeyRefused) as info:
        _transport(tmp_path, known_hosts=str(path)).connect()
    message = str(info.value)
    assert f"cannot use known_hosts {str(path)!r}" in message
    assert "TOPSECRET" not in message and "Mailing" not in message


@pytest.mark.parametrize("content", ["passwd", "missing", "garbage-pem"])
def test_key_that_is_not_one_is_one_clear_error(tmp_path: Path, content: str) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    path = {"passwd": _passwd_like(tmp_path), "missing": tmp_path / "nope"}.get(content)
    if path is None:
        path = tmp_path / "key"
        path.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET_LINE}\n")
    with pytest.raises(TransportError) as info:
        _transport(tmp_path, key=str(path), known_hosts=str(known)).connect()
    message = str(info.value)
    assert f"cannot use the SSH key {str(path)!r}" in message
    assert "TOPSECRET" not in message and "Mailing" not in message


def test_a_real_key_is_accepted(tmp_path: Path) -> None:
    """The key check refuses only what is not a key: a real one gets as far as the
    network (here: nothing listens, so a connection error, not a key error)."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    key = tmp_path / "id_ed25519"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key))
    with pytest.raises(TransportError) as info:
        _transport(tmp_path, key=str(key), known_hosts=str(known)).connect()
    assert "cannot use the SSH key" not in str(info.value)
