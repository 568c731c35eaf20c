"""The leader's pass in etcd mode: it reaches no host; it publishes and waits for the
agents' reports (``reconciler.agent.app``, ``reconciler.agent.lb``).

``EtcdDrive.run(desired)``:

0. Observe from the app agents' reports (containers per host, their health, the images
   they have) and plan as in ``ssh`` mode. Images the plan pulls: each host's slice
   names them (``pulls``), the leader waits until its agent reports their ids, and
   plans again (container names depend on image ids).
1. Starts: every host's slice gets the containers the plan starts (removals not yet
   applied), and the leader waits until each agent reports the slice's revision with
   every started container running and healthy, or failed (``health_timeout_s`` after
   the slice was written at the latest). A service with a container that failed fails
   as a whole: its starts are taken out of the slices again and nothing else of it
   changes (its old release keeps serving); no pool changes in that pass.
2. Pools: ``publish_pools`` with the servers over what now runs (the new containers in,
   retiring ones out), then wait until every LB agent reports that revision (the old
   servers are drained and deleted by then).
3. Removals: the slices without the retired containers; wait until each agent reports
   the revision.

App hosts change in rollout batches (``rollout.limit`` hosts each, ``wait_ms`` between
them), each planned and driven through the three phases with the later batches' hosts
frozen: their slices are not written and their pool servers stay as published. A host
whose agent does not report (its lease expired: stopped, or cut off from etcd) is
frozen the same way for the whole pass and counts as failed: its containers keep
serving and their servers stay in the pools, and its batch fails as a batch with a
failed service does (``rollout.on_failure``: stop ends the rollout there).

Every write is fenced (``publish.Fence``: ``Elector.compares()`` for a leader); a
lapsed fence raises ``FencedOut`` and the pass ends there, nothing torn down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from reconciler.cluster.etcd import Etcd
from reconciler.cluster.hostslice import AppReport, HostSlice
from reconciler.cluster.keys import Keys
from reconciler.cluster.publish import (
    Fence,
    app_reports,
    lb_reports,
    publish_pools,
    publish_slice,
    published_pools,
)
from reconciler.errors import ClusterError
from reconciler.model import DesiredState, ObservedState
from reconciler.plan.actions import PullImage, RemoveContainer, StartContainer
from reconciler.plan.batches import batches
from reconciler.plan.planner import Plan, plan
from reconciler.plan.pools import publication
from reconciler.plan.slices import host_slices

log = logging.getLogger("reconciler.drive")


@dataclass
class DriveResult:
    """What one pass did: its plan, the services that failed and why, the app hosts
    that failed and why (their agent did not report; their batch, by the rollout
    policy), notes (e.g. a rollout stopped early), the steps it took (one line each,
    for the log and the history)."""

    plan: Plan
    failures: dict[str, str] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)


class EtcdDrive:
    """The etcd-mode pass of one environment (see the module)."""

    def __init__(self, client: Etcd, keys: Keys, fence: Fence, health_timeout_s: float = 30.0,
                 lb_timeout_s: float = 60.0, poll_s: float = 0.2) -> None:
        self.client = client
        self.keys = keys
        self.fence = fence
        self.health_timeout_s = health_timeout_s
        self.lb_timeout_s = lb_timeout_s
        self.poll_s = poll_s
        self._batch_of: dict[str, int] = {}  # host -> its rollout batch in this pass

    def observe(self) -> ObservedState:
        """What runs, from the app agents' reports (a host without one runs nothing
        as far as the leader knows; its containers are not touched by that)."""
        return observed_from(app_reports(self.client, self.keys))

    def run(self, desired: DesiredState, on_plan: Callable[[Plan], None] = lambda _: None,
            held: Mapping[str, str] | None = None) -> DriveResult:
        """One pass (see the module); ``on_plan`` gets its plan before anything starts.
        Services in ``held`` (failed at this commit) are left as they run."""
        held = held or {}
        observed = self.observe()
        silent = silent_hosts(desired, observed)
        groups = batches(desired, observed)
        self._batch_of = {h: i for i, g in enumerate(groups) for h in g}
        whole = self._plan(desired, observed, held, frozen=silent.keys())
        done = DriveResult(with_silent_notes(whole, silent))
        on_plan(done.plan)
        failed: set[str] = set(silent)
        changed = False
        for index, group in enumerate(groups):
            later = {h for g in groups[index + 1 :] for h in g}
            if index > 0:
                if changed:
                    self._pause(desired.rollout.wait_ms / 1000)
                observed = self.observe()
            current = done.plan if len(groups) == 1 else self._plan(
                desired, observed, held, frozen=later | failed)
            batch = self._batch(desired, current, frozen=later | failed)
            done.failures.update(batch.failures)
            done.steps += batch.steps
            changed = not current.empty
            lost = {h: silent[h] for h in group if h in silent}
            done.hosts.update(lost)
            if not (batch.failures or lost):
                continue
            failed |= set(group)
            if desired.rollout.on_failure == "stop" and index + 1 < len(groups):
                rest = ", ".join(h for g in groups[index + 1 :] for h in g)
                done.notes.append(f"rollout stopped after batch {index + 1}/{len(groups)} "
                                  f"({', '.join(group)}) failed; not rolled: {rest}")
                break
        return done

    def _plan(self, desired: DesiredState, observed: ObservedState, held: Mapping[str, str],
              frozen: Collection[str]) -> Plan:
        """The containers' plan with ``frozen`` hosts left as they run, once the images
        it pulls are on their hosts (container names depend on image ids)."""
        current = container_part(plan(desired, observed, held, frozen=frozen))
        if any(isinstance(a, PullImage) for a in current.actions):
            self._pull(desired, observed, current, frozen)
            current = container_part(plan(desired, self.observe(), held, frozen=frozen))
        return current

    def _batch(self, desired: DesiredState, current: Plan, frozen: Collection[str]) -> DriveResult:
        """Starts, pools, removals of one plan (see the module); the slices and pool
        servers of ``frozen`` hosts are left as published."""
        done = DriveResult(current)
        starts = [a for a in current.actions if isinstance(a, StartContainer)]
        if starts:
            revs = self._publish(self._slices(desired, self.observe(), current, removals=False),
                                 frozen)
            done.failures = self._wait_started(starts, revs)
            done.steps += [f"started {a.name} on {a.host}" for a in starts
                           if a.service not in done.failures]
        if done.failures:
            self._undo(desired, current, done.failures, frozen)
            return done
        observed = self.observe()
        pools = publication(desired, observed, frozen,
                            published_pools(self.client, self.keys) if frozen else None)
        published = publish_pools(self.client, self.keys, pools, self.fence)
        if published.changed:
            self._wait_lbs(desired, published.revision)
            done.steps.append(f"published pools at revision {published.revision}")
        removes = [a for a in current.actions if isinstance(a, RemoveContainer)]
        self._settle(self._slices(desired, self.observe(), current, removals=True), frozen)
        done.steps += [f"removed {a.name} on {a.host}" for a in removes]
        return done

    def _pause(self, seconds: float) -> None:
        """The rollout's wait between batches, fenced: a replica that lost the lead
        meanwhile stops here (``compares`` raises FencedOut)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.fence.compares()
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    # ------------------------------------------------------------------ phases

    def _slices(self, desired: DesiredState, observed: ObservedState, plan_: Plan, *,
                removals: bool) -> dict[str, HostSlice]:
        """``host_slices``, each naming its host's rollout batch (a host's slice does not
        change when a later batch starts: its agent is not woken for nothing)."""
        return {h: replace(v, batch=self._batch_of.get(h, 0)) for h, v in
                host_slices(desired, observed, plan_, removals=removals).items()}

    def _publish(self, slices: dict[str, HostSlice], frozen: Collection[str]) -> dict[str, int]:
        """Publish the slice of every host but the ``frozen`` ones (fenced: their agents
        keep the slice they have; a silent agent's slice, built from no report, would
        tear down what it runs); host -> its key's mod revision. Hosts side by side
        (PUBLISH_PARALLEL at a time): each is a read and a transaction, and one after
        the other they cost a pass about 20 ms per host (bench/etcd_scale.py)."""
        todo = [(h, s) for h, s in slices.items() if h not in frozen]
        if not todo:
            return {}
        with ThreadPoolExecutor(max_workers=min(PUBLISH_PARALLEL, len(todo))) as pool:
            revs = list(pool.map(
                lambda hs: publish_slice(self.client, self.keys, hs[1], self.fence), todo))
        return {h: rev for (h, _), rev in zip(todo, revs, strict=True)}

    def _settle(self, slices: dict[str, HostSlice], frozen: Collection[str]) -> None:
        revs = self._publish(slices, frozen)
        self._wait(lambda reports: _behind(reports, revs), self.health_timeout_s,
                   "app agents to apply their slices")

    def _undo(self, desired: DesiredState, current: Plan, failures: Mapping[str, str],
              frozen: Collection[str]) -> None:
        """Take the starts of the failed services out of the slices (their agents remove
        those containers) and leave the rest of those services as it runs."""
        failed = {a.name for a in current.actions if isinstance(a, StartContainer)
                  and (a.service in failures or "-" in failures)}
        kept = replace(current, actions=tuple(
            a for a in current.actions if a.service not in failures
            and not (isinstance(a, StartContainer) and a.name in failed)))
        slices = self._slices(desired, self.observe(), kept, removals=False)
        self._settle({h: replace(v, containers=tuple(c for c in v.containers
                                                     if c.name not in failed),
                                 keep=tuple(k for k in v.keep if k not in failed))
                      for h, v in slices.items()}, frozen)

    def _pull(self, desired: DesiredState, observed: ObservedState, current: Plan,
              frozen: Collection[str]) -> None:
        """The slices name the images to pull (and start nothing yet: a container's
        name depends on its image id); wait until the agents report them."""
        pulls = replace(current, actions=tuple(
            a for a in current.actions if not isinstance(a, StartContainer)))
        revs = self._publish(self._slices(desired, observed, pulls, removals=False), frozen)
        wanted = {(a.host, a.image) for a in current.actions if isinstance(a, PullImage)}

        def missing(reports: dict[str, AppReport]) -> list[str]:
            have = {(h, ref) for h, r in reports.items() for ref, _ in r.images}
            return _behind(reports, revs) + [f"{h}: {i}" for h, i in sorted(wanted - have)]

        self._wait(missing, self.health_timeout_s, "images on the app hosts")

    def _wait_started(self, starts: list[StartContainer], revs: dict[str, int]) -> dict[str, str]:
        """Wait until every started container is healthy or failed in its host's report;
        service -> why, for each that failed."""
        failures: dict[str, str] = {}

        def pending(reports: dict[str, AppReport]) -> list[str]:
            out = _behind(reports, revs)
            for a in starts:
                got = reports[a.host].container(a.name) if a.host in reports else None
                if got is not None and got.error:
                    failures.setdefault(a.service or "", f"host {a.host}: {got.error}")
                elif got is None or got.health != "healthy" or not got.port:
                    out.append(f"{a.name} on {a.host}")
            return [p for p in out if not failures]

        self._wait(pending, self.health_timeout_s, "started containers to be healthy", failures)
        late = failures.pop("-", None)
        if late is not None:  # timed out: the services of the containers still pending
            for a in starts:
                if f"{a.name} on {a.host}" in late:
                    failures.setdefault(a.service or "", late)
            failures = failures or {"-": late}
        return failures

    def _wait_lbs(self, desired: DesiredState, revision: int) -> None:
        """Wait until every LB agent applied ``revision``. One without a report (silent:
        its HAProxy may still send traffic to the servers the pools dropped) fails the
        pass at once: nothing is removed until it applied them."""
        hosts = sorted({h for lb in desired.loadbalancers for h in lb.hosts})
        silent = [h for h in hosts if h not in lb_reports(self.client, self.keys)]
        if silent:
            raise ClusterError(f"LB host {', '.join(silent)}: {SILENT}; nothing is removed "
                               f"until it applies revision {revision} of the pools")

        def behind(_: dict[str, AppReport]) -> list[str]:
            got = lb_reports(self.client, self.keys)
            return [h for h in hosts if h not in got or got[h].revision < revision]

        self._wait(behind, self.lb_timeout_s, f"LB agents to apply revision {revision}")

    def _wait(self, pending: Callable[[dict[str, AppReport]], list[str]], timeout_s: float,
              what: str, failures: dict[str, str] | None = None) -> None:
        """Poll the reports until ``pending`` is empty; on timeout, record the rest in
        ``failures`` (when given) or raise ClusterError naming them."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.fence.compares()  # FencedOut once the leadership lapsed
            left = pending(app_reports(self.client, self.keys))
            if not left:
                return
            if time.monotonic() > deadline:
                why = f"waited {timeout_s:.0f}s for {what}: {', '.join(left[:5])}"
                if failures is None:
                    raise ClusterError(why)
                failures.setdefault("-", why)
                return
            time.sleep(self.poll_s)


PUBLISH_PARALLEL = 10  # slices written at the same time (a client's pool per endpoint: 10)
SILENT = "its agent does not report (stopped, or cut off from etcd): left as it runs"


def silent_hosts(desired: DesiredState, observed: ObservedState) -> dict[str, str]:
    """App host -> why it is left as it runs, for each whose agent has no report in
    ``observed`` (``observed_from``)."""
    seen = {h.name for h in observed.hosts}
    return {h: SILENT for h in sorted(desired.app_host_names - seen)}


def with_silent_notes(p: Plan, silent: Mapping[str, str]) -> Plan:
    """``p`` with a note for each silent host (``silent_hosts``: host -> why)."""
    return replace(p, notes=p.notes + tuple(f"host {h}: {why}" for h, why in silent.items()))


def observed_from(reports: Mapping[str, AppReport]) -> ObservedState:
    """What runs, from the app agents' reports."""
    return ObservedState(hosts=tuple(r.observed() for _, r in sorted(reports.items())),
                         observed_at=time.time())


def container_part(whole: Plan) -> Plan:
    """``whole`` with the containers' actions only: in etcd mode with agents, each LB
    agent plans its own HAProxy from the published pools."""
    return replace(whole, actions=tuple(a for a in whole.actions if isinstance(
        a, PullImage | StartContainer | RemoveContainer)))


def _behind(reports: dict[str, AppReport], revs: dict[str, int]) -> list[str]:
    """The hosts whose agent did not report at least the slice revision in ``revs``."""
    return [f"{h} (report below slice revision {r})" for h, r in sorted(revs.items())
            if h not in reports or reports[h].revision < r]
