"""A light app agent for bench/etcd_scale.py: the etcd side of ``reconcile agent --role
app``, Docker optional. It follows its host's slice as the real agent does (watches on
``hosts/<host>/desired`` that end after 1 s idle, a read on a change and every 5 s; the
report bound to its own lease, renewed every third of its TTL) and reports every
container of the slice as running and healthy on a port of its own: at once (the
coordination alone: leader, etcd, agent protocol), or, with ``--docker-image``, once it
started a small container of that image for it on the shared local engine (names
carry the host: the real ones do not, so real agents cannot share one engine).

    python bench/light_agent.py --etcd URL,URL --ca F --cert F --key F \\
        --env E --instance I --host H [--docker-image sample-app:v1]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.cluster.etcd import Etcd  # noqa: E402
from reconciler.cluster.hostslice import (  # noqa: E402
    AppReport,
    ReportedContainer,
    decode_slice,
    encode_app_report,
)
from reconciler.cluster.keys import Keys  # noqa: E402
from reconciler.cluster.reportlease import ReportLease  # noqa: E402
from reconciler.coordination import EtcdSettings  # noqa: E402

IMAGES = (("app:v1", "sha256:" + "1" * 64), ("app:v2", "sha256:" + "2" * 64))
TTL_S = 10
RESYNC_S = 5.0  # the real agent's --resync default
LABEL = "io.reconciler-bench.scale"


def follow(client: Etcd, key: str, revision: int, lease: ReportLease) -> None:
    """As the real agent: return when the slice changed past ``revision`` or after
    RESYNC_S; watches end after 1 s idle, the lease renewed in between."""
    deadline = time.monotonic() + RESYNC_S
    start = revision + 1 if revision else 0
    while time.monotonic() < deadline:
        for ev in client.watch(key, start_revision=start, idle_s=1.0):
            start = ev.kv.mod_revision + 1
            if ev.kv.key == key:
                return
        lease.renew()


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--etcd", "--ca", "--cert", "--key", "--env", "--instance", "--host"):
        p.add_argument(flag, required=True)
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--docker-image", default="",
                   help="run each container of the slice as a container of this image on the "
                        "local engine (named <container>.<host>, labelled " + LABEL + ")")
    a = p.parse_args()
    engine = None
    if a.docker_image:
        import docker

        engine = docker.from_env()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client = Etcd(EtcdSettings(tuple(a.etcd.split(",")), a.ca, a.cert, a.key))
    keys = Keys(a.instance, a.env)
    key = keys.desired(a.host)
    lease = ReportLease(client, TTL_S)
    running: dict[str, ReportedContainer] = {}
    revision, reported, port = 0, -1, a.port
    while True:
        try:
            kv = client.get(key)
            if kv is not None and kv.mod_revision > revision:
                sl = decode_slice(kv.key, kv.value)
                wanted = {c.name for c in sl.containers} | set(sl.keep)
                for name in set(running) - wanted:
                    if engine is not None:
                        engine.containers.get(f"{name}.{a.host}").remove(force=True)
                    del running[name]
                for c in sl.containers:
                    if c.name not in running:
                        if engine is not None:  # one small container of its own, running
                            engine.containers.run(a.docker_image, name=f"{c.name}.{a.host}",
                                                  detach=True, labels={LABEL: a.env})
                        port += 1
                        running[c.name] = ReportedContainer(
                            c.name, "running", "healthy", c.image_id, c.labels, "127.0.0.1", port)
                revision = kv.mod_revision
            if lease.renew() or revision != reported:  # as the real agent: on a change
                report = AppReport(a.host, revision, "", tuple(running.values()), time.time(),
                                   images=IMAGES)
                client.put(keys.app_report(a.host), encode_app_report(report), lease=lease.id)
                reported = revision
            follow(client, key, revision, lease)
        except Exception as exc:  # etcd or the engine: say so and go on, as the agent does
            print(f"{a.host}: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.5)


if __name__ == "__main__":
    main()
