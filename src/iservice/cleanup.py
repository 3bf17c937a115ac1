"""``iservice cleanup``: undo what a service left behind, without serving (docs/install.md).

The Debian package's prerm runs it after stopping the service, so that removing the
package also undoes what a running (or killed) service had changed: it is the
recovery a start does (``server.cleanup``: every session left in the journal is
undone, its openvpn ended), and then it exits.  It opens no listening socket.

Recovery must not run beside a live service of the same instance (both would work on
one journal), so it first looks for one: a process that accepts connections on the
instance's control or service socket.  Without ``--stop`` that is an error; with it
the process is sent SIGTERM, as ``systemctl stop`` would (the service then undoes its
own sessions), and waited for.  A socket that systemd holds (socket activation) is
left alone: stop the units first (``systemctl stop iservice.socket iservice.service``).

Exit statuses: 0 nothing left, 1 a change could not be undone (kept in the journal
for the next start) or a live service is in the way, 2 usage (not root, bad settings).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import struct
import sys
from typing import TextIO

from iservice import audit
from iservice.settings import Settings

EXIT_OK, EXIT_LEFT, EXIT_USAGE = 0, 1, 2
STOP_MARGIN = 15.0  # seconds beyond stop_grace a stopping service gets to undo its sessions


class CleanupError(Exception):
    """Cleanup cannot go on; the message says why and what to do."""


def listener_pid(path: str) -> int | None:
    """The pid of the process listening on the AF_UNIX SOCK_SEQPACKET socket ``path``
    (SO_PEERCRED of a connection: the credentials the listener had at ``listen()``),
    or None when nobody listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(2)
        sock.connect(path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                struct.calcsize("3i"))
    except OSError:  # absent, stale (refused), not a socket, not ours to reach
        return None
    finally:
        sock.close()
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def running_service(settings: Settings) -> tuple[int, str] | None:
    """(pid, socket) of a live service of this instance, or None.  The control socket is
    asked first: the service binds it itself, so its listener is the service even when
    systemd holds the service socket."""
    for path in (settings.control_socket_path, settings.socket_path):
        pid = listener_pid(path)
        if pid is not None:
            return pid, path
    return None


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` has exited (a pidfd, so a reused pid cannot fool it)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def stop_service(pid: int, path: str, grace: float) -> None:
    if pid == 1:
        raise CleanupError(f"{path} is held by systemd (socket activation); stop the units "
                           "first: systemctl stop iservice.socket iservice.service")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_gone(pid, grace + STOP_MARGIN):
        raise CleanupError(f"the service (pid {pid}) did not stop within "
                           f"{grace + STOP_MARGIN:.0f} s of SIGTERM")


def run(settings: Settings, *, stop: bool, out: TextIO | None = None) -> int:
    from iservice import server
    out = out or sys.stdout
    if os.geteuid() != 0:
        print("iservice cleanup: must run as root", file=sys.stderr)
        return EXIT_USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(audit.LineFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        live = running_service(settings)
        if live is not None:
            pid, path = live
            if not stop:
                raise CleanupError(f"a service is running (pid {pid}, listening on {path}); "
                                   "stop it first, or pass --stop")
            stop_service(pid, path, settings.stop_grace)
            print(f"iservice cleanup: stopped the service (pid {pid})", file=out)
        kept = server.cleanup(settings)
    except (CleanupError, server.StartupError) as exc:
        print(f"iservice cleanup: {exc}", file=sys.stderr)
        return EXIT_LEFT
    except OSError as exc:
        print(f"iservice cleanup: {settings.state_dir}: {exc}", file=sys.stderr)
        return EXIT_LEFT
    if kept:
        print(f"iservice cleanup: {kept} session(s) kept a change that could not be undone "
              f"(in the journal in {settings.state_dir}; see the log lines above)",
              file=sys.stderr)
        return EXIT_LEFT
    with contextlib.suppress(OSError):
        out.write(f"iservice cleanup: nothing left in {settings.state_dir}\n")
    return EXIT_OK
