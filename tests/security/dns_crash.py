"""Crash a child process at one step of a resolv.conf write (``test_dns_file_crash.py``).

``run(action, step, path, journal, bind=None)`` forks: the child runs the service's
monitor with the file DNS backend on ``path`` (with ``bind``, first in a private mount
namespace where ``bind[0]`` is bind-mounted over ``bind[1]``, so ``path`` is a mount
point) and ``SIGKILL``s itself at ``step`` of the write ``action`` makes; ``run``
returns the child's exit status (``-9`` when it was killed there).  Forked rather than
started: the interpreter and its imports are already there (~0.3 s a case saved).

``action`` is what the monitor does before and during the write that is cut:

* ``apply``: a session's first DNS configuration (original → ours)
* ``second``: a second session's, while the first is live (ours → ours)
* ``end-other``: the older of two sessions ends (ours → ours)
* ``revert``: the only session ends (ours → original)
* ``recover``: what the service does at start: undo every session the journal holds
  (after a crash, ours or torn → original)

STEP names the moment of the kill within that write (``none``: no kill): ``open``
(before the file is opened), ``opened``, ``half`` (half of the bytes written),
``written`` (all written, before the truncation or the rename), ``truncated``,
``synced``, ``renaming`` (before the rename), ``renamed``.  The child exits 0 if the
step never came (the test then fails: the case is not what it claims), 1 on an error.

The steps are found by wrapping ``os.open``/``write``/``ftruncate``/``fsync``/``rename``
for the resolv.conf and its temporary file only; everything else is the real code, the
real file system and (for a mount point) the real bind mount the test sets up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import traceback
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, TypeVar

from iservice import platform
from iservice.linux.dns import TEMP_SUFFIX, FileDns
from iservice.monitor import Apply, Monitor, Undo
from iservice.policy import requests as rq
from iservice.policy.dns import DnsState

LANE = ("dns-crash", 0)

T = TypeVar("T")
LO = 1  # the ifindex the sessions' DNS is set on (its name is only written into records)

A = DnsState(servers4=(IPv4Address("10.8.0.1"),), domains=("corp.example", "example.com"))
B = DnsState(servers4=(IPv4Address("10.9.0.1"), IPv4Address("10.9.0.2")),
             domains=("other.example",))


class Injector:
    """Kills this process at ``step`` of a write to ``path`` once ``armed``."""

    def __init__(self, step: str, path: str) -> None:
        self.step = step
        self.targets = {os.path.realpath(path), os.path.realpath(path) + TEMP_SUFFIX}
        self.armed = False
        self.fds: set[int] = set()
        self.real: dict[str, Callable[..., Any]] = {}

    def at(self, step: str) -> None:
        if self.armed and self.step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        real = self.real = {n: getattr(os, n) for n in ("open", "write", "ftruncate", "fsync",
                                                        "rename")}

        def open_(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            ours = isinstance(path, str) and path in self.targets
            if ours:
                self.at("open")
            fd: int = real["open"](path, flags, mode, **kw)
            if ours:
                self.fds.add(fd)
                self.at("opened")
            return fd

        def write(fd: int, data: Any) -> int:
            if fd in self.fds and self.armed and self.step == "half":
                real["write"](fd, bytes(data[:len(data) // 2]))
                self.at("half")
            n: int = real["write"](fd, data)
            if fd in self.fds:
                self.at("written")
            return n

        def ftruncate(fd: int, length: int) -> None:
            real["ftruncate"](fd, length)
            if fd in self.fds:
                self.at("truncated")

        def fsync(fd: int) -> None:
            real["fsync"](fd)
            if fd in self.fds:
                self.at("synced")

        def rename(src: str, dst: str, **kw: Any) -> None:
            ours = src in self.targets
            if ours:
                self.at("renaming")
            real["rename"](src, dst, **kw)
            if ours:
                self.at("renamed")

        os.open, os.write, os.ftruncate = open_, write, ftruncate  # type: ignore[assignment]
        os.fsync, os.rename = fsync, rename  # type: ignore[assignment]


CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000


def run(action: str, step: str, path: str, journal: str,
        bind: tuple[str, str] | None = None) -> int:
    """Fork, do ``action`` in the child (killed at ``step``), wait; the exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            if bind is not None:
                _bind_privately(*bind)
            code = _child(action, step, path, journal)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _bind_privately(src: str, dst: str) -> None:
    """A private mount namespace for this process, with ``src`` bind-mounted on ``dst``."""
    libc = ctypes.CDLL(None, use_errno=True)
    for ok in (lambda: libc.unshare(CLONE_NEWNS),
               lambda: libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
               lambda: libc.mount(src.encode(), dst.encode(), None, MS_BIND, None)):
        if ok() != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


def _child(action: str, step: str, path: str, journal: str) -> int:
    inject = Injector(step, path)
    inject.install()
    mon = Monitor(journal, platform=platform.linux(), cgroups=None,
                  dns_factory=lambda update: FileDns(path, update))

    def run(job: Any) -> Any:
        return mon.submit_sync(LANE, job).result()

    def undo(sid: int) -> list[str]:
        return list(run(Undo(sid)).problems)

    def start(state: DnsState) -> int:
        # the monitor thread is idle between the jobs waited for: the journal may be used
        sid: int = mon.journal.new_session(1000, os.getpid(), {})
        [res] = run(Apply(sid, LO, (rq.SetDns(state=state, previous=DnsState()),)))
        if res.error:
            raise SystemExit(f"set_dns failed: {res.error}")
        return sid

    try:
        if action == "apply":
            inject.armed = True
            start(A)
        elif action == "second":
            start(A)
            inject.armed = True
            start(B)
        elif action == "end-other":
            first = start(A)
            start(B)
            inject.armed = True
            undo(first)
        elif action == "revert":
            sid = start(A)
            inject.armed = True
            undo(sid)
        elif action == "recover":
            inject.armed = True
            for rec in mon.journal.sessions():
                problems = undo(rec.id)
                if problems:
                    raise SystemExit(f"undo of session {rec.id}: {problems}")
        else:
            raise SystemExit(f"unknown action {action!r}")
    finally:
        mon.close()
    return 0
