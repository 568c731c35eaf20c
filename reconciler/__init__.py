"""Declarative GitOps reconciler for Docker hosts behind HAProxy."""

import sys

__version__ = "0.1.0"

# The Docker SDK imports its own SSH adapter (and with it paramiko, ~0.1-0.2 s) on
# `import docker`, inside a try/except ImportError. The reconciler never uses it: it
# reaches remote engines through its own paramiko channels (transport/ssh_docker.py),
# and a local pass needs no paramiko at all. A None entry makes that import fail fast,
# so `docker.transport.SSHHTTPAdapter` is simply absent, as on a system without paramiko.
sys.modules.setdefault("docker.transport.sshconn", None)  # type: ignore[arg-type]
