"""The client side of the service socket (SPEC §2): one connection, one request.

Used by ``iservice start`` and by tests.  Before sending anything (the startup
data may carry a management password) it checks that the peer of the socket is
root, so a process that planted a socket at the service's path cannot collect
requests (the Linux side of CVE-2024-4877).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from iservice.errors import ReplyFormatError
from iservice.linux.identity import peer_credentials
from iservice.wire import startup as w

REPLY_BUFSIZE = 65536


class ServiceUnavailable(Exception):
    """The service socket cannot be reached, or its peer is not the service."""


@dataclass
class Connection:
    sock: socket.socket

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_startup(self, data: w.StartupData) -> None:
        self.sock.send(w.encode_startup(data))

    def replies(self) -> Iterator[w.Reply]:
        """Replies until the service closes the connection."""
        while True:
            raw = self.sock.recv(REPLY_BUFSIZE)
            if not raw:
                return
            yield w.decode_reply(raw)


def connect(path: str, *, timeout: float | None = 10.0, require_root_peer: bool = True
            ) -> Connection:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    # A full listen queue (a burst of other clients) gives EAGAIN at once on a socket
    # with a timeout: retry until the timeout rather than give up.
    deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
    while True:
        try:
            sock.connect(path)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            exc: OSError = TimeoutError(errno.ETIMEDOUT, "the service's queue stayed full")
        except OSError as err:
            exc = err
        sock.close()
        raise ServiceUnavailable(f"cannot connect to the service at {path}: "
                                 f"{exc.strerror or exc}") from None
    if require_root_peer and peer_credentials(sock).uid != 0:
        sock.close()
        raise ServiceUnavailable(f"{path} is not served by root: refusing to talk to it")
    return Connection(sock)


def start(path: str, workdir: str, options: str, stdin: str = "", *,
          timeout: float | None = 10.0) -> tuple[Connection, w.Reply]:
    """Send one startup request; returns the open connection and the first reply."""
    conn = connect(path, timeout=timeout)
    try:
        conn.send_startup(w.StartupData(workdir=workdir, options=options, stdin=stdin))
        first = next(conn.replies(), None)
    except (OSError, ReplyFormatError):
        conn.close()
        raise
    if first is None:
        conn.close()
        raise ServiceUnavailable("the service closed the connection without a reply")
    return conn, first


def default_workdir() -> str:
    return os.getcwd()
