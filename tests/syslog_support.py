"""A real rsyslogd (Debian's) on loopback for tests: listens on UDP, writes each message
to a file, one line per message (the message text only)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from deploy_support import free_port


class Rsyslog:
    """``rsyslogd -n`` with its own config, pid file and work directory under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = root / "messages.log"
        conf = root / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{root}")\n'
            'module(load="imudp")\n'
            f'input(type="imudp" address="127.0.0.1" port="{self.port}")\n'
            'template(name="msgonly" type="string" string="%msg%\\n")\n'
            f'*.* action(type="omfile" file="{self.out}" template="msgonly")\n'
        )
        self.proc = subprocess.Popen(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(root / "rsyslog.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Ready once its pid file exists (it writes it after opening its inputs).
        deadline = time.monotonic() + 10
        while not (root / "rsyslog.pid").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"rsyslogd did not start: {err}")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
