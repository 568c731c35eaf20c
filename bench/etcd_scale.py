"""etcd mode at scale, by simulation on this machine: 20, 50 and 100 app agents against
a 3-member TLS etcd cluster (tests/etcd_support.py, Debian's etcd).

Each app agent is a process of bench/light_agent.py: the real agent's etcd side (watch
its slice, report bound to its own lease) without Docker: it reports each container of
its slice running and healthy at once. An LB reporter (a thread here) reports each
pools revision as an LB agent would once applied. The leader is ``EtcdDrive`` in this
process (what `reconcile watch` runs when it leads), one service `web` with one replica
on every app host, the default rollout (all hosts in one batch).

For each size N: start N agents (time until all reported), the first deploy (v1), then
``--runs`` release switches (v1 <-> v2) timed from the leader's pass start until every
host runs the new release, the pools say so, the LB reported them, and the old
containers are gone: one pass, what a commit costs once the leader has read it. During
the switches, the gRPC requests the members handled (etcd's own
``grpc_server_handled_total``, summed over the members; the JSON gateway goes through
gRPC) per second. Then each agent's CPU and RSS while idle (``--idle`` seconds, from
/proc).

    PYTHONPATH=$PWD python bench/etcd_scale.py [--sizes 20,50,100] [--runs 3] [--idle 10] \\
        [--docker]

With ``--docker`` each agent starts (and removes) one real small container (image
sample-app:v1, named after the slice's container and the host) on the shared local
engine for each container of its slice before it reports it: the engine's work is then
part of each switch.

Not a test: nothing is asserted. The machine is shared: read medians. Compare with SSH
mode: bench/hosts_bench.py (1, 3, 6 simulated hosts with their own engines).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from etcd_support import EtcdCluster  # noqa: E402
from support import desired, service  # noqa: E402

from reconciler.agent.drive import EtcdDrive  # noqa: E402
from reconciler.cluster.etcd import Etcd  # noqa: E402
from reconciler.cluster.keys import Keys  # noqa: E402
from reconciler.cluster.lbconfig import LBReport, encode_report  # noqa: E402
from reconciler.cluster.publish import NoFence, app_reports  # noqa: E402
from reconciler.coordination import EtcdSettings  # noqa: E402
from reconciler.model import DesiredState, Instance  # noqa: E402

INSTANCE = "scale"
LABEL = "io.reconciler-bench.scale"  # light_agent.py's containers
LB = "lb1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def grpc_requests(cluster: EtcdCluster) -> float:
    """gRPC requests handled so far, summed over the members' /metrics."""
    p = cluster.pki
    total = 0.0
    for m in cluster.members:
        text = requests.get(f"{m.endpoint}/metrics", cert=(str(p.client_cert),
                            str(p.client_key)), verify=str(p.ca), timeout=10).text
        total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("grpc_server_handled_total{"))
    return total


def lb_reporter(client: Etcd, keys: Keys, stop: threading.Event) -> None:
    """Report every pools revision as applied, as an LB agent does once it applied it."""
    revision = client.range(keys.pools, prefix=True).revision
    while not stop.is_set():
        client.put(keys.report(LB), encode_report(LBReport(LB, revision, "", 0, time.time())))
        for ev in client.watch(keys.pools, prefix=True, start_revision=revision + 1,
                               idle_s=1.0):
            revision = max(revision, ev.kv.mod_revision)
            break


def web(keys: Keys, hosts: tuple[str, ...], revision: str, commit: str) -> DesiredState:
    d = desired(service("web", [(revision, 100)], replicas=1, hosts=hosts), hosts=hosts,
                lb_hosts=(LB,), env=keys.environment, commit=commit)
    return replace(d, hosts=tuple(replace(h, address="127.0.0.1") for h in d.hosts),
                   instance=Instance(INSTANCE, adopt_unlabelled=False, label_key="k"))


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, RSS in MiB) of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmRSS:"))
    return cpu, rss / 1024


def one_size(cluster: EtcdCluster, settings: EtcdSettings, n: int, runs: int,
             idle_s: float, docker_image: str) -> dict[str, float]:
    keys = Keys(INSTANCE, f"s{n}x{uuid.uuid4().hex[:4]}")
    hosts = tuple(f"a{i:03d}" for i in range(n))
    client = Etcd(settings)
    stop = threading.Event()
    threading.Thread(target=lb_reporter, args=(client, keys, stop), daemon=True).start()
    agents = []
    t0 = time.monotonic()
    for i, h in enumerate(hosts):
        agents.append(subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "light_agent.py"), "--etcd",
             ",".join(settings.endpoints), "--ca", settings.ca, "--cert", settings.cert,
             "--key", settings.key, "--env", keys.environment, "--instance", INSTANCE,
             "--host", h, "--port", str(20000 + 100 * i),
             *(["--docker-image", docker_image] if docker_image else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        while len(app_reports(client, keys)) < n:
            time.sleep(0.2)
        started = time.monotonic() - t0
        drive = EtcdDrive(client, keys, NoFence(), health_timeout_s=300, lb_timeout_s=300)
        t0 = time.monotonic()
        first = drive.run(web(keys, hosts, "v1", "c0"))
        deploy = time.monotonic() - t0
        assert not first.failures and not first.hosts, first
        times, rates = [], []
        for run in range(runs):
            revision = "v2" if run % 2 == 0 else "v1"
            before = grpc_requests(cluster)
            t0 = time.monotonic()
            done = drive.run(web(keys, hosts, revision, f"c{run + 1}"))
            took = time.monotonic() - t0
            rate = (grpc_requests(cluster) - before) / took
            assert not done.failures and not done.hosts, done
            running = {c.label("io.reconciler.revision") for h in drive.observe().hosts
                       for c in h.containers}
            assert running == {revision}, running
            times.append(took)
            rates.append(rate)
            log(f"N={n} switch {run + 1}: {took:.2f}s, {rate:.0f} etcd requests/s")
        cpu0 = {a.pid: proc_cpu_rss(a.pid) for a in agents}
        time.sleep(idle_s)
        idle = [proc_cpu_rss(a.pid) for a in agents]
        cpu = [100 * (c - cpu0[a.pid][0]) / idle_s for a, (c, _) in zip(agents, idle, strict=True)]
        return {"n": n, "started": started, "deploy": deploy,
                "switch": statistics.median(times), "rate": statistics.median(rates),
                "cpu": statistics.median(cpu), "rss": statistics.median(r for _, r in idle)}
    finally:
        stop.set()
        for a in agents:
            a.terminate()
        for a in agents:
            a.wait(timeout=30)
        client.delete(keys.prefix, prefix=True)
        client.close()
        if docker_image:
            import docker

            engine = docker.from_env()
            for c in engine.containers.list(all=True, filters={
                    "label": f"{LABEL}={keys.environment}"}):
                c.remove(force=True)
            engine.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20,50,100")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--docker", action="store_true",
                   help="each agent runs a real container (sample-app:v1) per slice container "
                        "on the local engine")
    a = p.parse_args()
    image = "sample-app:v1" if a.docker else ""
    with tempfile.TemporaryDirectory(prefix="etcdscale") as tmp:
        cluster = EtcdCluster.start(Path(tmp) / "etcd")
        try:
            pki = cluster.pki
            settings = EtcdSettings(tuple(cluster.endpoints), str(pki.ca),
                                    str(pki.client_cert), str(pki.client_key))
            rows = [one_size(cluster, settings, int(n), a.runs, a.idle, image)
                    for n in a.sizes.split(",")]
        finally:
            cluster.close()
    print("| app agents | all reported after start | first deploy | release switch (median) "
          "| etcd requests/s in it | agent idle CPU | agent RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:.0f} | {r['started']:.1f} s | {r['deploy']:.2f} s | {r['switch']:.2f} s "
              f"| {r['rate']:.0f} | {r['cpu']:.2f} % | {r['rss']:.0f} MiB |")


if __name__ == "__main__":
    main()
