"""YAML loading: positions, duplicate keys, merges, raw string maps, alias bombs."""

from __future__ import annotations

import time

from reconciler.desired.loader import load_yaml


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
