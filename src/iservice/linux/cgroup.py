"""A cgroup per session: every process of a session's openvpn, forks included, ends with it.

The user controls their openvpn completely (it runs as them: they can ptrace it, make
it fork, start a daemon from it).  Its pid identifies none of that, and a pid journaled
after the spawn leaves a window in which a crash of the service cannot prove which
process to end.  So each session gets a cgroup of the cgroup v2 hierarchy, made and
journaled *before* openvpn is spawned; the spawner (``iservice-runas``, or the fallback's
``preexec_fn``) moves itself into it while still root, then becomes the user and execs
openvpn.  Whatever openvpn or its descendants do, they stay in that cgroup: moving a
process elsewhere needs write access to the target's ``cgroup.procs`` and to the common
ancestor's, both root's.  At the session's end — and at the next start after the
service was killed, from the journaled path — ``cgroup.kill`` ends all of them at once
(kernel ≥ 5.14), and the emptied directory is removed.

Where: ``<the service's own cgroup>/iservice-<key>/session-<id>``; the own cgroup is
the ``0::`` line of ``/proc/self/cgroup`` (so systemd, with ``Delegate=yes`` in the unit,
accounts the sessions to the service), and ``<key>`` is made from the state directory:
session ids are unique per journal, and two services that share a cgroup (an
administrator's hand-started test instance, the test lab) keep theirs apart.  No
controller is enabled: only membership is used, so the "no internal processes" rule
does not apply.
"""

from __future__ import annotations

import contextlib
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


def base_path(mount: tuple[str, str], own: str, state_dir: str) -> str:
    """The directory under which session cgroups are made (module docstring)."""
    point, root = mount
    if root != "/" and not (own == root or own.startswith(root.rstrip("/") + "/")):
        raise CgroupError(errno.ENOENT, f"own cgroup {own} is outside the mounted {root}")
    rel = (own[len(root):] if root != "/" else own).strip("/")
    key = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:8]
    return os.path.join(point, rel, f"iservice-{key}")


@dataclass(frozen=True)
class Cgroups:
    """The session cgroups of one service (all paths absolute, under ``base``, which is
    inside the cgroup2 hierarchy mounted at ``mount``)."""

    base: str
    mount: str

    @classmethod
    def find(cls, state_dir: str) -> Cgroups:
        """Locate the hierarchy; CgroupError with a clear reason if there is none."""
        with open("/proc/self/mountinfo") as f:
            mount = cgroup2_mount(f.read())
        if mount is None:
            raise CgroupError(errno.ENOENT, "no cgroup v2 hierarchy is mounted (systemd mounts "
                              "one at /sys/fs/cgroup; else: mount -t cgroup2 none "
                              "/sys/fs/cgroup)")
        with open("/proc/self/cgroup") as f:
            own = own_cgroup(f.read())
        if own is None:
            raise CgroupError(errno.ENOENT, "this process has no cgroup v2 membership")
        base = base_path(mount, own, state_dir)
        os.makedirs(base, mode=0o755, exist_ok=True)
        if not os.path.exists(os.path.join(base, "cgroup.kill")):
            raise CgroupError(errno.ENOTSUP, f"{base}: no cgroup.kill (kernel 5.14 or newer)")
        return cls(base, mount[0])

    def path_for(self, session_id: int) -> str:
        return os.path.join(self.base, f"session-{int(session_id)}")

    def owns(self, path: str) -> bool:
        """Could ``path`` be a session cgroup of this service?  A journaled path is checked
        before the service writes to it (a damaged journal must not name any other
        cgroup); it need not be under today's ``base``: the service may have been moved
        to another cgroup since it journaled the session (a restart under systemd)."""
        norm = os.path.normpath(path)
        return (norm == path and path.startswith(self.mount.rstrip("/") + "/")
                and _SESSION_RE.fullmatch(os.path.basename(path)) is not None)

    def sessions(self) -> list[str]:
        """The session cgroups that exist now (for the sweep of unjournaled leftovers)."""
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return []
        return sorted(os.path.join(self.base, n) for n in names if _SESSION_RE.fullmatch(n))

    def create(self, path: str) -> None:
        """Make a session's cgroup; FileExistsError if it is there already."""
        if not self.owns(path):
            raise CgroupError(errno.EINVAL, f"not a session cgroup of this service: {path}")
        os.mkdir(path, 0o755)

    def open_procs(self, path: str) -> int:
        """A descriptor of the cgroup's ``cgroup.procs`` for the spawner: it writes "0" to
        it (itself) while root.  Close-on-exec: it must never reach openvpn."""
        return os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def kill(self, path: str) -> bool:
        """SIGKILL every process in the cgroup; False if the cgroup is gone."""
        if not self.owns(path):
            raise CgroupError(errno.EINVAL, f"not a session cgroup of this service: {path}")
        try:
            fd = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
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
        if not wait_empty(path, timeout):
            raise CgroupError(errno.EBUSY, f"{path}: processes left after {timeout} s")
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CgroupError(exc.errno or errno.EBUSY, f"{path}: {exc.strerror}") from None

    @staticmethod
    def procs(path: str) -> list[int]:
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
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


def move_self(procs_fd: int) -> None:
    """Move the calling process into the cgroup of ``procs_fd`` (a ``preexec_fn``)."""
    os.write(procs_fd, b"0")
