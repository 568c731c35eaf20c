"""`reconcile haproxy COMMAND...`, pure part: the line sent and which socket gets it."""

from __future__ import annotations

import pytest

from reconciler.lb.haproxy.console import command_line, for_master


@pytest.mark.parametrize(("words", "line"), [
    (["show", "stat"], "show stat"),
    (["show stat"], "show stat"),  # one quoted word is the same line
    (["set", "weight", "be_web/local.x-0", "50"], "set weight be_web/local.x-0 50"),
    (["show", "stat", "-1", "4", "-1"], "show stat -1 4 -1"),
    (["  show", "", "info "], "show info"),
])
def test_words_become_one_line(words: list[str], line: str) -> None:
    assert command_line(words) == line


@pytest.mark.parametrize("words", [
    [], [""], ["  "],
    ["show info; shutdown sessions server be_web/x"],
    ["show", "info\nshow", "stat"], ["show\rinfo"], ["show\0info"],
])
def test_empty_chained_or_multi_line_commands_are_refused(words: list[str]) -> None:
    with pytest.raises(ValueError, match=r"no command|refusing"):
        command_line(words)


@pytest.mark.parametrize(("line", "master"), [
    ("show proc", True), ("SHOW PROC", True), ("reload", True), ("show startup-logs", True),
    ("@1 show info", True), ("@!1234 show stat", True), ("@master show proc", True),
    ("show stat", False), ("show info", False), ("show servers state be_web", False),
    ("set weight be_web/s 10", False), ("show process", False), ("reloads", False),
])
def test_master_only_commands_go_to_the_master(line: str, master: bool) -> None:
    assert for_master(line.split()) is master
