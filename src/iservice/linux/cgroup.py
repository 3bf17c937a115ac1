"""A cgroup per session: every process of a session's openvpn, forks included, ends with it.

The user controls their openvpn completely (it runs as them: they can ptrace it, make it
fork, start a daemon from it).  Its pid identifies none of that, and a pid journaled
after the spawn leaves a window in which a crash of the service cannot prove which
process to end.  So each session gets a cgroup of the cgroup v2 hierarchy, made and
journaled *before* openvpn is spawned; the spawner (``iservice-runas``) is created in it
(``linux/spawn.py``: clone3's ``CLONE_INTO_CGROUP``), or, where that cannot be done,
moves itself into it while still root (``iservice-runas``'s ``CGROUP``, the fallbacks'
``preexec_fn``), then becomes the user and execs openvpn.  Whatever openvpn or its
descendants do, they stay in that cgroup: moving a process elsewhere needs write access
to the target's ``cgroup.procs`` and to the common ancestor's, both root's.  At the
session's end — and at the next start after the service was killed, from the journaled
path — ``cgroup.kill`` ends all of them at once (kernel ≥ 5.14), and the emptied
directory is removed.

Where: ``<the service's own cgroup>/iservice-<key>/session-<id>`` (paths in the
hierarchy's own terms: journaled, they mean the same wherever it is mounted); the own
cgroup is
the ``0::`` line of ``/proc/self/cgroup`` (so systemd, with ``Delegate=yes`` in the unit,
accounts the sessions to the service), and ``<key>`` is made from the state directory:
session ids are unique per journal, and two services that share a cgroup (an
administrator's hand-started test instance, the test lab) keep theirs apart.  No
controller is enabled: only membership is used, so the "no internal processes" rule
does not apply.  ``iservice-<key>`` is made when the service starts (or ``iservice
cleanup`` runs) and removed when it stops, if no session's cgroup is left in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import select
import time
from dataclasses import dataclass

_SESSION_RE = re.compile(r"session-(\d+)")


class CgroupError(OSError):
    pass


def _unescape(path: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def cgroup2_mount(mountinfo: str) -> tuple[str, str] | None:
    """(mount point, root inside the hierarchy) of the first cgroup2 mount, or None."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or not right.startswith("cgroup2 "):
            continue
        fields = left.split()
        if len(fields) >= 5:
            return _unescape(fields[4]), _unescape(fields[3])
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path (the ``0::`` line of /proc/self/cgroup), or None."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:]
            return path if path.startswith("/") else None
    return None


def base_path(own: str, state_dir: str) -> str:
    """Where session cgroups are made, as a path in the hierarchy (module docstring)."""
    key = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:8]
    return f"{own.rstrip('/')}/iservice-{key}"


_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE = 0x4000, 1 << 18


def _mount_privately() -> None:
    """No cgroup2 hierarchy is visible (``ip netns exec`` remounts /sys without one; a
    container): mount one at /sys/fs/cgroup in a mount namespace of this process's own,
    made private first, so nothing of it shows outside (and it goes with the process)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for call, args in ((libc.unshare, (_CLONE_NEWNS,)),
                       (libc.mount, (None, b"/", None, _MS_REC | _MS_PRIVATE, None)),
                       (libc.mount, (b"cgroup2", b"/sys/fs/cgroup", b"cgroup2", 0, None))):
        if call(*args) != 0:
            err = ctypes.get_errno()
            raise CgroupError(err, f"no cgroup v2 hierarchy is mounted, and mounting one "
                                   f"failed: {os.strerror(err)} (systemd mounts one at "
                                   "/sys/fs/cgroup; else: mount -t cgroup2 none /sys/fs/cgroup)")


@dataclass(frozen=True)
class Cgroups:
    """The session cgroups of one service.  Paths are the hierarchy's own
    (``/system.slice/iservice.service/iservice-<key>/session-7``, as /proc/PID/cgroup
    says), so a journaled path means the same wherever the hierarchy is mounted now;
    ``mount`` is where it is mounted in this process (``root``: the hierarchy's path
    there, "/" but in a cgroup namespace)."""

    base: str
    mount: str
    root: str = "/"

    @classmethod
    def find(cls, state_dir: str) -> Cgroups:
        """Locate the hierarchy (mounting one privately if none is visible); CgroupError
        with a clear reason if there is none."""
        with open("/proc/self/mountinfo") as f:
            mount = cgroup2_mount(f.read())
        if mount is None:
            _mount_privately()
            with open("/proc/self/mountinfo") as f:
                mount = cgroup2_mount(f.read())
            if mount is None:
                raise CgroupError(errno.ENOENT, "no cgroup v2 hierarchy is mounted")
        with open("/proc/self/cgroup") as f:
            own = own_cgroup(f.read())
        if own is None:
            raise CgroupError(errno.ENOENT, "this process has no cgroup v2 membership")
        point, root = mount
        if root != "/" and not (own == root or own.startswith(root.rstrip("/") + "/")):
            raise CgroupError(errno.ENOENT, f"own cgroup {own} is outside the mounted {root}")
        groups = cls(base_path(own, state_dir), point, root)
        os.makedirs(groups._abs(groups.base), mode=0o755, exist_ok=True)
        if not os.path.exists(os.path.join(groups._abs(groups.base), "cgroup.kill")):
            raise CgroupError(errno.ENOTSUP, f"{groups.base}: no cgroup.kill (kernel 5.14 "
                                             "or newer)")
        return groups

    def _abs(self, path: str) -> str:
        """Where a hierarchy path is in this process's file system."""
        rel = path if self.root == "/" else path[len(self.root.rstrip("/")):]
        return os.path.join(self.mount, rel.lstrip("/"))

    def path_for(self, session_id: int) -> str:
        return f"{self.base}/session-{int(session_id)}"

    def owns(self, path: str) -> bool:
        """Could ``path`` be a session cgroup of this service?  A journaled path is checked
        before the service writes to it (a damaged journal must not name any other
        cgroup); it need not be under today's ``base``: the service may have been moved
        to another cgroup since it journaled the session (a restart under systemd)."""
        root = self.root.rstrip("/")
        return (path.startswith("/") and os.path.normpath(path) == path
                and (not root or path.startswith(root + "/"))
                and _SESSION_RE.fullmatch(os.path.basename(path)) is not None)

    def sessions(self) -> list[str]:
        """The session cgroups that exist now (for the sweep of unjournaled leftovers)."""
        try:
            names = os.listdir(self._abs(self.base))
        except FileNotFoundError:
            return []
        return sorted(f"{self.base}/{n}" for n in names if _SESSION_RE.fullmatch(n))

    def create(self, path: str) -> None:
        """Make a session's cgroup; FileExistsError if it is there already."""
        if not self.owns(path):
            raise CgroupError(errno.EINVAL, f"not a session cgroup of this service: {path}")
        os.mkdir(self._abs(path), 0o755)

    def remove_base(self) -> None:
        """Remove ``base`` if no session cgroup is left in it (at the service's stop;
        the next start makes it again).  Not empty, or gone already: left as it is."""
        with contextlib.suppress(OSError):  # ENOTEMPTY, EBUSY, ENOENT
            os.rmdir(self._abs(self.base))

    def open_dir(self, path: str) -> int:
        """A descriptor of the session cgroup's directory for the spawn: the process is
        created in it (``linux/spawn.py``), or joins it through ``open_procs_at``.
        ``O_PATH`` (it reads and writes nothing itself), close-on-exec: it must never
        reach openvpn."""
        if not self.owns(path):
            raise CgroupError(errno.EINVAL, f"not a session cgroup of this service: {path}")
        return os.open(self._abs(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def kill(self, path: str) -> bool:
        """SIGKILL every process in the cgroup; False if the cgroup is gone."""
        if not self.owns(path):
            raise CgroupError(errno.EINVAL, f"not a session cgroup of this service: {path}")
        try:
            fd = os.open(os.path.join(self._abs(path), "cgroup.kill"),
                         os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
        return True

    def remove(self, path: str, *, timeout: float = 5.0) -> None:
        """Kill what is left, wait until the cgroup is empty, remove it; gone is fine.

        Raises CgroupError(EBUSY) if processes remain after ``timeout`` (a process in
        uninterruptible sleep): the journal keeps the record and the next start retries.
        """
        if not self.kill(path):
            return
        where = self._abs(path)
        if not wait_empty(where, timeout):
            raise CgroupError(errno.EBUSY, f"{path}: processes left after {timeout} s")
        try:
            os.rmdir(where)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CgroupError(exc.errno or errno.EBUSY, f"{path}: {exc.strerror}") from None

    def procs(self, path: str) -> list[int]:
        try:
            with open(os.path.join(self._abs(path), "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []


def populated(path: str) -> bool | None:
    """Does the cgroup (or a descendant) hold a process?  None if it is gone."""
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return "populated 1" in text


def wait_empty(path: str, timeout: float) -> bool:
    """Wait until no process is left in the cgroup (``cgroup.events`` signals the change
    with POLLPRI, so this sleeps in poll, not in a loop of reads)."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        while True:
            text = os.pread(fd, 4096, 0).decode()
            if "populated 1" not in text:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # kernfs notifies on change; the short cap also covers a missed edge
            poller.poll(min(left, 0.05) * 1000)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def open_procs_at(dir_fd: int) -> int:
    """The ``cgroup.procs`` of the cgroup whose directory ``dir_fd`` is, for a process
    that joins it itself (writes "0" while root).  Close-on-exec."""
    return os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)


def move_self(procs_fd: int) -> None:
    """Move the calling process into the cgroup of ``procs_fd`` (a ``preexec_fn``)."""
    os.write(procs_fd, b"0")
