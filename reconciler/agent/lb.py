"""The LB agent (``reconcile agent --role lb``): keeps the local HAProxy serving the
pools the leader publishes in etcd (``reconciler.cluster.lbconfig``).

The loop:

1. On start, an HAProxy that does not run but has an installed config is started on
   it, before etcd is asked anything: an agent restarted while etcd is down serves what
   its config file says.
2. Read the environment's ``lb/`` and ``pool/`` keys (one read, one revision), plan
   with the LB part of the planner (``plan.pools.agent_plan``: reload only when the
   structure changed) and run the plan with the executor's LB steps on the local
   HAProxy (servers added, reweighted, repointed, drained and deleted through the
   runtime API, the config file written after ``haproxy -c``). Then report the applied
   revision under ``hosts/<host>/report``, bound to the agent's own lease, and log it;
   the report also carries HAProxy's server counters, fresh every ``stats_s`` (the
   leader's canary analysis reads them).
3. Watch the environment's prefix from the read's revision; on a change of a pool or
   structure, wait ``debounce_s`` (changes that come together are applied together)
   and read again; without one, read again every ``resync_s`` (drift repair).

Losing etcd (``EtcdUnavailable``), a value that cannot be read or a step that fails:
the error is logged, HAProxy keeps what it serves (nothing is cleared, ever), and the
loop tries again after a backoff (0.25 s doubling to 5 s). A read that publishes
nothing for this host leaves HAProxy alone too.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from reconciler.apply.containers import Started
from reconciler.apply.results import ApplyResult, StepResult
from reconciler.apply.steps import Executor
from reconciler.cluster.etcd import Etcd, WatchCompacted
from reconciler.cluster.keys import Keys
from reconciler.cluster.lbconfig import (
    LBConfigError,
    LBReport,
    Pool,
    Structure,
    decode_pool,
    decode_structure,
    desired_for,
    encode_report,
)
from reconciler.cluster.reportlease import ReportLease
from reconciler.errors import ReconcilerError
from reconciler.lb.port import LoadBalancerPort
from reconciler.model import ContainerSpec, HealthCheck, ObservedState
from reconciler.plan.actions import AddServer, RepointServer
from reconciler.plan.planner import Plan
from reconciler.plan.pools import agent_plan

log = logging.getLogger("reconciler.agent")


@dataclass(frozen=True)
class LBAgentConfig:
    keys: Keys
    host: str  # this LB host's inventory name
    debounce_s: float = 0.1
    resync_s: float = 30.0
    report_ttl_s: int = 10
    stats_s: float = 2.0  # how often the report carries fresh counters (canary analysis)
    health_timeout_s: float = 20.0
    idle_s: float = 1.0  # a watch without events ends (and is renewed) after this long


@dataclass(frozen=True)
class Read:
    """One read of what is published: the store's revision, the structure of this
    host's load balancer (None: nothing published for it) and every pool."""

    revision: int
    structure: Structure | None
    pools: tuple[Pool, ...]


def read_published(client: Etcd, keys: Keys, host: str) -> Read:
    """Read and decode the structures and pools; LBConfigError when one cannot be read
    (nothing of the read is used then), EtcdUnavailable without quorum."""
    found = client.range(keys.prefix, prefix=True)
    structure = None
    pools = []
    for kv in found.kvs:
        if kv.key.startswith(keys.structures):
            st = decode_structure(kv.key, kv.value)
            if host in st.loadbalancer.hosts:
                structure = st
        elif kv.key.startswith(keys.pools):
            pool = decode_pool(kv.key, kv.value)
            if kv.key != keys.pool(pool.backend):
                raise LBConfigError(f"etcd key {kv.key!r}: holds the pool of {pool.backend!r}")
            pools.append(pool)
    return Read(found.revision, structure, tuple(pools))


class NoEngines:
    """The container engines of an LB agent: none (its plans have no container steps)."""

    def _refuse(self) -> ReconcilerError:
        return ReconcilerError("an LB agent runs no containers")

    def port_picker(self, host: str, used: Collection[int]) -> Callable[[str], int]:
        raise self._refuse()

    def start(self, host: str, *, name: str, labels: dict[str, str], spec: ContainerSpec,
              image_id: str, address: str, pick_port: Callable[[str], int]) -> Started:
        raise self._refuse()

    def wait_healthy(self, host: str, name: str, health: HealthCheck, address: str,
                     port: int, deadline_s: float, secret_names: Collection[str]) -> None:
        raise self._refuse()

    def remove(self, host: str, name: str, grace_s: int) -> bool:
        raise self._refuse()


def backoff_s(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th failure in a row: 0.25 s doubling up to
    5 s, with jitter (agents that failed together do not retry in step)."""
    return min(5.0, 0.25 * 2.0 ** min(attempt - 1, 10)) * random.uniform(0.75, 1.25)  # noqa: S311 (jitter)


class LBAgent:
    """The agent of one LB host (see the module). ``lb``: its local HAProxy."""

    def __init__(self, cfg: LBAgentConfig, client: Etcd, lb: LoadBalancerPort) -> None:
        self.cfg = cfg
        self.client = client
        self.lb = lb
        self.applied_revision = 0
        self.applied_commit = ""
        self.reloads = 0
        self.lease = ReportLease(client, cfg.report_ttl_s)
        self._reported: tuple[int, str] | None = None
        self._stats_at = 0.0  # monotonic time of the counters last reported

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set (see the module)."""
        self.serve_installed()
        failures = 0
        while not stop.is_set():
            try:
                read = read_published(self.client, self.cfg.keys, self.cfg.host)
                self.apply(read)
                self.report()
                failures = 0
                self.follow(read.revision, stop)
            except WatchCompacted:
                continue  # read afresh
            except ReconcilerError as exc:
                failures += 1
                delay = backoff_s(failures)
                log.warning("%s; HAProxy keeps serving the last applied pools (revision %d); "
                            "trying again in %.1fs", exc, self.applied_revision, delay)
                stop.wait(delay)

    def serve_installed(self) -> None:
        """Start HAProxy on its installed config when it does not run (etcd not asked)."""
        obs = self.lb.observe()
        if not obs.running and obs.config_sections:
            self.lb.start()
            log.info("started HAProxy on its installed config")

    def follow(self, revision: int, stop: threading.Event) -> None:
        """Return ``debounce_s`` after a pool or structure changed past ``revision``, or
        after ``resync_s``; renews the report's lease (and its counters) meanwhile."""
        keys = self.cfg.keys
        start = revision + 1
        deadline = time.monotonic() + self.cfg.resync_s
        while not stop.is_set() and time.monotonic() < deadline:
            for ev in self.client.watch(keys.prefix, prefix=True, start_revision=start,
                                        idle_s=self.cfg.idle_s):
                start = ev.kv.mod_revision + 1
                if ev.kv.key.startswith((keys.pools, keys.structures)):
                    stop.wait(self.cfg.debounce_s)
                    return
                self.report()  # renews the lease; fresh counters every stats_s
            self.report()

    # ------------------------------------------------------------------ apply

    def apply(self, read: Read) -> None:
        """Make the local HAProxy serve ``read``; ReconcilerError when a step failed
        (the revision does not count as applied then)."""
        if read.structure is None:
            log.warning("nothing published for LB host %s at revision %d; HAProxy left as "
                        "it is", self.cfg.host, read.revision)
            return
        t0 = time.monotonic()
        obs = replace(self.lb.observe(), host=self.cfg.host)  # a local one says "local"
        plan = agent_plan(read.structure, read.pools, obs)
        if plan.actions:
            result = self._execute(read, plan, ObservedState(lbs=(obs,)))
            self.reloads += result.reloads
            if not result.ok:
                why = "; ".join(f"{k}: {v}" for k, v in sorted(result.failures.items()))
                raise ReconcilerError(f"revision {read.revision} not applied: {why or 'aborted'}")
        news = not self.applied_revision or self.applied_commit != read.structure.commit
        if plan.actions or news:
            log.info("applied revision %d (commit %s): %d step(s), %d reload(s) so far, %.2fs",
                     read.revision, read.structure.commit, len(plan.actions), self.reloads,
                     time.monotonic() - t0)
        self.applied_revision = read.revision
        self.applied_commit = read.structure.commit

    def _execute(self, read: Read, plan: Plan, observed: ObservedState) -> ApplyResult:
        assert read.structure is not None
        where = {(s.app_host, s.container): (s.address, s.port)
                 for p in read.pools for s in p.servers}
        ex = Executor(desired_for(read.structure), observed, NoEngines(),
                      {self.cfg.host: self.lb}, on_step=_log_step,
                      health_min_s=self.cfg.health_timeout_s)

        def published(a: AddServer | RepointServer) -> tuple[str, int]:
            return where[(a.app_host, a.container)]

        ex.lb_steps.gated_address = published
        return ex.run(plan)

    # ------------------------------------------------------------------ report

    def report(self) -> None:
        """Write ``hosts/<host>/report`` (bound to the agent's lease) when what it says
        changed, the lease was lost, or its counters are ``stats_s`` old."""
        lost = self.lease.renew()
        due = time.monotonic() - self._stats_at >= self.cfg.stats_s
        if not lost and not due and self._reported == (self.applied_revision,
                                                        self.applied_commit):
            return
        obs = self.lb.observe()
        report = LBReport(self.cfg.host, self.applied_revision, self.applied_commit,
                          self.reloads, round(time.time(), 3), stats=obs.stats,
                          worker_pid=obs.worker_pid)
        self.client.put(self.cfg.keys.report(self.cfg.host), encode_report(report),
                        lease=self.lease.id)
        self._reported = (self.applied_revision, self.applied_commit)
        self._stats_at = time.monotonic()



def _log_step(res: StepResult) -> None:
    detail = f": {res.detail}" if res.detail else ""
    log.info("  %s %s%s", res.status, res.action.describe(), detail)

