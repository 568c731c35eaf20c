"""OpenSSH's ``direct-streamlocal@openssh.com`` channel (a Unix socket on the host),
which paramiko does not offer: how ``SshTransport.open_unix`` reaches the Docker engine
and HAProxy's sockets.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from reconciler.transport.base import StreamUnavailable, TransportError

if TYPE_CHECKING:
    import paramiko


class _QuietChannelRefusals(logging.Filter):
    """paramiko logs every refused channel open at ERROR; a refused socket is an
    ordinary answer here (e.g. HAProxy not running yet) and is raised as such."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_QuietChannelRefusals())


def open_streamlocal(transport: paramiko.Transport, path: str, timeout: float) -> paramiko.Channel:
    """Open a ``direct-streamlocal@openssh.com`` channel to the Unix socket ``path``.

    paramiko's ``open_channel`` only knows the TCP channel kinds; this is the same
    request with the payload RFC-style OpenSSH defines for Unix sockets (string path,
    string reserved, uint32 reserved). Raises StreamUnavailable when the server cannot
    connect to the socket (missing, refused, or forwarding disabled).
    """
    import paramiko
    from paramiko.common import cMSG_CHANNEL_OPEN

    # paramiko's private channel bookkeeping, as open_channel itself uses it (checked
    # against paramiko 3.4-5.x; the integration tests exercise it on every run).
    t: Any = transport
    if not t.is_active():
        raise TransportError("SSH session not active")
    with t.lock:
        window = t._sanitize_window_size(None)
        packet = t._sanitize_packet_size(None)
        chanid = t._next_channel()
        m = paramiko.Message()
        m.add_byte(cMSG_CHANNEL_OPEN)
        m.add_string("direct-streamlocal@openssh.com")
        m.add_int(chanid)
        m.add_int(window)
        m.add_int(packet)
        m.add_string(path)
        m.add_string("")
        m.add_int(0)
        chan: Any = paramiko.Channel(chanid)
        t._channels.put(chanid, chan)
        event = threading.Event()
        t.channel_events[chanid] = event
        t.channels_seen[chanid] = True
        chan._set_transport(t)
        chan._set_window(window, packet)
    t._send_user_message(m)
    deadline = time.monotonic() + timeout
    while not event.wait(0.05):
        if not t.is_active():
            raise TransportError("SSH connection closed while opening a channel")
        if time.monotonic() > deadline:
            raise TransportError(f"{path}: no answer to the channel request within {timeout}s")
    opened: paramiko.Channel | None = t._channels.get(chanid)
    if opened is None:
        raise StreamUnavailable(f"{path}: the host could not connect to the socket")
    return opened
