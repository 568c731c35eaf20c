"""A real Prometheus (Debian's) on loopback for tests: scrapes given targets every
second into its own temporary storage and answers PromQL over its HTTP API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from deploy_support import free_port


class Prometheus:
    """``prometheus`` with a config scraping ``targets`` (host:port, path /metrics)."""

    def __init__(self, root: Path, targets: list[str]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = root / "prometheus.yml"
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: reconcile\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        self.log = (root / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={conf}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(root / 'prometheus.log').read_text()}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` now: [{"metric": {...}, "value": [t, "v"]}]."""
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as r:
            data = json.loads(r.read())
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    def by(self, promql: str, label: str) -> dict[str, float]:
        """``promql``'s values keyed by one label."""
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in self.query(promql)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.log.close()
