"""A small typed client of an etcd cluster (3.4 or later) through its JSON gateway.

Requests go to etcd's grpc-gateway (``/v3/...`` on the client port, HTTPS with a
client certificate) through ``etcd3gw``'s client, one per endpoint, each on its own
``requests`` session. What this module adds:

- **Failover.** A request that cannot be answered by an endpoint (refused, timed out,
  TLS refused, no leader / no quorum there) is tried on the next; the endpoint that
  answered is tried first next time. When none answers: ``EtcdUnavailable`` naming
  every endpoint with why.
- **TLS only from the given files.** The sessions ignore the environment
  (``REQUESTS_CA_BUNDLE`` would otherwise replace the CA, ``HTTPS_PROXY`` reroute
  the traffic); missing files are refused up front, naming the path.
- **Watches that fail loudly.** ``etcd3gw``'s watcher reads its stream in a thread
  that dies silently when the member goes away (its iterator then blocks forever), so
  ``watch`` reads the gateway's stream itself: events as they come, a quiet end after
  ``idle_s`` without one (the caller watches again from its last revision) and
  ``EtcdUnavailable`` when the stream breaks. A revision already compacted raises
  ``WatchCompacted``: read afresh, then watch from the read's revision.

Keys and values are bytes on the wire; keys are ``str`` here, values ``bytes``.
Lease ids are ints. Nothing here logs or formats a value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from reconciler.coordination import EtcdSettings
from reconciler.errors import ClusterError, EtcdUnavailable

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 2.0
API = "/v3/"


class WatchCompacted(ClusterError):
    """The revision a watch asked for was compacted away: read afresh."""

    def __init__(self, key: str, revision: int) -> None:
        super().__init__(f"etcd: watch of {key!r} from a compacted revision (now {revision})")
        self.revision = revision


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The end of the key range of every key that starts with ``prefix`` (its last byte
    plus one), as etcd's range_end wants it."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw).decode()


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int  # 0: not bound to a lease

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(kv["key"]).decode(),
            value=_unb64(kv.get("value", "")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass(frozen=True)
class Event:
    type: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class Range:
    """The keys a read found and the store's revision at the read."""

    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` ``result`` ``value``."""

    key: str
    target: Literal["VALUE", "VERSION", "CREATE", "MOD", "LEASE"]
    value: int | bytes
    result: Literal["EQUAL", "NOT_EQUAL", "GREATER", "LESS"] = "EQUAL"

    def to_json(self) -> dict[str, Any]:
        field_ = {"VALUE": "value", "VERSION": "version", "CREATE": "create_revision",
                  "MOD": "mod_revision", "LEASE": "lease"}[self.target]
        value = _b64(self.value) if isinstance(self.value, bytes) else str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result,
                field_: value}


def created_never(key: str) -> Compare:
    """True when ``key`` does not exist."""
    return Compare(key, "CREATE", 0)


def value_is(key: str, value: bytes) -> Compare:
    return Compare(key, "VALUE", value)


def lease_is(key: str, lease: int) -> Compare:
    return Compare(key, "LEASE", lease)


@dataclass(frozen=True)
class Op:
    """One request of a transaction: ``put`` (bound to ``lease`` unless 0), ``delete``
    or ``get`` of ``key`` (``prefix``: every key under it)."""

    kind: Literal["put", "delete", "get"]
    key: str
    value: bytes = b""
    lease: int = 0
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key)}
        if self.prefix:
            body["range_end"] = _b64(prefix_end(self.key))
        if self.kind == "put":
            body["value"] = _b64(self.value)
            if self.lease:
                body["lease"] = str(self.lease)
        name = {"put": "request_put", "delete": "request_delete_range", "get": "request_range"}
        return {name[self.kind]: body}


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[dict[str, Any], ...] = field(default=(), repr=False)


# ------------------------------------------------------------------ the client


def check_settings(settings: EtcdSettings) -> None:
    """Refuse settings that cannot work before any request: an endpoint that is not
    ``https://host:port``, a TLS file that is not there. Raises ClusterError naming it."""
    for ep in settings.endpoints:
        parts = urlsplit(ep)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise ClusterError(f"etcd endpoint {ep!r} is not https://host:port")
        try:
            _ = parts.port
        except ValueError:
            raise ClusterError(f"etcd endpoint {ep!r} has an invalid port") from None
    for what, path in (("ca", settings.ca), ("cert", settings.cert), ("key", settings.key)):
        if not Path(path).is_file():
            raise ClusterError(f"etcd {what} file {path!r} does not exist or is not a file")


class Etcd:
    """A client of one etcd cluster. Raises ``EtcdUnavailable`` when no endpoint answers
    and ``ClusterError`` when the cluster refuses a request (naming the endpoint).
    Safe to share between threads."""

    def __init__(self, settings: EtcdSettings, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import etcd3gw
        import requests

        check_settings(settings)
        self.settings = settings
        self.timeout_s = timeout_s
        self._clients: list[etcd3gw.Etcd3Client] = []
        for ep in settings.endpoints:
            session = requests.Session()
            session.trust_env = False  # no CA bundle or proxy from the environment
            session.verify = settings.ca
            session.cert = (settings.cert, settings.key)
            parts = urlsplit(ep)
            self._clients.append(
                etcd3gw.Etcd3Client(host=parts.hostname or "", port=parts.port or 2379,
                                    protocol="https", timeout=timeout_s, api_path=API,
                                    session=session))
        self._first = 0

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self.settings.endpoints

    def close(self) -> None:
        for c in self._clients:
            c.session.close()

    def _call(self, what: str, request: Callable[[Any], T]) -> T:
        """``request(client)`` on the first endpoint that answers, from the last good one."""
        from etcd3gw import exceptions as ex

        n = len(self._clients)
        tried: list[str] = []
        for k in range(n):
            i = (self._first + k) % n
            try:
                out = request(self._clients[i])
            except (ex.ConnectionFailedError, ex.ConnectionTimeoutError,
                    ex.InternalServerError) as exc:
                tried.append(f"{self.endpoints[i]}: {_why(exc)}")
                continue
            except ex.Etcd3Exception as exc:
                raise ClusterError(
                    f"etcd {self.endpoints[i]} refused {what}: {_why(exc)}") from None
            self._first = i
            return out
        raise EtcdUnavailable(f"etcd unavailable for {what}: " + "; ".join(tried))

    def _post(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        def request(c: Any) -> dict[str, Any]:
            out: dict[str, Any] = c.post(c.get_url(path), json=body)
            if isinstance(out.get("error"), dict):  # a stream's (keepalive's) error, in
                # an HTTP 200 ("no leader"): that endpoint failed (a gone lease has TTL 0)
                from etcd3gw import exceptions as ex

                raise ex.ConnectionFailedError(json.dumps(out["error"]))
            return out

        return self._call(what, request)

    # ------------------------------------------------------------ kv

    def get(self, key: str) -> KeyValue | None:
        """The key (linearizable read: needs quorum), or None."""
        found = self.range(key)
        return found.kvs[0] if found.kvs else None

    def range(self, key: str, prefix: bool = False) -> Range:
        """``key`` (``prefix``: every key under it, sorted), with the revision of the read."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        out = self._post(f"get {key!r}", "/kv/range", body)
        kvs = tuple(KeyValue.from_json(kv) for kv in out.get("kvs", []))
        return Range(kvs, int(out.get("header", {}).get("revision", 0)))

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key`` (bound to ``lease`` unless 0); the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        out = self._post(f"put {key!r}", "/kv/put", body)
        return int(out.get("header", {}).get("revision", 0))

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (``prefix``: every key under it); how many were deleted."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        out = self._post(f"delete {key!r}", "/kv/deleterange", body)
        return int(out.get("deleted", 0))

    def txn(self, compare: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op] = ()) -> TxnResult:
        """One transaction: ``success`` if every ``compare`` holds, else ``failure``.
        Linearizable (needs quorum): etcd serves one without requests from a member's own
        state, even cut off, so such a one gets a read of its first compared key."""
        if compare and not success and not failure:
            success = [Op("get", compare[0].key)]
        body = {"compare": [c.to_json() for c in compare],
                "success": [o.to_json() for o in success],
                "failure": [o.to_json() for o in failure]}
        keys = sorted({c.key for c in compare} | {o.key for o in (*success, *failure)})
        out = self._post(f"txn on {', '.join(map(repr, keys))}", "/kv/txn", body)
        return TxnResult(bool(out.get("succeeded", False)),
                         int(out.get("header", {}).get("revision", 0)),
                         tuple(out.get("responses", [])))

    # ------------------------------------------------------------ leases

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; its id."""
        out = self._post("lease grant", "/lease/grant", {"TTL": str(ttl_s), "ID": "0"})
        if out.get("error"):
            raise ClusterError(f"etcd refused a lease: {out['error']}")
        return int(out["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``: its TTL from now in seconds, or 0 when it no longer exists."""
        out = self._post("lease keepalive", "/lease/keepalive", {"ID": str(lease)})
        return max(0, int(out.get("result", {}).get("TTL", 0)))

    def revoke(self, lease: int) -> None:
        """Revoke ``lease``: every key bound to it is deleted at once."""
        self._post("lease revoke", "/kv/lease/revoke", {"ID": str(lease)})

    # ------------------------------------------------------------ watch

    def watch(self, key: str, *, prefix: bool = False, start_revision: int = 0,
              idle_s: float = 1.0) -> Iterator[Event]:
        """Events of ``key`` (``prefix``: of every key under it) from ``start_revision``
        (0: from now), as they come. Ends quietly after ``idle_s`` seconds without one;
        raises ``EtcdUnavailable`` when no endpoint takes the watch or the stream
        breaks, ``WatchCompacted`` when ``start_revision`` is gone."""
        import requests

        create: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            create["range_end"] = _b64(prefix_end(key))
        if start_revision:
            create["start_revision"] = str(start_revision)

        def request(c: Any) -> Any:
            try:
                resp = c.session.post(c.get_url("/watch"), json={"create_request": create},
                                      stream=True, timeout=(self.timeout_s, idle_s))
            except requests.exceptions.RequestException as exc:
                from etcd3gw import exceptions as ex

                raise ex.ConnectionFailedError(str(exc)) from None
            if resp.status_code != 200:
                from etcd3gw import exceptions as ex

                raise ex.ConnectionFailedError(f"HTTP {resp.status_code}")
            return resp

        resp = self._call(f"watch {key!r}", request)
        endpoint = self.endpoints[self._first]
        try:
            yield from _events(resp, key, endpoint)
        finally:
            resp.close()


def _events(resp: Any, key: str, endpoint: str) -> Iterator[Event]:
    """The events of one watch stream (see ``Etcd.watch``)."""
    import requests
    import urllib3

    try:
        for line in resp.iter_lines():
            if not line.strip():
                continue
            msg = json.loads(line)
            if "error" in msg:
                raise EtcdUnavailable(f"etcd {endpoint}: watch of {key!r} ended: "
                                      f"{msg['error'].get('message', 'error')}")
            result = msg.get("result", {})
            if result.get("compact_revision") and result.get("canceled"):
                raise WatchCompacted(key, int(result["compact_revision"]))
            if result.get("canceled"):
                raise EtcdUnavailable(f"etcd {endpoint}: watch of {key!r} was canceled")
            for ev in result.get("events", []):
                kind: Literal["put", "delete"] = "delete" if ev.get("type") == "DELETE" else "put"
                yield Event(kind, KeyValue.from_json(ev["kv"]))
    except (requests.exceptions.ConnectionError, urllib3.exceptions.ReadTimeoutError) as exc:
        if "timed out" in str(exc).lower():
            return  # idle: the caller watches again from its last revision
        raise EtcdUnavailable(f"etcd {endpoint}: watch of {key!r} broke: {exc}") from None
    except requests.exceptions.RequestException as exc:
        raise EtcdUnavailable(f"etcd {endpoint}: watch of {key!r} broke: {exc}") from None
    raise EtcdUnavailable(f"etcd {endpoint}: watch of {key!r} ended (stream closed)")


def _why(exc: Exception) -> str:
    """A short reason from an etcd3gw error: the gateway's message, else the cause."""
    detail = getattr(exc, "detail_text", None) or str(exc)
    try:
        msg = json.loads(detail)
        detail = msg.get("message") or msg.get("error") or detail
    except (ValueError, AttributeError):
        pass
    text = str(detail)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS: the server's certificate is not signed by the given CA"
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__
