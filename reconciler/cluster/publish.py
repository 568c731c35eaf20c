"""The leader publishes what the LB hosts need: every backend's pool and every load
balancer's structure (``reconciler.cluster.lbconfig``), in one etcd transaction per
change.

``publish_pools`` reads the environment's ``pool/`` and ``lb/`` keys, encodes the
publication, and writes only the keys whose value differs (and deletes the pools and
structures no longer published) in one transaction that holds only if

- every key it writes or deletes still has the mod revision the read saw (created
  never, for a new one): compare-and-swap, so two writers never interleave, and
- the ``fence`` still holds: the conditions that say this replica still leads (e.g.
  the leader key is bound to its lease; ``reconciler.cluster.leader`` gives them).

Nothing changed: no transaction at all. The transaction failed: ``FencedOut`` when the
fence alone no longer holds (this replica must not act again), else ``PublishConflict``
(someone else wrote meanwhile: read and publish again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from reconciler.cluster.etcd import Compare, Etcd, Op, created_never
from reconciler.cluster.hostslice import AppReport, HostSlice, decode_app_report, encode_slice
from reconciler.cluster.keys import Keys
from reconciler.cluster.lbconfig import (
    LBConfigError,
    LBReport,
    Pool,
    Publication,
    decode_pool,
    decode_report,
    encode_pool,
    encode_structure,
)
from reconciler.errors import ClusterError, FencedOut

T = TypeVar("T")


@runtime_checkable
class Fence(Protocol):
    """What makes a write of this replica conditional on its leadership."""

    def compares(self) -> Sequence[Compare]:
        """Conditions that hold while this replica leads ([]: no fence, e.g. a test)."""
        ...


@dataclass(frozen=True)
class NoFence:
    """No leadership condition (single writer: tests, ``ssh`` mode tools)."""

    def compares(self) -> Sequence[Compare]:
        return ()


class PublishConflict(ClusterError):
    """A published key changed between the read and the write: read and publish again."""


@dataclass(frozen=True)
class Published:
    """What one ``publish_pools`` did: the keys written and deleted, and the revision
    of the store after its transaction (the read's revision when nothing changed)."""

    written: tuple[str, ...]
    deleted: tuple[str, ...]
    revision: int

    @property
    def changed(self) -> bool:
        return bool(self.written or self.deleted)


def wanted_values(keys: Keys, publication: Publication) -> dict[str, bytes]:
    """Key -> value of everything ``publication`` says."""
    out = {keys.pool(p.backend): encode_pool(p) for p in publication.pools}
    for st in publication.structures:
        out[keys.structure(st.loadbalancer.name)] = encode_structure(st)
    return out


def publish_pools(client: Etcd, keys: Keys, publication: Publication, fence: Fence) -> Published:
    """Make the ``pool/`` and ``lb/`` keys of ``keys`` say ``publication``, in one
    transaction fenced by ``fence`` (see the module). Raises FencedOut, PublishConflict,
    EtcdUnavailable (nothing written in any case)."""
    want = wanted_values(keys, publication)
    reads = [client.range(p, prefix=True) for p in (keys.pools, keys.structures)]
    have = {kv.key: kv for r in reads for kv in r.kvs}
    compares: list[Compare] = list(fence.compares())
    ops: list[Op] = []
    for key in sorted(want):
        old = have.get(key)
        if old is not None and old.value == want[key]:
            continue
        unchanged = created_never(key) if old is None else Compare(key, "MOD", old.mod_revision)
        compares.append(unchanged)
        ops.append(Op("put", key, want[key]))
    for key in sorted(set(have) - set(want)):
        compares.append(Compare(key, "MOD", have[key].mod_revision))
        ops.append(Op("delete", key))
    written = tuple(o.key for o in ops if o.kind == "put")
    deleted = tuple(o.key for o in ops if o.kind == "delete")
    if not ops:
        return Published((), (), max(r.revision for r in reads))
    result = client.txn(compares, ops)
    if result.succeeded:
        return Published(written, deleted, result.revision)
    if fence.compares() and not client.txn(list(fence.compares()), []).succeeded:
        raise FencedOut(f"not the leader of {keys.prefix} any more: nothing published")
    raise PublishConflict(
        f"a key under {keys.prefix} changed while publishing "
        f"({', '.join((*written, *deleted))}); nothing published: publish again"
    )


def published_pools(client: Etcd, keys: Keys) -> dict[str, Pool]:
    """Backend -> the pool published now (one that cannot be read is left out: the
    next publication writes it again)."""
    return {p.backend: p for p in _read_all(client, keys.pools, "", decode_pool)}


def lb_reports(client: Etcd, keys: Keys) -> dict[str, LBReport]:
    """LB host -> what its agent last reported having applied (an agent whose lease
    expired has no report; one that cannot be read is left out). The leader moves on
    (e.g. stops retired containers) once every LB host reports a revision at least the
    one ``publish_pools`` returned."""
    return {r.host: r for r in _read_all(client, keys.hosts, "/report", decode_report)}


def publish_slice(client: Etcd, keys: Keys, value: HostSlice, fence: Fence) -> int:
    """Make ``hosts/<host>/desired`` say ``value`` in one transaction fenced by ``fence``
    (and compare-and-swap on the key); the key's mod revision after it (unchanged when
    it said so already). Raises FencedOut, PublishConflict, EtcdUnavailable."""
    key = keys.desired(value.host)
    found = client.range(key)
    raw = encode_slice(value)
    old = found.kvs[0] if found.kvs else None
    if old is not None and old.value == raw:
        return old.mod_revision
    unchanged = created_never(key) if old is None else Compare(key, "MOD", old.mod_revision)
    result = client.txn([*fence.compares(), unchanged], [Op("put", key, raw)])
    if result.succeeded:
        return result.revision
    if fence.compares() and not client.txn(list(fence.compares()), []).succeeded:
        raise FencedOut(f"not the leader of {keys.prefix} any more: slice not published")
    raise PublishConflict(f"{key} changed while publishing; nothing published: publish again")


def app_reports(client: Etcd, keys: Keys) -> dict[str, AppReport]:
    """App host -> what its agent last reported (a dead agent's report expired with its
    lease; one that cannot be read is left out)."""
    return {r.host: r for r in _read_all(client, keys.hosts, "/app-report", decode_app_report)}


def _read_all(client: Etcd, prefix: str, suffix: str,
              decode: Callable[[str, bytes], T]) -> list[T]:
    """The values of the keys under ``prefix`` ending in ``suffix`` that ``decode``
    reads (another kind of value, or a newer format, is left out)."""
    out = []
    for kv in client.range(prefix, prefix=True).kvs:
        if kv.key.endswith(suffix):
            try:
                out.append(decode(kv.key, kv.value))
            except LBConfigError:
                continue
    return out
