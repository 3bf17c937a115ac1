"""Start openvpn as the requesting user and watch it (SPEC §4).

The child gets the user's uid, gid and supplementary groups, a clean
environment (none of the service's variables), the nice value of ``priority``,
stdin = the startup message's ``stdin`` (UTF-8) then EOF, stdout/stderr to a
pipe the session reads (``SessionOutput``: a ring of recent lines for ``iservice
log``, an optional file in ``log_dir``, and line observers), and two extra
descriptors: its end of the session channel, and a read-only one with what the
service knows for the hook (``session.py``: the facts).  The process starts in ``/``; openvpn
itself enters the working directory through a leading ``--cd DIR`` option, so the
directory is entered with the user's rights (a root ``chdir`` before dropping
privileges would not check them).

The process is watched through a pidfd: its exit ends the session even if some
child still holds the channel.

How it is spawned (docs/performance.md, P1): CPython 3.11 uses ``vfork`` only when
``Popen`` gets no ``user``/``group``/``extra_groups``; with them it ``fork``s the whole
service (~26 MB: ~0.9 ms of page tables) and waits for the child's ``exec`` (another
~0.8 ms), 1.5 ms per start measured in all.  So the child is util-linux's ``setpriv``,
spawned with ``vfork`` (0.12 ms), which takes the user's uid, gid and groups itself
and then ``exec``s openvpn in place: same PID, same start time, same environment and
descriptors.  Taking a non-zero uid clears the permitted, effective and ambient
capability sets (no ``SECBIT_KEEP_CAPS`` is set), ``--inh-caps=-all`` clears the
inheritable set, so openvpn has none; it needs CAP_SETUID and CAP_SETGID, which the
service has anyway (``systemd/iservice.service``).  Without ``setpriv`` (not Debian's
util-linux) the slow ``Popen(user=...)`` path is used.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iservice.aio import readable
from iservice.linux.identity import UserIdentity

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# openvpn passes every pushed route to its scripts in the environment, and execve()
# accepts argv + environment (strings and pointers) only up to min(RLIMIT_STACK / 4,
# 6 MiB).  With the usual 8 MiB stack limit that is 2 MiB: about 17,000 IPv4 routes
# (~124 bytes each), beyond which openvpn cannot run its --up hook at all and exits.
# A soft limit of 24 MiB or more moves the limit to the kernel's fixed 6 MiB (about
# 50,000 routes; docs/performance.md).
OPENVPN_STACK_LIMIT = 32 * 1024 * 1024


def raise_stack_limit(want: int = OPENVPN_STACK_LIMIT) -> None:
    """Raise the service's own soft RLIMIT_STACK to ``want`` (never above the hard limit).

    openvpn inherits it through the spawn, and so do the execve()s of its hooks.  The
    service's own limit is raised, not the child's (``prlimit`` on another process
    needs CAP_SYS_RESOURCE, which a confined service may lack); soft ≤ hard needs no
    privilege.  Threads and the stack already mapped are not affected.
    """
    with contextlib.suppress(OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_STACK, (want, hard))


def clean_environment(user: UserIdentity) -> dict[str, str]:
    return {"PATH": SAFE_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name,
            "LANG": "C.UTF-8"}


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat).

    With the pid it identifies one process for good: a recycled pid has another
    start time, so a leftover openvpn can be ended after a crash without hitting
    an unrelated process.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    rest = data[data.rfind(b")") + 2:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def kill_if_same(pid: int, start_time: int) -> bool:
    """SIGKILL ``pid`` only if it is still the process that started at ``start_time``."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        # Checked after the pidfd is open: the pidfd pins this exact process.
        if process_start_time(pid) != start_time:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def exit_status(returncode: int) -> int:
    """Shell convention: killed by signal N → 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    pidfd: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self) -> int:
        """Wait for exit without a thread; returns the shell-style exit status."""
        if self.proc.returncode is None:
            await readable(self.pidfd)
            self.proc.wait()
        assert self.proc.returncode is not None
        return exit_status(self.proc.returncode)

    def signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


# util-linux's setpriv (Debian: always installed, util-linux is Essential).  Found once:
# the service's own PATH is not trusted for this, only these fixed locations.
SETPRIV = next((p for p in ("/usr/bin/setpriv", "/bin/setpriv") if os.access(p, os.X_OK)),
               None)


def spawn_argv(exe: str, argv: Sequence[str], user: UserIdentity, *,
               setpriv: str | None = SETPRIV) -> list[str]:
    """The command that runs ``exe argv`` as ``user`` (through ``setpriv`` when it exists).

    Everything after ``--`` is openvpn's: setpriv stops parsing its own options there,
    so no user-chosen option can reach it; it ``exec``s ``exe`` (an absolute path, no
    PATH search) once it is the user.
    """
    if setpriv is None:
        return [exe, *argv]
    groups = ",".join(str(g) for g in user.groups)
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}",
            f"--groups={groups}" if groups else "--clear-groups", "--inh-caps=-all",
            "--", exe, *argv]


def start_openvpn(exe: str, argv: Sequence[str], *, user: UserIdentity, workdir: str,
                  nice: int, stdin: bytes, channel_fd: int, output_fd: int,
                  extra_fds: Sequence[int] = (), setpriv: str | None = SETPRIV) -> Child:
    """Start openvpn; its stdout and stderr go to ``output_fd`` (the session's log pipe).

    Raises OSError when it cannot be started (``exe`` not executable, spawn failed).
    """
    raise_stack_limit()  # openvpn's hooks get up to 6 MiB of environment
    full = spawn_argv(exe, ["--cd", workdir, *argv], user, setpriv=setpriv)
    ids: dict[str, Any] = {}
    if setpriv is None:
        ids = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
    elif not os.access(exe, os.X_OK):
        # setpriv would report this only as an exit status, after the PID reply; the
        # client gets the original's "cannot start" error instead (as with Popen).
        raise FileNotFoundError(errno.ENOENT if not os.path.exists(exe) else errno.EACCES,
                                f"{exe} is not executable", exe)
    proc = subprocess.Popen(
        full,
        executable=full[0],
        stdin=subprocess.PIPE,
        stdout=output_fd,
        stderr=subprocess.STDOUT,
        pass_fds=(channel_fd, *extra_fds),
        cwd="/",
        env=clean_environment(user),
        start_new_session=True,  # no signals from the service's terminal
        **ids,
    )
    pidfd = os.pidfd_open(proc.pid)
    if nice:
        # Set while the child is most likely still setpriv (it loads its libraries
        # for ~0.5 ms before it execs openvpn), so openvpn usually starts with it.
        with contextlib.suppress(OSError):  # it already exited; the session will see that
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    assert proc.stdin is not None
    try:
        # At most 4096 UTF-16 units: fits a pipe buffer, so this never blocks.
        proc.stdin.write(stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    return Child(proc, pidfd)
