"""`reconcile watch`: follow a branch and keep the hosts converged.

The loop is level-based: every pass reads live state afresh. A pass runs when the branch
head moves (seen at once through file-system events for a local repository, or by a
cheap ``ls-remote`` every ``poll`` seconds for a remote one, fetching only when it moved)
and every ``drift`` seconds (repairing drift: containers stopped by hand, server lines of
the HAProxy config edited by hand, weights changed through the runtime API). In detect-only
mode drift is reported (log, metrics) and nothing changes.

Errors: an invalid or wrongly signed commit is rejected once and not read again until the
head moves; services whose apply failed are held at that commit (``reconcile retry``);
a config HAProxy refused holds the whole commit. Transient errors (engine or remote
unreachable, lock held) are retried with exponential backoff and jitter; meanwhile the
hosts stay as they are and ``reconcile_last_seen_commit_timestamp_seconds`` tells how
stale the view of the repository is.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.canary.engine import undecided
from reconciler.errors import ManifestError, ReconcilerError, SourceError
from reconciler.gitsafe import run_git
from reconciler.haproxy.paths import HAProxyPaths
from reconciler.lineage import RollbackRefused, check_forward
from reconciler.manifests import load_manifests, resolve
from reconciler.metrics import Metrics
from reconciler.mirror import remote_head
from reconciler.model import DesiredState, Instance
from reconciler.observe.live import observe
from reconciler.plan import plan
from reconciler.policy import Policy
from reconciler.run import apply_pass, stored_canaries, target_lock, with_canaries
from reconciler.source import RepoSpec, Snapshot, find_local, open_repo, read_commit
from reconciler.store import Retention, Store

if TYPE_CHECKING:
    import git

log = logging.getLogger("reconciler.watch")


BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
JITTER = (0.5, 1.5)


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempt``-th transient failure in a row (1-based):
    1 s doubling per attempt up to 60 s, times a jitter factor drawn uniformly from
    [0.5, 1.5] (so at most 90 s), so that watchers that failed together do not retry in
    step. Any number of attempts is fine (the exponent is capped: no OverflowError after
    a day-long outage). ``rng`` is for tests; the default is the module's generator.
    ValueError when ``attempt`` < 1."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, not {attempt}")
    base = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(attempt - 1, 32))
    return base * (rng or random).uniform(*JITTER)  # jitter, not crypto


@dataclass
class WatchConfig:
    spec: RepoSpec
    environment: str | None
    state_dir: Path
    external: HAProxyPaths | None = None
    poll_s: float = 2.0
    drift_s: float = 60.0
    detect_only: bool = False
    health_min_s: float = 30.0
    lock_timeout: float = 60.0
    require_signed: bool = False
    allowed_signers: Path | None = None  # SSH signatures (git's gpg.ssh.allowedSignersFile)
    gpg_home: Path | None = None  # GPG signatures: a keyring of the allowed keys
    instance: Instance = field(default_factory=Instance)  # whose containers
    retention: Retention = field(default_factory=Retention)  # of the history database
    policy: Policy = field(default_factory=Policy)  # the operator's (reconciler.policy)


@dataclass
class _State:
    head: str | None = None
    good: str | None = None  # the last commit that loaded (valid, signed when required)
    last_pass: float = float("-inf")
    canary_s: float | None = None  # a canary under analysis: look again this often
    rejected: dict[str, str] = field(default_factory=dict)  # commit -> why
    rollbacks: dict[str, str] = field(default_factory=dict)  # commit -> its environment
    failures_in_a_row: int = 0
    retry_at: float = 0.0
    seen_at: float | None = None  # monotonic time of the last successful read of the head


class Watcher:
    def __init__(self, cfg: WatchConfig, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.state = _State()
        self.wake = threading.Event()
        self.stop = threading.Event()
        self._repo: git.Repo | None = None
        self._root = ""

    # ------------------------------------------------------------------ source

    def repo(self) -> tuple[git.Repo, str]:
        """The reconciler's mirror of the followed repository, and the manifests root."""
        if self._repo is None:
            self._repo, self._root = open_repo(self.cfg.spec, fetch=False)
        return self._repo, self._root

    def _origin(self) -> tuple[str, tuple[str, ...]]:
        """Where to ask for the head (URL or a local repository's git dir) and the
        exact paths to declare safe for that (a local repository owned by another user)."""
        spec = self.cfg.spec
        if spec.is_remote:
            return spec.location, ()
        local = find_local(spec.location)
        return str(local.git_dir), tuple(str(p) for p in (local.git_dir, local.top) if p)

    def head(self) -> str:
        """The branch head now, asked with ``ls-remote`` (git runs in the source only as
        upload-pack); the mirror is fetched only when it does not have that commit."""
        import git

        spec = self.cfg.spec
        origin, safe = self._origin()
        ref = f"refs/heads/{spec.branch}" if spec.branch else "HEAD"
        sha = remote_head(origin, ref, safe=safe)
        repo, _ = self.repo()
        try:
            repo.commit(sha)
        except (ValueError, git.BadName):
            self._repo, self._root = open_repo(spec, fetch=True)
        return sha

    def verify_signature(self, sha: str) -> None:
        """Raise SourceError unless ``sha`` carries a good signature by an allowed key.

        git runs in the reconciler's mirror with ``reconciler.gitsafe``'s settings
        forced: the system's gpg and ssh-keygen, and only the operator's allowed signers
        file (none: no SSH signature passes). Without ``gpg_home`` an empty keyring is
        used, so no GPG signature passes either: only the keys the operator named count.
        """
        import os
        import tempfile

        repo, _ = self.repo()
        extra = []
        if self.cfg.allowed_signers:
            extra.append(("gpg.ssh.allowedSignersFile", str(self.cfg.allowed_signers)))
        with tempfile.TemporaryDirectory(prefix="reconciler-gnupg-") as empty:
            home = str(self.cfg.gpg_home) if self.cfg.gpg_home else empty
            proc = run_git(
                ["verify-commit", sha],
                cwd=Path(repo.git_dir),
                extra=extra,
                env={**os.environ, "GNUPGHOME": home},
                timeout=30,
            )
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise SourceError(
                f"commit {sha[:7]} is not signed by an allowed key: "
                f"{why[-1] if why else 'no signature'}"
            )

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Loop until ``stop`` is set (SIGTERM); a pass in progress stops between steps."""
        watcher = self._watch_files()
        try:
            while not self.stop.is_set():
                self.step()
                self.metrics.last_loop = time.monotonic()
                self.wake.wait(timeout=self.next_wait(time.monotonic()))
                self.wake.clear()
        finally:
            if watcher is not None:
                watcher.stop()

    def _watch_files(self) -> Any:
        """Wake the loop when refs of a local repository change (a push, a commit)."""
        if self.cfg.spec.is_remote:
            return None
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        git_dir = find_local(self.cfg.spec.location).git_dir  # the source, not the mirror
        wake = self.wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                # Reading a ref (as every check of the head does) is an event too; only
                # a change may wake the loop, or it would spin.
                if event.event_type not in ("opened", "closed_no_write"):
                    wake.set()

        observer = Observer()
        observer.schedule(Handler(), str(git_dir / "refs"), recursive=True)
        observer.schedule(Handler(), str(git_dir), recursive=False)  # HEAD, packed-refs
        observer.daemon = True
        observer.start()
        return observer

    def step(self) -> None:
        """One iteration: read the head; pass if it moved or drift is due."""
        now = time.monotonic()
        if now < self.state.retry_at:
            return
        try:
            head = self.head()
        except SourceError as exc:
            self.metrics.source_up.set(0)
            self._transient("source", exc)
            return
        self.metrics.source_up.set(1)
        self.metrics.seen_at.set(time.time())
        self.state.seen_at = now
        moved = head != self.state.head
        every = min(self.cfg.drift_s, self.state.canary_s or self.cfg.drift_s)
        if not moved and now - self.state.last_pass < every:
            return
        self.state.head = head
        kind = "commit" if moved else "drift"
        if head in self.state.rejected and self._rollback_decided(head):
            del self.state.rejected[head]  # the operator took it: follow it again
            kind = "commit"
        if head in self.state.rejected:
            # Said once when rejected. Until a new head arrives, drift passes keep the
            # hosts at the last good commit.
            if moved or self.state.good is None:
                return
            head, kind = self.state.good, "drift"
        t0 = time.monotonic()
        try:
            self._pass(head, kind)
            self.state.failures_in_a_row = 0
        except ReconcilerError as exc:
            self._transient("pass", exc)
            return
        finally:
            self.metrics.pass_duration.labels(kind=kind).observe(time.monotonic() - t0)
        self.state.last_pass = time.monotonic()

    def _transient(self, what: str, exc: Exception) -> None:
        """Back off exponentially with jitter (``backoff_delay``); hosts stay as they are.

        The attempt number counts transient failures since the last pass that ended
        (``step`` resets it then); the log line carries it and the delay (``attempt``,
        ``delay_s``), so an operator sees when the next attempt comes."""
        self.metrics.failures.labels(kind=what).inc()
        n = self.state.failures_in_a_row = self.state.failures_in_a_row + 1
        delay = backoff_delay(n)
        self.state.retry_at = time.monotonic() + delay
        stale = (
            "never read"
            if self.state.seen_at is None
            else f"last read {time.monotonic() - self.state.seen_at:.0f}s ago"
        )
        log.warning(
            "transient error (%s; hosts left as they are; repository %s), retrying in %.1fs: %s",
            what,
            stale,
            round(delay, 3),  # the message says what delay_s says
            exc,
            extra={
                "event": "transient-error",
                "what": what,
                "attempt": n,
                "delay_s": round(delay, 3),
                "stale": stale,
            },
        )

    def _reject(self, sha: str, why: str, kind: str) -> None:
        self.state.rejected[sha] = why
        self.metrics.failures.labels(kind=kind).inc()
        self.metrics.passes.labels(outcome="rejected").inc()
        log.error(
            "commit %s rejected: %s",
            sha[:7],
            why,
            extra={"event": "commit-rejected", "commit": sha},
        )

    def _load(self, sha: str) -> tuple[Snapshot, DesiredState] | None:
        """The commit's snapshot and desired state; None when the commit is rejected
        (logged and counted once): not signed by an allowed key, manifests that do not
        load for any reason (a bug of the loader included: a commit never crashes the
        loop), or not a descendant of the environment's last applied commit.
        Raises ReconcilerError only for what may pass (the mirror cannot be read)."""
        repo, root = self.repo()
        snapshot = read_commit(repo, root, sha)
        if self.cfg.require_signed:
            try:
                self.verify_signature(sha)
            except SourceError as exc:
                self._reject(sha, str(exc), "signature")
                return None
        try:
            manifests = load_manifests(snapshot.files)
            names = manifests.environment_names()
            env = self.cfg.environment or (names[0] if len(names) == 1 else "")
            if not env:
                raise ReconcilerError(f"several environments ({', '.join(names)}): use --env")
            desired = replace(
                resolve(manifests, env, sha, self.cfg.policy), instance=self.cfg.instance
            )
        except ManifestError as exc:
            self._reject(sha, "\n".join(str(p) for p in exc.problems), "invalid")
            return None
        except ReconcilerError as exc:
            self._reject(sha, str(exc), "invalid")
            return None
        except Exception as exc:
            self._reject(sha, f"cannot load the manifests: {type(exc).__name__}: {exc}", "invalid")
            return None
        try:
            check_forward(Path(repo.git_dir), desired.environment, self._last(env), sha)
        except RollbackRefused as exc:
            self.state.rollbacks[sha] = env
            self._reject(sha, str(exc), "rollback")
            return None
        return snapshot, desired

    def _last(self, environment: str) -> str | None:
        """The last commit applied to ``environment`` (the history database)."""
        store = Store(self.cfg.state_dir / "history.sqlite")
        try:
            return store.last_commit(environment)
        finally:
            store.close()

    def _rollback_decided(self, sha: str) -> bool:
        """True when ``sha`` was rejected as a rollback and the operator has since rolled
        the environment back to it (``reconcile apply --allow-rollback``)."""
        env = self.state.rollbacks.get(sha)
        return env is not None and self._last(env) == sha

    def _canary_interval(self, desired: DesiredState) -> float | None:
        """Seconds between looks while a canary needs them; else None.

        A canary needs looks from the pass that adds its servers to HAProxy (its
        analysis starts at the next look, so that look must come one interval later,
        not a drift interval later) until it is aborted or promoted. A service held at
        this commit is left as it runs, so its canary is not looked at."""
        store = Store(self.cfg.state_dir / "history.sqlite")
        try:
            states = stored_canaries(store, desired.environment)
            held = store.failed_services(desired.environment, desired.commit)
        finally:
            store.close()
        intervals = [
            r.canary.interval_ms / 1000
            for svc in desired.services
            for r in svc.releases
            if r.canary
            and svc.name not in held
            and undecided(desired.environment, svc, states.get(svc.name))
        ]
        return min(intervals) if intervals else None

    def next_wait(self, now: float) -> float:
        """Seconds the loop may sleep: ``poll``, or less when a look is due sooner (a
        canary's ``analysis.interval`` shorter than ``poll``)."""
        if self.state.canary_s is None:
            return self.cfg.poll_s
        due = self.state.last_pass + min(self.cfg.drift_s, self.state.canary_s) - now
        return max(0.01, min(self.cfg.poll_s, due))

    def _pass(self, sha: str, kind: str) -> None:
        loaded = self._load(sha)
        if loaded is None:
            return
        snapshot, desired = loaded
        repo_dir = Path(self.repo()[0].git_dir)
        previous, self.state.good = self.state.good, sha
        self._set_release_metrics(desired)
        store = Store(self.cfg.state_dir / "history.sqlite")
        try:
            held = store.failed_services(desired.environment, sha)
            judged = with_canaries(desired, store)
        finally:
            store.close()
        if "haproxy" in held:
            return  # HAProxy refused this commit's config: a new commit or `retry`
        label = f"commit {snapshot.short}"
        if self.cfg.detect_only:
            found = plan(judged, observe(desired, self.cfg.state_dir, self.cfg.external), held)
            self.metrics.drift_pending.set(0 if found.empty else 1)
            if not found.empty:
                self.metrics.drift.inc()
                log.warning(
                    "drift detected (not repaired): %d action(s) pending",
                    len(found.actions),
                    extra={
                        "event": "drift",
                        "commit": sha,
                        "actions": [a.describe() for a in found.actions],
                    },
                )
            return
        with target_lock(self.cfg.state_dir, desired.environment, self.cfg.lock_timeout):
            # Again under the lock: an operator's rollback (`apply --allow-rollback`) may
            # have been recorded since _load looked; this pass must not undo it.
            try:
                check_forward(repo_dir, desired.environment, self._last(desired.environment), sha)
            except RollbackRefused as exc:
                self.state.good = None if previous == sha else previous
                self.state.rollbacks[sha] = desired.environment
                self._reject(sha, str(exc), "rollback")
                return
            done = apply_pass(
                desired,
                self.cfg.state_dir,
                source=label,
                health_min_s=self.cfg.health_min_s,
                external=self.cfg.external,
                should_stop=self.stop.is_set,
                retention=self.cfg.retention,
                policy=self.cfg.policy,
            )
        self.state.canary_s = self._canary_interval(desired)
        res = done.result
        reloads = sum(1 for s in res.steps if "reloaded HAProxy" in s.detail)
        self.metrics.reloads.inc(reloads)
        outcome = "stopped" if res.stopped else "ok" if res.ok else "failed"
        self.metrics.passes.labels(outcome=outcome).inc()
        if kind == "drift" and not done.plan.empty:
            self.metrics.drift.inc()
        self.metrics.mismatches.set(len(res.mismatches))
        if res.mismatches:
            self.metrics.failures.labels(kind="outcome").inc()
            log.error(
                "the outcome at commit %s differs from the plan: %s",
                sha[:7],
                "; ".join(res.mismatches),
                extra={"event": "outcome-differs", "commit": sha, "mismatches": res.mismatches},
            )
        for service in res.failures:
            self.metrics.failures.labels(kind="apply").inc()
            log.error(
                "%s failed at commit %s",
                service,
                sha[:7],
                extra={"event": "apply-failed", "commit": sha, "service": service},
            )
        if res.ok and not res.stopped:
            self.metrics.set_applied(sha)
        self.metrics.drift_pending.set(0)
        if not done.plan.empty:
            log.info(
                "pass %s at commit %s: %d step(s), %s",
                done.run_id,
                sha[:7],
                len(res.steps),
                outcome,
                extra={
                    "event": "pass",
                    "commit": sha,
                    "run": done.run_id,
                    "reason": kind,
                    "outcome": outcome,
                },
            )
        self._set_health_metrics(desired)

    def _set_release_metrics(self, desired: DesiredState) -> None:
        self.metrics.release_weight.clear()
        for svc in desired.services:
            for rel in svc.releases:
                self.metrics.release_weight.labels(service=svc.name, revision=rel.revision).set(
                    rel.weight
                )

    def _set_health_metrics(self, desired: DesiredState) -> None:
        from reconciler import identity

        observed = observe(desired, self.cfg.state_dir, self.cfg.external)
        for svc in desired.services:
            healthy = sum(
                1
                for h in svc.hosts
                for c in observed.host(h).containers
                if c.label(identity.ENVIRONMENT) == desired.environment
                and c.label(identity.SERVICE) == svc.name
                and c.status == "running"
                and c.health != "unhealthy"
            )
            self.metrics.healthy.labels(service=svc.name).set(healthy)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the record's extra fields."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in self._standard})
        return json.dumps(doc, default=str)
