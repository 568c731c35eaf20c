"""libyaml's fast path of the loader against the pure-Python parser, on random YAML.

``reconciler.desired.loader.load_yaml`` reads a file with libyaml when ``_C_UNSAFE``
lets it through and libyaml reads it without a problem; its answer must then be the
pure-Python parser's, exactly (documents, values, positions of values and keys). This
glues pieces of YAML at random (three generators: loose pieces with every indicator,
flow collections, indented lines) and prints every text where the two answers differ.
tests/unit/test_loader.py runs a small derandomized sample of the first generator.

    python bench/loader_fuzz.py [--texts 150000] [--seed 1] [--mode frag|flow|lines|all]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.desired import loader

PIECES = [
    "- ", "-", "key: ", "k", "a: ", ": ", ":", "  ", " ", "\n", "\n", "\n", "\r\n", "\r", "[",
    "]", "{", "}", ", ", ",", "&a ", "*a", "&b ", "*b", "<<: ", "<<", "'", '"', "|", "|-", ">",
    ">+", "#", " #c", "---", "---\n", "...", "...\n", "? ", "?", "!!str ", "!!int ", "!!map ",
    "!x ", "!", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "é", "☃", "😀", "x", "1", "-1", "0755",
    ".nan", "~", "null", "\\", "\\n", "\\t", "%YAML 1.2\n", "%YAML 2.0\n", "%FOO x\n",
    "%TAG !e! tag:e,2000:\n", "!e!x ", "&", "*", "&a", "&a-b ", "*a:", "!<tag:x> ", "\\u00e9",
    "\\x", '"\\', "'\\'", "\\\n", "--- |\n", "- - ", "\n...", "\n---", "  - ", "    ", "x#y",
    " # ", "|2", "|+", ">1-", "|10", "!a!", "!!", "!a", "&a!", "*a!", "a!", "=!", ":!", "\\x41",
    "\\u2028", "yes", "on", "2001-01-01", "1e3", "0x1f", "=", "@", "`", "%", "\u00a0",
    "\ufffd", "\u3000",
]
FLOW = [
    "?", "? ", "!x ", "!", "&a", "*a ", "|", "%", "@", "[", "]", "{", "}", ", ", ",", ": ", ":",
    "a", "b:c", "-", "- ", " ", "\n", "\n  ", "'q'", '"d"', "&a ", "*a", "#c\n", "!!str ", "1",
    "x y", "é", ">", "---", "...",
]
VALUES = [
    "", "v", "1", "[a, b]", "{a: 1, b: [c]}", "'s''q'", '"e\\n"', "|", "|-", ">", "&x v", "*x",
    "!!str 3", "# c", "v # c", "x:y", "[a: b]", "{? a}", "-x", "a - b", "-", "~", "[]", "{}",
    "'", '"', "[", "{", "]", "}", "@x", "`x", "%x", "a  b", "a #b", "a#b",
]


def text(rng: random.Random, mode: str) -> str:
    n = rng.randint(1, 30)
    if mode == "flow":
        return rng.choice(["", "a: ", "- ", "? "]) + "".join(rng.choice(FLOW) for _ in range(n))
    if mode == "lines":
        lines = [
            " " * rng.choice([0, 0, 2, 2, 4, 1, 3])
            + rng.choice(["", "", "- ", "- - "])
            + rng.choice(["", "k: ", "key: ", "a b: ", "'q k': ", '"d": ', "<<: ", "? ", ": "])
            + rng.choice(VALUES)
            for _ in range(rng.randint(1, 8))
        ]
        return rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n"])
    return "".join(rng.choice(PIECES) for _ in range(n))


def answer(read: Any) -> str:
    try:
        docs, problems = read()
    except Exception as exc:
        return f"raised {exc!r}"
    return repr(([(d.line, d.data, d.positions, d.key_positions) for d in docs], problems))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=150_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=["frag", "flow", "lines", "all"], default="all")
    args = parser.parse_args()
    if loader._CLoader is None:
        print("PyYAML has no libyaml here: there is no fast path to compare", file=sys.stderr)
        return 2
    differ = 0
    for mode in ["frag", "flow", "lines"] if args.mode == "all" else [args.mode]:
        rng = random.Random(args.seed)
        fast = 0
        for _ in range(args.texts):
            t = text(rng, mode)
            if loader._C_UNSAFE.search(t):
                continue
            try:
                _, problems = loader._load("f.yaml", loader._CLoader(t))
            except loader._Unsure:
                continue
            if problems:
                continue
            fast += 1
            c = answer(lambda t=t: loader.load_yaml("f.yaml", t))
            py = answer(lambda t=t: loader.read_python("f.yaml", t))
            if c != py:
                differ += 1
                print(f"differ: {t!r}\n  libyaml: {c[:300]}\n  python:  {py[:300]}")
        print(f"{mode}: {args.texts} texts, {fast} read by libyaml without a problem, "
              f"{differ} differences so far")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
