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

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler.canary.engine import undecided
from reconciler.cluster.shared import last_applied
from reconciler.desired.lineage import RollbackRefused, check_forward
from reconciler.desired.manifests import load_manifests, resolve
from reconciler.desired.policy import Policy
from reconciler.desired.source import RepoSpec, Snapshot, read_commit
from reconciler.errors import FencedOut, ManifestError, ReconcilerError, SourceError
from reconciler.lb.haproxy.paths import HAProxyPaths
from reconciler.model import DesiredState, Instance, ObservedState
from reconciler.present.metrics import Metrics
from reconciler.present.web.data import PageView
from reconciler.records.collector import Records
from reconciler.records.store import FILENAME, RecordsRetention, RecordsStore
from reconciler.session import PassResult, Session, target_lock
from reconciler.store import Retention
from reconciler.watch.backoff import backoff_delay
from reconciler.watch.cluster import ClusterRole, Guard
from reconciler.watch.report import report_pass, set_canaries, set_healthy, set_release_weights
from reconciler.watch.source import BranchSource

log = logging.getLogger("reconciler.watch")


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
    policy: Policy = field(default_factory=Policy)  # the operator's (reconciler.desired.policy)
    # Request records (reconciler.records): kept this long; None: not collected.
    records: RecordsRetention | None = field(default_factory=RecordsRetention)


@dataclass
class _State:
    head: str | None = None
    good: str | None = None  # the last commit that loaded (valid, signed when required)
    last_pass: float = float("-inf")
    canary_s: float | None = None  # a canary under analysis: look again this often
    rejected: dict[str, str] = field(default_factory=dict)  # commit -> why
    rollbacks: dict[str, DesiredState] = field(default_factory=dict)  # commit -> its state
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
        self.source = BranchSource(cfg.spec, cfg.allowed_signers, cfg.gpg_home)
        self._session: Session | None = None
        # What the last pass observed, for the status page (read by its threads; a
        # reference swap is atomic, and a PageView is never changed).
        self.view: PageView | None = None
        self.records: Records | None = None  # started by the first pass that observes
        self.cluster = ClusterRole(self.wake.set)  # etcd mode: the election (watch.cluster)
        self.metrics.leading.set_function(self.cluster.leading_now)

    @property
    def session(self) -> Session:
        """The watcher's one session: its history and host connections live across
        passes (an SSH connection is opened once, not every pass)."""
        if self._session is None:
            self._session = Session(
                self.cfg.state_dir,
                external=self.cfg.external,
                policy=self.cfg.policy,
                record_requests=False,  # the collectors stream the request log instead
            )
        return self._session

    def close(self) -> None:
        """Close the session (history, connections); a later pass opens a new one."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Loop until ``stop`` is set (SIGTERM); a pass in progress stops between steps."""
        watcher = self.source.watch_files(self.wake)
        try:
            while not self.stop.is_set():
                self.step()
                self.metrics.last_loop = time.monotonic()
                self.wake.wait(timeout=self.next_wait(time.monotonic()))
                self.wake.clear()
        finally:
            if watcher is not None:
                watcher.stop()
            if self.records is not None:
                self.records.stop()
            self.cluster.stop()  # steps down: a standby takes over at once
            self.close()

    def follow_records(self, desired: DesiredState, observed: ObservedState) -> None:
        """Give the request records collectors this pass's mapping and LB hosts (they
        start with the first call). Never raises: records are not worth a pass."""
        retention = self.cfg.records
        if retention is None:
            return
        try:
            if self.records is None:
                store = RecordsStore(self.cfg.state_dir / FILENAME, retention)
                self.records = Records(store, sink=self.metrics.observe_cells)
            self.records.follow(desired, observed, self.session.lb_targets(desired, observed))
        except ReconcilerError as exc:
            log.warning("request records: %s", exc, extra={"event": "records-error"})

    def step(self) -> None:
        """One iteration: read the head; pass if it moved or drift is due."""
        now = time.monotonic()
        if now < self.state.retry_at:
            return
        try:
            head = self.source.head()
        except SourceError as exc:
            self.metrics.source_up.set(0)
            self._transient("source", exc)
            return
        self.metrics.source_up.set(1)
        self.metrics.seen_at.set(time.time())
        self.state.seen_at = now
        moved = head != self.state.head
        every = min(self.cfg.drift_s, self.state.canary_s or self.cfg.drift_s)
        if not moved and now - self.state.last_pass < every and not self.cluster.took_over():
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
        except FencedOut as exc:
            self.cluster.fenced_out(exc)
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
        repo, root = self.source.repo()
        snapshot = read_commit(repo, root, sha)
        if self.cfg.require_signed:
            try:
                self.source.verify_signature(sha)
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
            check_forward(Path(repo.git_dir), desired.environment, self._last(desired), sha)
        except RollbackRefused as exc:
            self.state.rollbacks[sha] = desired
            self._reject(sha, str(exc), "rollback")
            return None
        return snapshot, desired

    def _last(self, desired: DesiredState) -> str | None:
        """The last commit applied to ``desired``'s environment: the history's, or in
        etcd mode the leader's (``reconciler.cluster.shared.last_applied``)."""
        return last_applied(desired, self.session.last_commit(desired.environment))

    def _rollback_decided(self, sha: str) -> bool:
        """True when ``sha`` was rejected as a rollback and the operator has since rolled
        the environment back to it (``reconcile apply --allow-rollback``)."""
        desired = self.state.rollbacks.get(sha)
        return desired is not None and self._last(desired) == sha

    def _canary_interval(self, desired: DesiredState) -> float | None:
        """Seconds between looks while a canary needs them; else None.

        A canary needs looks from the pass that adds its servers to HAProxy (its
        analysis starts at the next look, so that look must come one interval later,
        not a drift interval later) until it is aborted or promoted. A service held at
        this commit is left as it runs, so its canary is not looked at."""
        states = self.session.canaries(desired.environment)
        held = self.session.held(desired)
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
        previous, self.state.good = self.state.good, sha
        set_release_weights(self.metrics, desired)
        held = self.session.held(desired)
        if "haproxy" in held:
            return  # HAProxy refused this commit's config: a new commit or `retry`
        if self.cfg.detect_only:
            self.follow_records(desired, self._detect(desired, sha))
            return
        guard = self.cluster.guard(desired, kind)
        if guard is None:
            return  # etcd mode, standing by: the leader passes
        done = self._apply(desired, sha, f"commit {snapshot.short}", previous, guard)
        if done is None or self.cluster.fenced(done):
            return
        self.state.canary_s = self._canary_interval(desired)
        report_pass(self.metrics, done, sha, kind)
        observed = self.session.observe(desired)
        set_healthy(self.metrics, desired, observed)
        set_canaries(self.metrics, desired, self.session.canaries(desired.environment))
        self._show(desired, observed)
        self.follow_records(desired, observed)

    def _show(self, desired: DesiredState, observed: ObservedState) -> None:
        """Hand what this pass observed to the status page (no observation of its own)."""
        git_dir = Path(self.source.repo()[0].git_dir)
        held = self.session.held(desired)
        self.view = PageView(desired, observed, held, git_dir, time.time())

    def _detect(self, desired: DesiredState, sha: str) -> ObservedState:
        """Detect-only: report drift (log, metrics) and change nothing; what it saw."""
        preview = self.session.preview(desired)
        found = preview.plan
        self._show(desired, preview.observed)
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
        return preview.observed

    def _apply(
        self, desired: DesiredState, sha: str, label: str, previous: str | None, guard: Guard
    ) -> PassResult | None:
        """One pass under the target's lock; None when ``sha`` turns out to be refused
        as a rollback there (it is rejected, and ``previous`` is the good commit again)."""
        repo_dir = Path(self.source.repo()[0].git_dir)
        with target_lock(self.cfg.state_dir, desired.environment, self.cfg.lock_timeout):
            # Again under the lock: an operator's rollback (`apply --allow-rollback`) may
            # have been recorded since _load looked; this pass must not undo it.
            try:
                check_forward(repo_dir, desired.environment, self._last(desired), sha)
            except RollbackRefused as exc:
                self.state.good = None if previous == sha else previous
                self.state.rollbacks[sha] = desired
                self._reject(sha, str(exc), "rollback")
                return None
            return self.session.apply(
                desired,
                source=label,
                health_min_s=self.cfg.health_min_s,
                should_stop=self.stop.is_set,
                retention=self.cfg.retention,
                guard=guard,
            )
