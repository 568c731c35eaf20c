"""Text, JSON and Markdown forms of plans and diffs. Pure: strings in, strings out."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from reconciler.desired.diff import EnvironmentDiff
from reconciler.plan.actions import Action
from reconciler.plan.planner import Plan, count_by_kind

_SYMBOL_ORDER = "+~!-"


def plan_text(plan: Plan, source: str) -> str:
    """The plan grouped by host, then service; actions keep their execution order."""
    head = f"Plan for environment {plan.environment} at {source}"
    head += "".join(f"\nnote: {note}" for note in plan.notes)
    if plan.empty and plan.notes:
        return f"{head}\nNo changes will be made; held services stay as they run.\n"
    if plan.empty:
        return f"{head}\nNo changes: live state matches the desired state.\n"
    groups: dict[str, dict[str, list[tuple[int, Action]]]] = defaultdict(lambda: defaultdict(list))
    for i, action in enumerate(plan.actions):
        groups[action.host][action.service or "(load balancer)"].append((i + 1, action))
    lines = [head, ""]
    for host in sorted(groups):
        lines.append(f"host {host}")
        for service in sorted(groups[host]):
            lines.append(f"  service {service}" if service[0] != "(" else f"  {service}")
            for step, action in groups[host][service]:
                lines.append(f"    {step:>3}. {action.symbol} {action.describe()}")
                lines.append(f"           because {action.reason}")
        lines.append("")
    summary = ", ".join(f"{n} {kind}" for kind, n in count_by_kind(plan.actions).items())
    lines.append(f"{len(plan.actions)} action(s): {summary}.")
    lines.append(_reloads_line(plan))
    return "\n".join(lines) + "\n"


def _reloads_line(plan: Plan) -> str:
    """Which steps reload HAProxy (the planner decided; each config step says it too)."""
    steps = [(i + 1, a) for i, a in enumerate(plan.actions) if a.reloads]
    if not steps:
        return "HAProxy reloads: none (runtime API and config files only)."
    return "HAProxy reloads: " + ", ".join(f"step {i} on {a.host}" for i, a in steps) + "."


def plan_json(plan: Plan, source: str) -> str:
    doc: dict[str, Any] = {
        "environment": plan.environment,
        "commit": plan.commit,
        "source": source,
        "changes_pending": not plan.empty,
        "summary": count_by_kind(plan.actions),
        "reloads": [i + 1 for i, a in enumerate(plan.actions) if a.reloads],
        "notes": list(plan.notes),
        "actions": [{"step": i + 1, **a.to_json()} for i, a in enumerate(plan.actions)],
    }
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def diff_text(diffs: list[EnvironmentDiff], base: str, head: str) -> str:
    lines = [f"Desired state {base} -> {head}"]
    for d in diffs:
        lines.append("")
        lines.append(f"environment {d.environment}:" + ("" if d.items else " no changes"))
        for item in d.items:
            lines.append(f"  {item.status} {item.kind} {item.name}")
            lines += [f"    {c}" for c in item.changes]
    return "\n".join(lines) + "\n"


def diff_json(diffs: list[EnvironmentDiff], base: str, head: str) -> str:
    doc = {
        "base": base,
        "head": head,
        "environments": [
            {
                "environment": d.environment,
                "changes": [
                    {"kind": i.kind, "name": i.name, "status": i.status, "changes": list(i.changes)}
                    for i in d.items
                ],
            }
            for d in diffs
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


# Characters that GitHub-flavoured markdown acts on inside a table cell: a user string
# (an env value such as ``tidy-up <!--``) must not open a comment or tag that hides the
# rows after it, split the cell, or start emphasis, code or a link.
_MD_ACTIVE = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        "|": "\\|",
        "`": "\\`",
        "*": "\\*",
        "_": "\\_",
        "[": "\\[",
        "]": "\\]",
        "\\": "\\\\",
        "\n": " ",
        "\r": " ",
    }
)


def _md_escape(text: str) -> str:
    """``text`` shown literally in a markdown table cell."""
    return text.translate(_MD_ACTIVE)


def _md_code(name: str) -> str:
    """``name`` as an inline code span in a table cell (names are schema-checked to
    ``a-z0-9-``; this only keeps a span and its cell closed whatever they hold)."""
    return "`" + name.replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def diff_markdown(diffs: list[EnvironmentDiff], base: str, head: str) -> str:
    """Ready to paste as a pull-request comment."""
    total = sum(len(d.items) for d in diffs)
    lines = [f"### reconcile diff {_md_code(base)} → {_md_code(head)}", ""]
    if not total:
        lines.append("No change to the desired state of any environment.")
        return "\n".join(lines) + "\n"
    for d in diffs:
        lines.append(f"#### Environment {_md_code(d.environment)}")
        lines.append("")
        if not d.items:
            lines += ["No changes.", ""]
            continue
        lines += ["| | What | Changes |", "|---|---|---|"]
        icon = {"added": "🆕 added", "removed": "🗑️ removed", "changed": "✏️ changed"}
        for item in d.items:
            changes = "<br>".join(_md_escape(c) for c in item.changes) or "—"
            lines.append(f"| {icon[item.status]} | {item.kind} {_md_code(item.name)} | {changes} |")
        lines.append("")
    lines.append(
        "<sub>Secret values are never shown: secrets are names in git, values live "
        "on the hosts; env values of secret-looking keys are masked.</sub>"
    )
    return "\n".join(lines) + "\n"
