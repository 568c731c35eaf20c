"""The Docker SDK over any stream: a ``DockerClient`` whose HTTP connections are
channels opened by the caller (an SSH transport's ``direct-streamlocal`` channel to the
host's Docker socket), so the host needs no Docker CLI and no TCP port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reconciler.transport.base import HostKeyRefused, TransportError

if TYPE_CHECKING:
    import docker


def docker_over(opener: Any, where: str, timeout: int = 60) -> docker.DockerClient:
    """A Docker client whose every HTTP connection is a stream from ``opener()``.

    Built on the SDK's Unix-socket adapter (same pooling and request handling); only
    how a connection is opened differs. The API version is negotiated once, like
    ``version="auto"`` does."""
    from reconciler.transport.dockerapi import import_docker_sdk

    import_docker_sdk()
    import docker
    import docker.errors
    from docker.transport.unixconn import (
        UnixHTTPAdapter,
        UnixHTTPConnection,
        UnixHTTPConnectionPool,
    )

    class Connection(UnixHTTPConnection):  # type: ignore[misc]
        def connect(self) -> None:
            sock = opener()
            sock.settimeout(self.timeout)
            self.sock = sock

    class Pool(UnixHTTPConnectionPool):  # type: ignore[misc]
        def _new_conn(self) -> Connection:
            return Connection(self.base_url, self.socket_path, self.timeout)

    class Adapter(UnixHTTPAdapter):  # type: ignore[misc]
        def get_connection(self, url: Any, proxies: Any = None) -> Pool:
            with self.pools.lock:
                pool = self.pools.get(url)
                if pool:
                    return pool  # type: ignore[no-any-return]
                pool = Pool(url, self.socket_path, self.timeout, maxsize=self.max_pool_size)
                self.pools[url] = pool
            return pool

    # The base URL is a placeholder: no request goes to it, the adapter replaces it.
    client = docker.DockerClient(base_url="unix:///nonexistent", version="1.24", timeout=timeout)
    client.api.mount("http+docker://", Adapter("http+unix:///nonexistent", timeout))
    # No proxy or .netrc applies to a channel to the host's socket; requests would look
    # both up in the environment and the home folder on every API call otherwise.
    client.api.trust_env = False
    try:
        server = client.api.version(api_version=False)["ApiVersion"]
    except HostKeyRefused:
        client.close()
        raise  # says it all already: no Docker fault to suggest
    except (docker.errors.DockerException, OSError, TransportError) as exc:
        client.close()
        raise TransportError(f"{where}: cannot reach the Docker engine: {exc}") from None
    from docker.constants import DEFAULT_DOCKER_API_VERSION
    from docker.utils import version_lt

    client.api._version = (
        server if version_lt(server, DEFAULT_DOCKER_API_VERSION) else DEFAULT_DOCKER_API_VERSION
    )
    return client
