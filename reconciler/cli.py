"""Command line: ``reconcile [--dry-run]``, ``plan``, ``apply``, ``status``, ``history``,
``retry``, ``promote``, ``abort``, ``haproxy``, ``validate``, ``diff``, ``watch``.

Exit codes: 0 success and nothing to change; 2 changes pending (plan / --dry-run); 1 any
error (bad manifests, unreachable host, unknown commit). Heavy libraries (docker, git,
jsonschema) are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from reconciler import __version__
from reconciler.errors import ReconcilerError, printable

if TYPE_CHECKING:
    from reconciler.apply.results import ApplyResult, StepResult
    from reconciler.desired.manifests import Manifests
    from reconciler.desired.policy import Policy
    from reconciler.desired.source import RepoSpec, Snapshot
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.model import DesiredState
    from reconciler.plan.planner import Plan
    from reconciler.session import Session
    from reconciler.store import Retention

F = TypeVar("F", bound=Callable[..., Any])
EXIT_CHANGES = 2
# Exit 2 means "changes pending" here; a command-line usage error is an error like any other.
click.UsageError.exit_code = 1


def default_state_dir() -> str:
    if os.environ.get("RECONCILE_STATE_DIR"):
        return os.environ["RECONCILE_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/reconciler"
    return str(Path.home() / ".local" / "state" / "reconciler")


@dataclass(frozen=True)
class Source:
    """Which repository, commit and environment a command reads, and the operator's
    policy file that limits what it may ask of the hosts (None: the default path)."""

    repo: str
    branch: str | None
    rev: str | None
    subdir: str
    environment: str | None
    policy: Path | None = None

    def load_policy(self, state_dir: Path | None) -> Policy:
        """The operator's policy (``reconciler.desired.policy.load``), denying ``state_dir``."""
        from reconciler.desired import policy

        return policy.load(self.policy, state_dir)


def source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the source options; the command receives them as one ``src: Source``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        repo: str,
        branch: str | None,
        rev: str | None,
        subdir: str,
        environment: str | None,
        policy: Path | None,
        **kwargs: Any,
    ) -> Any:
        return f(*args, src=Source(repo, branch, rev, subdir, environment, policy), **kwargs)

    options = [
        click.option(
            "--repo",
            "-r",
            envvar="RECONCILE_REPO",
            default=".",
            show_default=True,
            help="Manifests repository: a local path (a folder inside a git work "
            "tree is the manifests root) or a git URL.",
        ),
        click.option(
            "--branch",
            "-b",
            envvar="RECONCILE_BRANCH",
            help="Branch to read (default: HEAD of a local repository; the remote's "
            "default branch for a URL).",
        ),
        click.option(
            "--rev", help="Commit, tag or other revision to read instead of the branch head."
        ),
        click.option(
            "--path", "subdir", default="", help="Manifests folder inside the repository."
        ),
        click.option(
            "--env",
            "-e",
            "environment",
            envvar="RECONCILE_ENV",
            help="Environment to act on (required when the repository has several).",
        ),
        click.option(
            "--policy",
            envvar="RECONCILE_POLICY",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The operator's policy file: allowed bind mounts, secret sources, SSH "
            "trust; the manifests cannot override it (docs/security.md). Default: "
            "/etc/reconciler/policy.yaml, or the built-in defaults when it is absent.",
        ),
    ]
    out: Callable[..., Any] = wrapper
    for option in reversed(options):
        out = option(out)
    return out


def state_options(f: F) -> F:
    f = click.option(
        "--state-dir",
        envvar="RECONCILE_STATE_DIR",
        default=default_state_dir,
        show_default="/var/lib/reconciler as root, else ~/.local/state/reconciler",
        type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
        help="Where the reconciler keeps its HAProxy files, locks and history.",
    )(f)
    return click.option(
        "--output",
        "-o",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Output format.",
    )(f)


def instance_option(f: F) -> F:
    return click.option(
        "--instance",
        envvar="RECONCILE_INSTANCE",
        metavar="NAME",
        help="This reconciler's instance name: its containers carry it, so several "
        "reconcilers (other state dirs) can share a Docker engine without touching each "
        "other's containers. Default: the name kept in the state dir (made from its path "
        "on the first apply).",
    )(f)


@dataclass
class Loaded:
    snapshot: Snapshot
    manifests: Manifests
    spec: RepoSpec
    git_dir: Path  # the reconciler's mirror the snapshot was read from

    @property
    def label(self) -> str:
        s = self.snapshot
        return f"commit {s.short}" + (f" ({s.summary})" if s.summary else "")


def _load(src: Source) -> Loaded:
    from reconciler.desired.manifests import load_manifests
    from reconciler.desired.source import (
        RepoSpec,
        open_repo,
        read_commit,
        resolve_rev,
        worktree_changes,
    )

    spec = RepoSpec(location=src.repo, branch=src.branch, subdir=src.subdir)
    git_repo, root = open_repo(spec)
    snapshot = read_commit(git_repo, root, resolve_rev(spec, src.rev))
    if src.rev is None and src.branch is None and worktree_changes(spec, snapshot):
        click.echo(
            f"note: uncommitted changes under {src.repo} are ignored; reading "
            f"commit {snapshot.short}",
            err=True,
        )
    return Loaded(snapshot, load_manifests(snapshot.files), spec, Path(git_repo.git_dir))


def _pick_environment(manifests: Manifests, environment: str | None) -> str:
    names = manifests.environment_names()
    if environment:
        return environment
    if len(names) == 1:
        return names[0]
    raise ReconcilerError(
        f"the repository has several environments ({', '.join(names)}): choose one with --env"
    )


def _desired(
    src: Source, state_dir: Path, instance: str | None, create: bool = False
) -> tuple[Loaded, DesiredState]:
    """The commit's desired state of the chosen environment, for the instance of
    ``state_dir`` (stored there first when ``create``: commands that change things)."""
    from dataclasses import replace

    from reconciler import instance as inst
    from reconciler.desired.manifests import resolve

    policy = src.load_policy(state_dir)
    loaded = _load(src)
    env = _pick_environment(loaded.manifests, src.environment)
    desired = resolve(loaded.manifests, env, loaded.snapshot.commit, policy)
    return loaded, replace(desired, instance=inst.resolve(state_dir, instance, create))


T = TypeVar("T")


def _or_fail(f: Callable[[], T]) -> T:
    """``f()``, or its ReconcilerError reported as ``_fail`` does."""
    try:
        return f()
    except ReconcilerError as exc:
        _fail(exc)


def _fail(exc: ReconcilerError) -> NoReturn:
    """Print the error (escaped: see ``ReconcilerError.report``) and exit 1."""
    for line in exc.report():
        click.echo(line, err=True)
    sys.exit(1)


def _run_plan(
    src: Source,
    state_dir: Path,
    output: str,
    external: HAProxyPaths | None,
    instance: str | None,
) -> None:
    try:
        from reconciler.present.output import plan_json, plan_text
        from reconciler.session import Session

        loaded, desired = _desired(src, state_dir, instance)
        with Session(state_dir, external=external, read_only=True) as session:
            env = desired.environment
            if session.store is not None:
                _warn_rollback(loaded, env, session.last_commit(env))
            result = session.preview(desired).plan
    except ReconcilerError as exc:
        _fail(exc)
    render = plan_json if output == "json" else plan_text
    click.echo(render(result, loaded.label), nl=False)
    sys.exit(0 if result.empty else EXIT_CHANGES)


def _warn_rollback(loaded: Loaded, environment: str, last: str | None) -> None:
    """Say on stderr when ``apply`` would refuse this commit as a rollback."""
    from reconciler.desired.lineage import RollbackRefused, check_forward

    try:
        check_forward(loaded.git_dir, environment, last, loaded.snapshot.commit)
    except RollbackRefused as exc:
        click.echo(f"warning: apply would refuse this commit: {exc}", err=True)


def _check_forward(
    loaded: Loaded, environment: str, session: Session, allow_rollback: bool
) -> None:
    """Refuse (RollbackRefused) a commit that does not descend from the environment's
    last applied commit, unless ``allow_rollback``: then record the operator's decision
    as a run of its own (status ``rollback``) before the pass. Call under the lock."""
    from reconciler.desired.lineage import RollbackRefused, check_forward

    last = session.last_commit(environment)
    try:
        check_forward(loaded.git_dir, environment, last, loaded.snapshot.commit)
    except RollbackRefused:
        if not allow_rollback or last is None:
            raise
        commit = loaded.snapshot.commit
        run_id = session.record_decision(
            environment,
            "rollback",
            f"rollback from {last[:7]} to {commit[:7]} by the operator (--allow-rollback)",
            commit=commit,
        )
        click.echo(
            f"note: rolling environment {environment} back from {last[:7]} to "
            f"{commit[:7]} (--allow-rollback; recorded as run {run_id})",
            err=True,
        )


def _run_apply(
    src: Source,
    state_dir: Path,
    output: str,
    lock_timeout: float,
    health_timeout: float,
    external: HAProxyPaths | None,
    instance: str | None,
    retention: Retention | None = None,
    allow_rollback: bool = False,
) -> None:
    """Apply: exit 0 when every step succeeded (or nothing was to do), 1 otherwise.
    The history is pruned to ``retention`` (default: ``Retention()``) after the pass.
    A commit that does not descend from the environment's last applied commit is
    refused (exit 1, nothing changed) unless ``allow_rollback`` (``reconciler.desired.lineage``)."""
    import json

    try:
        from reconciler.present.output import plan_text
        from reconciler.session import DEFAULT_RETENTION, Session, target_lock

        loaded, desired = _desired(src, state_dir, instance, create=True)
        text = output == "text"

        def on_plan(p: Plan) -> None:
            if text:
                click.echo(plan_text(p, loaded.label), nl=False)
                if not p.empty:
                    click.echo("\nApplying:")

        def on_step(step: StepResult) -> None:
            if text:
                mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[step.status]
                detail = f" - {step.detail}" if step.detail else ""
                click.echo(
                    f"  [{step.step:>3}] {mark:<7} {step.action.host}: {step.action.describe()} "
                    f"({step.duration_s:.1f}s){detail}"
                )

        policy = src.load_policy(state_dir)
        with (
            target_lock(state_dir, desired.environment, lock_timeout),
            Session(state_dir, external=external, policy=policy) as session,
        ):
            _check_forward(loaded, desired.environment, session, allow_rollback)
            done = session.apply(
                desired,
                source=loaded.label,
                on_plan=on_plan,
                on_step=on_step,
                health_min_s=health_timeout,
                retention=retention or DEFAULT_RETENTION,
            )
    except ReconcilerError as exc:
        _fail(exc)
    res = done.result
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "environment": desired.environment,
                    "commit": desired.commit,
                    "run": done.run_id,
                    "ok": res.ok,
                    "failures": res.failures,
                    "mismatches": res.mismatches,
                    "notes": list(done.plan.notes) + res.notes,
                    "steps": [
                        {
                            "step": s.step,
                            "status": s.status,
                            "detail": s.detail,
                            "duration_s": round(s.duration_s, 3),
                            **s.action.to_json(),
                        }
                        for s in res.steps
                    ],
                },
                indent=2,
            )
        )
    elif not done.plan.empty or res.mismatches:
        for service, why in res.failures.items():
            click.echo(f"\nerror: {service}: {why}", err=True)
        if res.mismatches:
            click.echo("\nerror: the outcome differs from the plan:", err=True)
            for m in res.mismatches:
                click.echo(f"  {m}", err=True)
        for note in res.notes:
            click.echo(f"\nnote: {note}", err=True)
        click.echo(f"\nrun {done.run_id}: {_verdict(res)}; see `reconcile history`.")
    sys.exit(0 if res.ok else 1)


def _verdict(res: ApplyResult) -> str:
    """The last line of an apply: what happened, naming what failed."""
    if res.ok:
        return "applied"
    what = [f"{k} failed" for k in res.failures]
    what += ["the outcome differs from the plan"] if res.mismatches else []
    kept = any(k != "haproxy" for k in res.failures)
    tail = "; a failed service keeps its old release where it failed" if kept else ""
    return f"FAILED ({', '.join(what) or 'stopped'}{tail})"


def haproxy_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options naming an existing HAProxy; the command receives ``external``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        haproxy_config: Path | None,
        haproxy_socket: Path | None,
        haproxy_master_socket: Path | None,
        **kwargs: Any,
    ) -> Any:
        from reconciler.lb.haproxy.paths import HAProxyPaths

        given = [haproxy_config, haproxy_socket, haproxy_master_socket]
        if any(given) and not all(given):
            raise click.UsageError(
                "an existing HAProxy needs --haproxy-config, "
                "--haproxy-socket and --haproxy-master-socket together"
            )
        external = (
            HAProxyPaths.external(haproxy_config, haproxy_socket, haproxy_master_socket)
            if haproxy_config and haproxy_socket and haproxy_master_socket
            else None
        )
        return f(*args, external=external, **kwargs)

    path = click.Path(dir_okay=False, path_type=Path)
    out: Callable[..., Any] = wrapper
    for option in reversed(
        [
            click.option(
                "--haproxy-config",
                type=path,
                help="Manage an existing HAProxy (master-worker mode) with this config "
                "file instead of the embedded one under --state-dir.",
            ),
            click.option("--haproxy-socket", type=path, help="Its stats socket (level admin)."),
            click.option("--haproxy-master-socket", type=path, help="Its master CLI socket."),
        ]
    ):
        out = option(out)
    return out


def retention_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """History retention options; the command receives ``retention: Retention``."""

    @functools.wraps(f)
    def wrapper(*args: Any, history_days: float, history_runs: int, **kwargs: Any) -> Any:
        from reconciler.store import Retention

        return f(*args, retention=Retention(days=history_days, runs=history_runs), **kwargs)

    out: Callable[..., Any] = wrapper
    out = click.option(
        "--history-runs",
        type=click.IntRange(min=0),
        default=5000,
        show_default=True,
        envvar="RECONCILE_HISTORY_RUNS",
        help="Keep at most this many runs per environment in the history database "
        "(0: no limit). Idle looks at one commit share one run.",
    )(out)
    return click.option(
        "--history-days",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        envvar="RECONCILE_HISTORY_DAYS",
        help="Delete runs (and their steps) older than this many days from the history "
        "database at the end of each pass (0: keep them). The newest run of an "
        "environment and the failures that hold services are always kept.",
    )(out)


def rollback_option(f: F) -> F:
    return click.option(
        "--allow-rollback",
        is_flag=True,
        help="Apply the commit even though it does not descend from the last commit "
        "applied to the environment (the branch was reset, or --rev names an older "
        "commit). Recorded in the history as the operator's decision.",
    )(f)


def apply_options(f: F) -> F:
    f = click.option(
        "--lock-timeout",
        type=float,
        default=60.0,
        show_default=True,
        help="Seconds to wait for another reconciler working on the same environment.",
    )(f)
    return click.option(
        "--health-timeout",
        type=float,
        default=30.0,
        show_default=True,
        help="Minimum seconds a new container may take to become healthy "
        "(more when its health check's start period and retries "
        "need it).",
    )(f)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reconcile")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing (as `plan`).")
@source_options
@state_options
@instance_option
@haproxy_options
@apply_options
@retention_options
@rollback_option
@click.pass_context
def main(
    ctx: click.Context,
    dry_run: bool,
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    lock_timeout: float,
    health_timeout: float,
    external: HAProxyPaths | None,
    retention: Retention,
    allow_rollback: bool,
) -> None:
    """Reconcile Docker hosts and HAProxy with the release manifests in git.

    Without a command: read a commit of the manifests repository, observe what really
    runs (Docker containers, HAProxy), plan the smallest set of changes and apply them:
    new containers start next to the old ones and get traffic only once healthy, HAProxy
    configs are installed only after `haproxy -c` accepts them, old containers are
    drained before they are stopped. Exit 0 when all went well, 1 otherwise.

    With --dry-run (or the `plan` command) it prints the plan only and exits 0 when
    nothing would change, 2 when changes are pending, 1 on error.

    \b
    Examples:
      reconcile --repo sample-repo --env production --dry-run
      reconcile --repo sample-repo --env production
      reconcile status --repo sample-repo --env production
      reconcile diff main feature-branch --repo . --output markdown
    """
    if ctx.invoked_subcommand is not None:
        return
    if dry_run:
        _run_plan(src, state_dir, output, external, instance)
    _run_apply(
        src,
        state_dir,
        output,
        lock_timeout,
        health_timeout,
        external,
        instance,
        retention,
        allow_rollback,
    )


@main.command()
@source_options
@state_options
@instance_option
@haproxy_options
def plan(
    src: Source, state_dir: Path, output: str, instance: str | None, external: HAProxyPaths | None
) -> None:
    """Show what a reconcile would change (the dry run); change nothing.

    Exits 0 when nothing would change, 2 when changes are pending, 1 on error.
    """
    _run_plan(src, state_dir, output, external, instance)


@main.command()
@source_options
@state_options
@instance_option
@haproxy_options
@apply_options
@retention_options
@rollback_option
def apply(
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    lock_timeout: float,
    health_timeout: float,
    external: HAProxyPaths | None,
    retention: Retention,
    allow_rollback: bool,
) -> None:
    """Apply the plan (the same as `reconcile` without a command).

    A commit that does not descend from the last commit applied to the environment (a
    branch reset to an older commit, or --rev naming one) is refused with exit 1 unless
    --allow-rollback is given; that decision is recorded in the history."""
    _run_apply(
        src,
        state_dir,
        output,
        lock_timeout,
        health_timeout,
        external,
        instance,
        retention,
        allow_rollback,
    )


@main.command()
@click.argument("service")
@source_options
@state_options
@instance_option
@haproxy_options
def promote(
    service: str,
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    external: HAProxyPaths | None,
) -> None:
    """Promote SERVICE's canary now: all traffic to it (then make it the only release in
    git). Recorded in the history; applied at once through HAProxy's runtime API."""
    _decide_canary(src, state_dir, output, external, instance, service, "promoted")


@main.command()
@click.argument("service")
@source_options
@state_options
@instance_option
@haproxy_options
def abort(
    service: str,
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    external: HAProxyPaths | None,
) -> None:
    """Abort SERVICE's canary now: its weight goes to 0 (the baseline takes all traffic);
    its containers stay for inspection until git changes. Recorded in the history."""
    _decide_canary(src, state_dir, output, external, instance, service, "aborted")


@main.command()
@source_options
@state_options
@instance_option
@haproxy_options
def status(
    src: Source, state_dir: Path, output: str, instance: str | None, external: HAProxyPaths | None
) -> None:
    """Show services, releases, weights, containers and their health, HAProxy server states,
    and per-revision requests, 5xx and response times from HAProxy's counters."""
    try:
        from reconciler.present.status import status_json, status_text
        from reconciler.session import Session

        loaded, desired = _desired(src, state_dir, instance)
        with Session(state_dir, external=external) as session:
            preview = session.preview(desired)
            store = session.require_store()
            runs = store.runs(desired.environment, limit=1)
            canaries = session.canaries(desired.environment)
            size = store.size()
    except ReconcilerError as exc:
        _fail(exc)
    render = status_json if output == "json" else status_text
    last = runs[0] if runs else None
    click.echo(
        render(
            preview.desired,
            preview.observed,
            last,
            dict(preview.held),
            loaded.label,
            canaries,
            size,
        ),
        nl=False,
    )


@main.command()
@click.option(
    "--env", "-e", "environment", envvar="RECONCILE_ENV", help="Only runs of this environment."
)
@click.option("--limit", "-n", type=int, default=20, show_default=True)
@click.option("--run", "run_id", type=int, help="Show the steps of one run.")
@state_options
def history(
    environment: str | None, limit: int, run_id: int | None, state_dir: Path, output: str
) -> None:
    """List past passes (commit, status, duration), or the steps of one run."""
    from reconciler.present import history as show
    from reconciler.session import Session

    with Session(state_dir, read_only=True) as session:
        store = session.store
        if store is None:
            click.echo(f"no history yet in {state_dir}")
            return
        if run_id is not None:
            steps, failures = store.steps(run_id), store.failures_of(run_id)
            if output == "json":
                text = show.run_json(run_id, store.plan_of(run_id), steps, failures)
            else:
                text = show.run_text(steps, failures)
        else:
            runs = store.runs(environment, limit)
            text = show.runs_json(runs) if output == "json" else show.runs_text(runs)
    click.echo(text, nl=False)


@main.command()
@click.argument("service", required=False)
@click.option(
    "--env",
    "-e",
    "environment",
    envvar="RECONCILE_ENV",
    required=True,
    help="Environment of the service.",
)
@state_options
def retry(service: str | None, environment: str, state_dir: Path, output: str) -> None:
    """Forget the recorded failures of SERVICE (default: every service) of an environment,
    at any commit, so the next pass tries it again; a canary of it (aborted or not)
    starts its analysis again from the first step."""
    from reconciler.session import Session

    with Session(state_dir) as session:
        n, restarted = session.forget_failures(environment, service)
        if restarted:
            session.record_decision(
                environment, "retry", f"canary analysis of {', '.join(restarted)} restarted"
            )
    canary = f" and restarted the canary analysis of {', '.join(restarted)}" if restarted else ""
    click.echo(
        f"cleared {n} failure(s){canary}; "
        f"the next pass retries {service or 'every service'} of {environment}"
    )


def _decide_canary(
    src: Source,
    state_dir: Path,
    output: str,
    external: HAProxyPaths | None,
    instance: str | None,
    service: str,
    status: str,
) -> None:
    """Promote or abort SERVICE's canary by hand, record it, then apply (the weights
    move through the runtime API, as when the analysis decides)."""
    from reconciler.session import Session

    _, desired = _or_fail(lambda: _desired(src, state_dir, instance))
    env = desired.environment
    with Session(state_dir) as session:
        state = session.canaries(env).get(service)
        if state is None:
            _fail(
                ReconcilerError(
                    f"service {service} has no canary under analysis in environment "
                    f"{env} (see `reconcile status`)"
                )
            )
        state.status = status
        state.reason = (
            f"{status} by hand (reconcile {'promote' if status == 'promoted' else 'abort'})"
        )
        state.history.append(state.reason)
        session.save_canary(env, service, state)
        session.record_decision(
            env, status, f"canary {state.canary} of {service} {state.reason}"
        )
    _run_apply(src, state_dir, output, 30.0, 30.0, external, instance)


@main.command(
    context_settings={"ignore_unknown_options": True},  # `show stat -1 4 -1` has words like -1
    short_help="Send one command to HAProxy's CLI and print its answer.",
)
@click.argument("command", nargs=-1, required=True)
@click.option(
    "--master/--stats",
    default=None,
    help="Send to the master CLI, or to the stats socket (runtime API, level admin). "
    "Default: the master for `show proc`, `reload`, `show startup-logs` and `@<process> "
    "...`, the stats socket for everything else.",
)
@click.option(
    "--host",
    "lb_host",
    help="The LB host (its inventory name) whose HAProxy to ask; reads the inventory "
    "from --repo and reaches an SSH host over SSH. Default: the embedded HAProxy of "
    "--env under --state-dir on this machine.",
)
@source_options
@click.option(
    "--state-dir",
    envvar="RECONCILE_STATE_DIR",
    default=default_state_dir,
    show_default="/var/lib/reconciler as root, else ~/.local/state/reconciler",
    type=click.Path(file_okay=False, path_type=Path, resolve_path=True),
    help="Where the reconciler keeps its HAProxy files.",
)
@click.option(
    "--haproxy-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Stats socket of an existing HAProxy (instead of the embedded one's).",
)
@click.option(
    "--haproxy-master-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Master CLI socket of an existing HAProxy (instead of the embedded one's).",
)
def haproxy(
    command: tuple[str, ...],
    master: bool | None,
    lb_host: str | None,
    src: Source,
    state_dir: Path,
    haproxy_socket: Path | None,
    haproxy_master_socket: Path | None,
) -> None:
    """Send COMMAND to the CLI of an environment's HAProxy and print HAProxy's answer.

    COMMAND is given as words (no shell is involved; they are sent as one line joined
    by spaces); a newline or `;` (chaining) is refused. Exit 0 when HAProxy answered,
    even with an error of its own (`Unknown command...`); 1 when it is not running or
    cannot be reached.

    Changes made here (weights, states) are not in git: the next pass puts managed
    servers back as desired.

    \b
    Examples:
      reconcile haproxy show proc --env production          # master CLI
      reconcile haproxy show stat --env production          # stats socket, CSV
      reconcile haproxy show servers state be_web --env production
      reconcile haproxy reload --env production             # loads renewed certificates
      reconcile haproxy show info --host lb1 --repo . --env production   # an SSH LB host
    """
    from reconciler.lb.haproxy.console import ask
    from reconciler.lb.haproxy.control import HAProxy
    from reconciler.lb.haproxy.paths import HAProxyPaths
    from reconciler.transport.pool import Connections

    conns = Connections()
    try:
        environment = src.environment
        if lb_host is not None or environment is None:
            _, desired = _desired(src, state_dir, None)
            environment = desired.environment
        paths = HAProxyPaths.embedded(state_dir, environment)
        if lb_host is not None:
            from reconciler.observe.live import lb_paths

            lb_names = {h for lb in desired.loadbalancers for h in lb.hosts}
            if lb_host not in lb_names:
                raise ReconcilerError(
                    f"{lb_host!r} is not an LB host of environment {environment} "
                    f"(LB hosts: {', '.join(sorted(lb_names)) or 'none'})"
                )
            conns.add(desired.host(lb_host))
            paths = lb_paths(desired, state_dir, None, desired.host(lb_host))
        paths = HAProxyPaths(
            paths.config,
            haproxy_socket or paths.stats_socket,
            haproxy_master_socket or paths.master_socket,
            managed=False,
        )
        transport = conns.get(lb_host) if lb_host is not None else None
        answer = ask(HAProxy(paths, transport=transport), command, master)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except ReconcilerError as exc:
        _fail(exc)
    finally:
        conns.close()
    click.echo(answer, nl=not answer.endswith("\n"))


@main.command()
@source_options
@click.option(
    "--worktree",
    is_flag=True,
    help="Validate the files on disk instead of a commit (for pre-commit hooks).",
)
def validate(src: Source, worktree: bool) -> None:
    """Check every manifest: YAML, JSON Schema and semantic rules.

    Reports all problems of the repository with file:line:column, field and bad value,
    and exits 1 if there are any. Touches no host.
    """
    try:
        from reconciler.desired.manifests import load_manifests, resolve
        from reconciler.desired.source import read_directory

        policy = src.load_policy(Path(default_state_dir()))
        if worktree:
            snapshot = read_directory(str(Path(src.repo) / src.subdir))
            for link in snapshot.skipped:
                click.echo(
                    f"note: {printable(link)} is a symbolic link; not read (links are "
                    "never followed)",
                    err=True,
                )
            manifests = load_manifests(snapshot.files)
            label = f"files under {src.repo}"
        else:
            loaded = _load(src)
            snapshot, manifests, label = loaded.snapshot, loaded.manifests, loaded.label
        if not snapshot.files:
            raise ReconcilerError(f"no manifest files (*.yaml, *.yml) found in {label}")
        envs = [src.environment] if src.environment else manifests.environment_names()
        for env in envs:
            resolve(manifests, env, snapshot.commit, policy)
    except ReconcilerError as exc:
        _fail(exc)
    click.echo(
        f"ok: {len(snapshot.files)} file(s) valid at {label}; environments: {', '.join(envs)}"
    )


@main.command()
@click.argument("base")
@click.argument("head")
@click.option(
    "--repo",
    "-r",
    envvar="RECONCILE_REPO",
    default=".",
    show_default=True,
    help="Manifests repository (local path or git URL).",
)
@click.option("--path", "subdir", default="", help="Manifests folder inside the repository.")
@click.option("--env", "-e", "environment", help="Only this environment (default: all).")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="markdown is ready to paste as a pull-request comment.",
)
@click.option("--exit-code", is_flag=True, help="Exit 2 when the desired state differs.")
def diff(
    base: str,
    head: str,
    repo: str,
    subdir: str,
    environment: str | None,
    output: str,
    exit_code: bool,
) -> None:
    """Compare the desired state of two commits (BASE, HEAD) without contacting any host.

    Lists per environment every change of its desired state: each release of each service
    (image, weight, env with secret-looking values masked, secrets by name and location,
    health, limits, canary policy, ...), replicas, hosts and their SSH settings, load
    balancers with frontends and routes, and the environment's rollout. Runs in a
    pull-request CI with no Docker.
    """
    try:
        from reconciler.desired.diff import diff_states
        from reconciler.desired.manifests import load_manifests, resolve
        from reconciler.desired.source import RepoSpec, open_repo, read_commit, resolve_rev
        from reconciler.model import DesiredState
        from reconciler.present.output import diff_json, diff_markdown, diff_text

        spec = RepoSpec(location=repo, subdir=subdir)
        git_repo, root = open_repo(spec)
        snaps = [read_commit(git_repo, root, resolve_rev(spec, r)) for r in (base, head)]
        loaded = [load_manifests(s.files) for s in snaps]
        if environment:
            envs = [environment]
        else:
            envs = sorted(set(loaded[0].environment_names()) | set(loaded[1].environment_names()))
        diffs = []
        for env in envs:
            # An environment that exists on one side only diffs against an empty one.
            base_state, head_state = (
                resolve(m, env, s.commit)
                if env in m.environment_names()
                else DesiredState(env, s.commit, (), (), ())
                for m, s in zip(loaded, snaps, strict=True)
            )
            diffs.append(diff_states(base_state, head_state))
    except ReconcilerError as exc:
        _fail(exc)
    render = {"text": diff_text, "json": diff_json, "markdown": diff_markdown}[output]
    click.echo(render(diffs, snaps[0].short, snaps[1].short), nl=False)
    if exit_code and any(d.items for d in diffs):
        sys.exit(EXIT_CHANGES)


@main.command()
@source_options
@state_options
@instance_option
@haproxy_options
@apply_options
@retention_options
@click.option(
    "--poll",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between checks of the branch head: `git ls-remote` for a URL "
    "(also file://), so a commit is seen up to this late; a path is also watched "
    "for file events, so a commit there is seen at once.",
)
@click.option(
    "--drift-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between full passes that repair drift.",
)
@click.option(
    "--detect-only", is_flag=True, help="Report drift (log, metrics) without changing anything."
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1:9108",
    show_default=True,
    help="Address of the /metrics and /healthz endpoint; 'off' to disable.",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--require-signed",
    is_flag=True,
    help="Apply only commits signed by an allowed key (--allowed-signers for SSH "
    "signatures, --gpg-home for GPG).",
)
@click.option(
    "--allowed-signers",
    type=click.Path(dir_okay=False, path_type=Path),
    help="git's allowed signers file (SSH keys; without it, no SSH signature is accepted).",
)
@click.option(
    "--gpg-home",
    type=click.Path(file_okay=False, path_type=Path),
    help="A GnuPG home whose keyring holds the allowed keys (without it, no GPG "
    "signature is accepted).",
)
def watch(
    src: Source,
    state_dir: Path,
    output: str,
    instance: str | None,
    external: HAProxyPaths | None,
    lock_timeout: float,
    health_timeout: float,
    retention: Retention,
    poll: float,
    drift_interval: float,
    detect_only: bool,
    metrics_addr: str,
    log_format: str,
    require_signed: bool,
    allowed_signers: Path | None,
    gpg_home: Path | None,
) -> None:
    """Follow a branch and keep the hosts converged (the GitOps loop).

    A new commit is applied as soon as it is seen; every --drift-interval a full pass
    repairs drift; while a canary needs looks, a pass runs every analysis.interval
    of it. SIGTERM (or Ctrl-C) finishes the current step and exits 0: HAProxy never
    points at a stopped container afterwards.

    How soon a commit is seen depends on how --repo is written. A path (also of a
    bare repository) is watched for file events on its refs: a push is seen at
    once, well under a second later. A URL, including file:///..., is asked with
    `git ls-remote` every --poll seconds (and fetched only when its head moved):
    up to --poll seconds later. Use the path when this machine holds the repository.

    \b
    Examples:
      reconcile watch --repo /srv/git/manifests.git -b main --env production
      reconcile watch --repo https://git.example.com/ops/manifests.git -b main \\
          --env production --poll 5 --metrics-addr 0.0.0.0:9108
    """
    import logging
    import signal

    from reconciler import instance as inst
    from reconciler.desired.source import RepoSpec
    from reconciler.present.metrics import Metrics, serve
    from reconciler.watch import JsonFormatter, WatchConfig, Watcher

    if require_signed and not (allowed_signers or gpg_home):
        raise click.UsageError("--require-signed needs --allowed-signers or --gpg-home")
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    cfg = WatchConfig(
        spec=RepoSpec(location=src.repo, branch=src.branch, subdir=src.subdir),
        environment=src.environment,
        state_dir=state_dir,
        external=external,
        poll_s=poll,
        drift_s=drift_interval,
        detect_only=detect_only,
        health_min_s=health_timeout,
        lock_timeout=lock_timeout,
        require_signed=require_signed,
        allowed_signers=allowed_signers,
        gpg_home=gpg_home,
        instance=_or_fail(lambda: inst.resolve(state_dir, instance, create=not detect_only)),
        retention=retention,
        policy=_or_fail(lambda: src.load_policy(state_dir)),
    )
    watcher = Watcher(cfg, Metrics())

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("reconciler.watch").info(
            "signal %d: stopping after the current step", signum, extra={"event": "stop"}
        )
        watcher.stop.set()
        watcher.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if metrics_addr != "off":
        serve(watcher.metrics, metrics_addr, stale_after_s=max(3 * drift_interval, 60))
    logging.getLogger("reconciler.watch").info(
        "watching %s (%s) for environment %s",
        src.repo,
        src.branch or "HEAD",
        src.environment or "(the only one)",
        extra={"event": "start"},
    )
    try:
        watcher.run()
    except ReconcilerError as exc:
        _fail(exc)
