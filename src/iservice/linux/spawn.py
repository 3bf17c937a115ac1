"""Start a program with glibc's ``posix_spawn``, called so that the GIL is released.

Why not ``subprocess.Popen``: CPython 3.11 holds the GIL for the whole of its ``vfork``
— from the fork until the child's ``exec`` has loaded the new program, which the
kernel makes the parent wait for.  A py-spy ``--gil`` profile of P3's bursts (100
starts at once, 2 vCPUs, 2026-12-06) had 25 % of all GIL-holding samples on that one
line of ``_execute_child``: ~0.55 ms per start in which neither the event loop nor the
as-user checks could run.  ``ctypes`` releases the GIL around a foreign call, so here
only the monitor thread waits for the ``exec``.  (CPython issue gh-104372; 3.12 drops
the GIL around its ``vfork`` itself, Debian 12's 3.11.2 does not.)

glibc's ``posix_spawn`` is made for threaded callers: ``clone(CLONE_VM|CLONE_VFORK)``
with a stack of its own, signals blocked, handlers reset in the child.  What the
child gets:

* descriptors 0, 1 and 2 from ``stdin``/``stdout``/``stderr``, and ``keep`` at their
  own numbers with close-on-exec cleared (``adddup2(fd, fd)``, glibc ≥ 2.29); every
  other descriptor the service made is close-on-exec (Python's default).  One that is
  not (one inherited from systemd, say) would reach the program: callers run a
  program that closes what it was not told to keep (``iservice-runas``'s ``KEEP``);
* ``cwd``, a new session (``setsid``), every signal at its default disposition and an
  empty signal mask (``Popen(restore_signals=True)`` restores only the three Python
  ignores);
* exactly ``env`` as its environment, ``argv`` as given (``argv[0]`` included).

With ``cgroup`` (a directory descriptor of a cgroup2 cgroup) the child is created in
that cgroup instead: ``isv_spawn`` of the small library ``iservice_spawn.so``
(``plugin/iservice_spawn.c``, built next to the plugin), the same child made with
``clone3``'s ``CLONE_INTO_CGROUP``, which glibc 2.36's ``posix_spawn`` cannot ask for.
A process that moves itself into a cgroup waits for an RCU grace period (the
kernel's ``cgroup_threadgroup_rwsem``): 14 ms per session start on an idle 2-vCPU
guest, during which openvpn has not started and every fork on the machine waits
(docs/performance.md, "Fifth look").  Where that cannot be done — the library not
built, no ``clone3`` or no ``CLONE_INTO_CGROUP`` (a kernel before 5.7, a seccomp
filter, not x86-64) — ``CgroupSpawnUnavailable`` is raised with nothing started, and
from then on ``into_cgroup_available()`` is False: the caller joins the cgroup the old
way (``iservice-runas``'s ``CGROUP``).

Errors: an ``OSError`` with the errno ``posix_spawn`` returned, including the ``exec``'s
(``ENOENT``, ``EACCES``); nothing is left running then.  ``ValueError`` for a NUL inside
a string, before anything runs (C would cut the string there, so openvpn would get
another argument than the one the validator checked).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Mapping, Sequence

from iservice.plugin import spawn_library_path

__all__ = ["CgroupSpawnUnavailable", "available", "into_cgroup_available", "spawn"]

POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80

# glibc's posix_spawn_file_actions_t is 80 bytes and posix_spawnattr_t 336 on 64-bit
# targets, sigset_t 128; generous buffers, as only glibc's own functions touch them.
_OPAQUE = 1024
_SIGSET = 128


def _load() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("posix_spawn", "posix_spawn_file_actions_init",
                     "posix_spawn_file_actions_destroy", "posix_spawn_file_actions_adddup2",
                     "posix_spawn_file_actions_addchdir_np", "posix_spawnattr_init",
                     "posix_spawnattr_destroy", "posix_spawnattr_setflags",
                     "posix_spawnattr_setsigdefault", "posix_spawnattr_setsigmask",
                     "sigfillset", "sigemptyset"):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p,
                                 ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.c_char_p),
                                 ctypes.POINTER(ctypes.c_char_p)]
    libc.posix_spawn_file_actions_adddup2.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                                      ctypes.c_int]
    libc.posix_spawn_file_actions_addchdir_np.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    libc.posix_spawnattr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
    return libc


_libc = _load()


def _load_cgroup_spawner() -> ctypes.CDLL | None:
    path = spawn_library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # a CDLL releases the GIL around its calls
        func = lib.isv_spawn
    except (OSError, AttributeError):
        return None
    int_p = ctypes.POINTER(ctypes.c_int)
    func.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                     ctypes.POINTER(ctypes.c_char_p), int_p, int_p, ctypes.c_int,
                     ctypes.c_char_p, ctypes.c_int, int_p]
    func.restype = ctypes.c_int
    return lib


_cgroup_spawner = _load_cgroup_spawner()
# what isv_spawn answers when clone3 or CLONE_INTO_CGROUP cannot be used here (a seccomp
# filter may answer EPERM): nothing was started, and the old way is taken from then on
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM})


class CgroupSpawnUnavailable(OSError):
    """A child cannot be created in a cgroup here; nothing was started."""


def available() -> bool:
    """glibc with ``posix_spawn_file_actions_addchdir_np`` (2.29 or later)."""
    return _libc is not None


def into_cgroup_available() -> bool:
    """Can ``spawn(..., cgroup=fd)`` be tried (the library is there and has not said
    that this kernel cannot)?"""
    return _cgroup_spawner is not None


def _check(ret: int, what: str) -> None:
    if ret != 0:
        raise OSError(ret, f"{what}: {os.strerror(ret)}")


def _c_string(value: str) -> bytes:
    """``value`` for C: a NUL inside would silently cut it there (``Popen`` raises too),
    and the argument openvpn got would not be the one that was checked."""
    raw = os.fsencode(value)
    if b"\0" in raw:
        raise ValueError(f"embedded NUL in {value!r}")
    return raw


def _strings(items: Sequence[str]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(items) + 1))(*(_c_string(x) for x in items), None)


def spawn(path: str, argv: Sequence[str], env: Mapping[str, str], *, stdin: int,
          stdout: int, stderr: int, keep: Sequence[int] = (), cwd: str = "/",
          cgroup: int | None = None) -> int:
    """Start ``path`` (absolute) with ``argv``; its pid.  The module docstring says what
    the child gets, and where (``cgroup``).  Every descriptor given must be 3 or above,
    so that no ``dup2`` overwrites one still to be used."""
    for fd in (stdin, stdout, stderr, *keep):
        if fd < 3:
            raise ValueError(f"descriptor {fd}: the child's 0-2 are made from others")
    c_path, c_cwd = _c_string(path), _c_string(cwd)
    c_argv = _strings(argv)
    c_env = _strings([f"{k}={v}" for k, v in env.items()])
    if cgroup is not None:
        return _spawn_in_cgroup(c_path, c_argv, c_env, (stdin, stdout, stderr), keep, c_cwd,
                                cgroup)
    libc = _libc
    if libc is None:
        raise OSError("posix_spawn is not available")
    actions = ctypes.create_string_buffer(_OPAQUE)
    attr = ctypes.create_string_buffer(_OPAQUE)
    every = ctypes.create_string_buffer(_SIGSET)
    none = ctypes.create_string_buffer(_SIGSET)
    _check(libc.posix_spawn_file_actions_init(actions), "file actions")
    try:
        _check(libc.posix_spawnattr_init(attr), "attributes")
        try:
            for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2), *((k, k) for k in keep)):
                _check(libc.posix_spawn_file_actions_adddup2(actions, src, dst), "dup2")
            _check(libc.posix_spawn_file_actions_addchdir_np(actions, c_cwd), "chdir")
            libc.sigfillset(every)
            libc.sigemptyset(none)
            _check(libc.posix_spawnattr_setsigdefault(attr, every), "signals")
            _check(libc.posix_spawnattr_setsigmask(attr, none), "signal mask")
            _check(libc.posix_spawnattr_setflags(
                attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSID),
                "flags")
            pid = ctypes.c_int(0)
            # The call that waits for the child's exec; ctypes releases the GIL around it.
            ret = libc.posix_spawn(ctypes.byref(pid), c_path, actions, attr, c_argv, c_env)
            if ret != 0:
                raise OSError(ret, os.strerror(ret), path)
            return pid.value
        finally:
            libc.posix_spawnattr_destroy(attr)
    finally:
        libc.posix_spawn_file_actions_destroy(actions)


def _spawn_in_cgroup(c_path: bytes, c_argv: ctypes.Array[ctypes.c_char_p],
                     c_env: ctypes.Array[ctypes.c_char_p], stdio: tuple[int, int, int],
                     keep: Sequence[int], c_cwd: bytes, cgroup: int) -> int:
    global _cgroup_spawner
    lib = _cgroup_spawner
    if lib is None:
        raise CgroupSpawnUnavailable(errno.ENOSYS, "iservice_spawn.so is not available")
    pid = ctypes.c_int(0)
    c_stdio = (ctypes.c_int * 3)(*stdio)
    c_keep = (ctypes.c_int * max(1, len(keep)))(*keep)
    # The call that waits for the child's exec; ctypes releases the GIL around it.
    ret = lib.isv_spawn(c_path, c_argv, c_env, c_stdio, c_keep, len(keep), c_cwd, cgroup,
                        ctypes.byref(pid))
    if ret in _UNSUPPORTED:
        _cgroup_spawner = None
        raise CgroupSpawnUnavailable(ret, f"clone3 into a cgroup: {os.strerror(ret)}")
    if ret != 0:
        raise OSError(ret, os.strerror(ret), os.fsdecode(c_path))
    return pid.value
