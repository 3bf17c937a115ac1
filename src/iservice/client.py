"""The client side of the service's two sockets: one connection, one request.

* The service socket (SPEC §2): ``start`` sends one startup request (``iservice
  start``, ``iservice connect``, tests).
* The control socket (``docs/control.md``): ``control_request`` and
  ``control_stream`` send one ``wire.control.Request`` and decode the replies.

Before sending anything (the startup data may carry a management password) the
peer of the socket must be root, so a process that planted a socket at the
service's path cannot collect requests (the Linux side of CVE-2024-4877).

Client side only: no asyncio, no ctypes, nothing of the service (``iservice
sessions`` starts in a few milliseconds).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from iservice.errors import ReplyFormatError
from iservice.wire import control as wc
from iservice.wire import startup as w

REPLY_BUFSIZE = 65536


class ServiceUnavailable(Exception):
    """The service socket cannot be reached, or its peer is not the service.

    ``not_running``: nothing listens at the path (as opposed to a peer that is not
    root's, or a broken reply): ``explain`` then says how the service is started."""

    def __init__(self, message: str, *, not_running: bool = False) -> None:
        super().__init__(message)
        self.not_running = not_running

    def explain(self, instance: str = "") -> str:
        """The message, and for a service that does not run, how to start it."""
        if not self.not_running:
            return str(self)
        at = f"@{instance}" if instance else ""
        return (f"{self}\nThe service is not running. An administrator starts it (and has it "
                f"started on demand from then on) with:\n  systemctl enable --now "
                f"iservice{at}.socket iservice-control{at}.socket")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (``SO_PEERCRED``: pid, uid, gid)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", raw)[1]
    return uid


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
                                 f"{exc.strerror or exc}",
                                 not_running=exc.errno in (errno.ENOENT, errno.ECONNREFUSED,
                                                           errno.ENOTDIR)) from None
    if require_root_peer and peer_uid(sock) != 0:
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


# --------------------------------------------------------------------------- control socket


def control_stream(path: str, req: wc.Request, *, timeout: float | None = 30.0
                   ) -> Iterator[wc.Reply]:
    """Send one control request; yield each reply message until the service closes.

    Raises ``ServiceUnavailable`` (cannot connect, not root's), ``OSError`` (the
    connection broke) and ``wc.ReplyError`` (the service's reply is malformed)."""
    conn = connect(path, timeout=timeout)
    sock = conn.sock
    try:
        sock.send(wc.encode_request(req))
        first = True
        while True:
            raw = sock.recv(wc.MAX_REPLY)
            if not raw:
                return
            yield wc.decode_reply(raw, req.op, first=first)
            first = False
    finally:
        sock.close()


def control_request(path: str, req: wc.Request, *, timeout: float | None = 30.0) -> wc.Reply:
    """One request, its (first) reply."""
    for reply in control_stream(path, req, timeout=timeout):
        return reply
    raise ServiceUnavailable("the service closed the connection without a reply")
