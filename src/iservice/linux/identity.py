"""Who is asking, and file checks made with *their* rights.

* ``peer_credentials`` reads ``SO_PEERCRED`` of a connected AF_UNIX socket (the
  Linux counterpart of impersonating the pipe client).
* ``user_identity`` builds the uid, primary gid and supplementary groups from the
  user and group databases, fresh for each request (a group change takes effect
  at the next connection, like the original's ``NetLocalGroupGetMembers`` check).
* ``UserPathResolver`` answers the validator's path questions in a short-lived
  thread whose *file-system* credentials are the user's: ``setfsuid``/``setfsgid``
  and a thread-local ``setgroups``, made as raw system calls because glibc's
  wrappers for ``setgroups`` change every thread of the process.  When the fsuid
  leaves 0 the kernel drops CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH from that thread,
  so every ``stat``, ``readlink`` and ``open`` it makes is checked exactly as if
  the user made it; the service never opens a user-chosen path as root.  The thread
  ends after the check, so the changed credentials die with it.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import ctypes
import grp
import os
import platform
import pwd
import socket
import struct
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

from iservice import errors
from iservice.aio import FairGate
from iservice.ports import PeerCredentials, UserIdentity

T = TypeVar("T")

# Raw system call numbers: the thread-local variants (see module docstring).
_SYSCALLS = {
    "x86_64": {"setgroups": 116, "setfsuid": 122, "setfsgid": 123},
    "aarch64": {"setgroups": 159, "setfsuid": 151, "setfsgid": 152},
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


__all__ = ["PeerCredentials", "UserIdentity", "as_fs_user", "is_admin", "peer_credentials",
           "run_as_fs_user", "user_identity"]


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The (pid, uid, gid) of the process that connected ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def user_identity(uid: int, gid: int) -> UserIdentity:
    """Identity for ``uid``; a uid missing from the user database gets no extra groups."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return UserIdentity(uid=uid, gid=gid, name=str(uid), home="/", groups=(gid,))
    groups = tuple(sorted(set(getgrouplist(pw.pw_name, pw.pw_gid))))
    return UserIdentity(uid=uid, gid=pw.pw_gid, name=pw.pw_name, home=pw.pw_dir or "/",
                        groups=groups)


_libc.getgrouplist.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                               ctypes.POINTER(ctypes.c_int)]


def getgrouplist(name: str, gid: int) -> list[int]:
    """``os.getgrouplist`` through ``ctypes``, which releases the GIL for the call.

    The lookup walks every group source (``nss-systemd`` alone opens ~48 userdb paths
    per call here): ~0.12-0.2 ms that ``os.getgrouplist`` spends holding the GIL, 8 % of
    all GIL-holding samples in P3's bursts (py-spy ``--gil``, 2026-12-06), time in
    which the monitor thread could not run.
    """
    raw = os.fsencode(name)
    size = 64
    while True:
        buf = (ctypes.c_uint * size)()
        n = ctypes.c_int(size)
        if _libc.getgrouplist(raw, gid, buf, ctypes.byref(n)) >= 0:
            return list(buf[:n.value])
        if n.value <= size:  # -1 without asking for more: a lookup error
            raise OSError(f"getgrouplist failed for {name!r}")
        size = n.value


def is_admin(user: UserIdentity, admin_group: str) -> bool:
    """uid 0, or a member of ``admin_group`` in the group database."""
    if user.uid == 0:
        return True
    try:
        gr = grp.getgrnam(admin_group)
    except KeyError:
        return False
    return gr.gr_gid in user.groups or user.name in gr.gr_mem


def _syscall(name: str, *args: int) -> int:
    nums = _SYSCALLS.get(platform.machine())
    if nums is None:
        raise OSError(f"no thread-local credential syscalls known for {platform.machine()}")
    if name == "setgroups":
        count = len(args)
        arr = (ctypes.c_uint * max(count, 1))(*args)
        res = _libc.syscall(nums[name], ctypes.c_long(count), arr)
    else:
        res = _libc.syscall(nums[name], ctypes.c_long(args[0]))
    if name == "setgroups" and res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def _become_fs_user(user: UserIdentity) -> None:
    """Give the *calling thread* the user's file-system identity."""
    _syscall("setgroups", *user.groups)
    _syscall("setfsgid", user.gid)
    _syscall("setfsuid", user.uid)
    # setfsuid/setfsgid report no errors; reading back proves the switch happened.
    if _syscall("setfsuid", -1 & 0xFFFFFFFF) != user.uid or \
            _syscall("setfsgid", -1 & 0xFFFFFFFF) != user.gid:
        raise OSError("could not take the user's file-system identity")


def run_as_fs_user(user: UserIdentity, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread holding ``user``'s file-system rights."""
    if os.geteuid() != 0 or user.uid == 0:
        return fn()  # nothing to drop (tests as non-root, or root asking)
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _become_fs_user(user)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=body, name=f"fs-user-{user.uid}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


async def as_fs_user(user: UserIdentity, fn: Callable[[], T], *,
                     timeout: float | None = None) -> T:
    """``run_as_fs_user`` for the event loop: ``fn`` runs in a fresh thread holding
    ``user``'s file-system rights, and that thread hands its result straight to the loop.

    ``loop.run_in_executor(None, run_as_fs_user, ...)`` made an executor thread wait
    for the fresh one: two thread switches each way, ~50 µs more per start (measured)
    and one of the executor's few threads held per concurrent start.  When there is
    nothing to drop (not root, or root asking) ``fn`` still runs off the loop.  The
    thread ends with ``fn``, and its changed credentials with it.

    A path the user names may hang (a FUSE mount of theirs that never answers, a dead
    NFS server): the wait ends after ``timeout`` seconds (``TimeoutError``; the thread
    is left to end by itself), a user holds at most one of the ``FS_USER_THREADS``
    slots, and while a check of theirs that was given up is still stuck, their next
    one is refused at once (``errors.StillStuck``): one stuck user costs one thread, and
    every other user's checks go on.
    """
    loop = asyncio.get_running_loop()
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = FairGate(FS_USER_THREADS, per_key=1)
    if _ABANDONED.get(user.uid):
        raise errors.StillStuck(f"an earlier check of uid {user.uid} is still waiting")
    async with gate.hold(user.uid):
        if _ABANDONED.get(user.uid):  # given up while this one waited for its turn
            raise errors.StillStuck(f"an earlier check of uid {user.uid} is still waiting")
        # set by whichever comes first, the thread's end or the time limit: only a
        # check whose time limit came first counts as given up while its thread runs
        decided = threading.Event()
        try:
            async with asyncio.timeout(timeout):
                return await _as_fs_user(loop, user, fn, decided)
        except TimeoutError:
            with _ABANDONED_LOCK:
                if not decided.is_set():  # (the thread may have ended just now)
                    decided.set()
                    _ABANDONED[user.uid] = _ABANDONED.get(user.uid, 0) + 1
            raise


# At most this many checks at a time, one per user.  A burst of 100 requests otherwise
# makes 100 threads that all want the GIL at once, and the monitor thread, which gives
# it up at every system call, waits behind them (P3, docs/performance.md).  The waiting
# requests are served round robin by user: one user's burst does not queue every other
# user's request behind all of its own.
FS_USER_THREADS = 2
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FairGate] = \
    weakref.WeakKeyDictionary()
# uid -> checks whose wait was given up and whose thread has not ended yet
_ABANDONED: dict[int, int] = {}
_ABANDONED_LOCK = threading.Lock()


def _thread_ended(uid: int, decided: threading.Event) -> None:
    """The check's thread is done: if its wait was given up, it no longer counts."""
    with _ABANDONED_LOCK:
        if decided.is_set():  # the time limit came first
            left = _ABANDONED.get(uid, 0) - 1
            if left > 0:
                _ABANDONED[uid] = left
            else:
                _ABANDONED.pop(uid, None)
        else:
            decided.set()  # ended in time: a late time limit must not count it


async def _as_fs_user(loop: asyncio.AbstractEventLoop, user: UserIdentity,
                      fn: Callable[[], T], decided: threading.Event) -> T:
    fut: asyncio.Future[T] = loop.create_future()
    drop = os.geteuid() == 0 and user.uid != 0

    def settle(value: object, error: BaseException | None) -> None:
        if fut.done():  # the awaiting task was cancelled: the result is dropped
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)  # type: ignore[arg-type]

    def body() -> None:
        value: object = None
        error: BaseException | None = None
        try:
            if drop:
                _become_fs_user(user)
            value = fn()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        _thread_ended(user.uid, decided)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    # Not threading.Thread().start(): it blocks the loop until the new thread has run
    # (a GIL round trip: ~0.6 ms per start in a burst of 100, profiled).
    _thread.start_new_thread(body, ())
    return await fut
