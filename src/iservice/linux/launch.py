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

How it is spawned (docs/performance.md, P1 and P3): CPython 3.11 uses ``vfork`` only
when ``Popen`` gets no ``user``/``group``/``extra_groups``; with them it ``fork``s the
whole service (~26 MB: ~0.9 ms of page tables) and waits for the child's ``exec``
(another ~0.8 ms), 1.5 ms per start measured in all.  So the child is a small program,
spawned with ``vfork`` (0.12 ms), that takes the user's identity itself and then
``exec``s openvpn in place: same PID, same start time, same environment and
descriptors.  That program is iservice's own ``iservice-runas`` (``plugin/
iservice_runas.c``, built by ``pip install``), started by ``spawn.spawn`` (glibc's
``posix_spawn`` without the GIL held: CPython 3.11's ``Popen`` holds it until the
child's ``exec``, ~0.55 ms per start in which no other thread of the service ran;
``linux/spawn.py``), else util-linux's ``setpriv`` through ``Popen``: both
take the uid, gid and groups, and clear the inheritable capability set; taking a
non-zero uid clears the permitted, effective and ambient sets (no
``SECBIT_KEEP_CAPS``), so openvpn has none.  ``setpriv`` cost ~1.0 ms of CPU per start
(loading libcap-ng and probing capabilities) against ~0.3 ms for the static helper
(measured: 1.49 vs 0.80 ms with /bin/true behind each, 0.46 ms for /bin/true alone);
in a burst of 100 starts on two cores that CPU was taken from the service.  Both need
CAP_SETUID and CAP_SETGID, which the service has anyway (``systemd/iservice.service``).
With neither (not Debian's util-linux, no compiler at install) the slow
``Popen(user=...)`` path is used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from iservice.aio import readable
from iservice.linux import spawn
from iservice.linux.cgroup import move_self, open_procs_at
from iservice.linux.identity import UserIdentity
from iservice.plugin import runas_path

log = logging.getLogger("iservice.launch")

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


def service_options(hook_kind: str, hook_path: str, tun: str, channel_fd: int) -> list[str]:
    """The options the service appends to openvpn's command line; last, so they win over
    the user's (SPEC §4).  ``hook_kind`` "plugin": openvpn loads iservice's plugin
    in-process (no script, so no ``--script-security 2``), which it calls at up,
    route-up, route-pre-down and down, as it would run the scripts; "script": the hook
    executable as those four scripts."""
    if hook_kind == "plugin":
        hooks = ["--plugin", hook_path, str(channel_fd)]
    else:
        cmd = f"{hook_path} {channel_fd}"
        hooks = ["--script-security", "2", "--up", cmd, "--route-up", cmd,
                 "--route-pre-down", cmd, "--down", cmd]
    return ["--dev", tun, "--dev-type", "tun", "--disable-dco",
            "--ifconfig-noexec", "--route-noexec", *hooks, "--up-restart"]


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
    """openvpn as started: its pid, a pidfd for waiting and signalling, and the ``Popen``
    of the fallback paths (None when ``spawn.spawn`` started it)."""

    pid: int
    pidfd: int
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None  # None while it runs (it is reaped only by ``wait``)

    async def wait(self) -> int:
        """Wait for exit without a thread; returns the shell-style exit status."""
        if self.returncode is None:
            await readable(self.pidfd)
            self.reap()
        assert self.returncode is not None
        return exit_status(self.returncode)

    def reap(self) -> int:
        """Wait for the exit (blocking) and collect it; ``Popen``'s returncode: -N for
        signal N."""
        if self.returncode is None:
            if self.proc is not None:
                self.returncode = self.proc.wait()
            else:
                _pid, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


@dataclass(frozen=True)
class Spawner:
    """A program that becomes the user and then ``exec``s openvpn (module docstring)."""

    kind: Literal["runas", "setpriv"]
    path: str


def _own_file(path: str) -> bool:
    """An executable file that only root (or this process's user) can change: the
    service runs it as root, so one that another user could replace is not used."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022
            and os.access(path, os.X_OK))


def _find_spawners() -> tuple[Spawner, ...]:
    found = []
    runas = runas_path()
    if runas is not None and _own_file(runas):
        found.append(Spawner("runas", runas))
    # util-linux's setpriv (Debian: always installed, util-linux is Essential).  Only
    # these fixed locations: the service's own PATH is not trusted for this.
    setpriv = next((p for p in ("/usr/bin/setpriv", "/bin/setpriv") if _own_file(p)), None)
    if setpriv is not None:
        found.append(Spawner("setpriv", setpriv))
    return tuple(found)


# Found once, in order of preference; SPAWNER is the one used (None: Popen(user=...)).
SPAWNERS = _find_spawners()
SPAWNER = SPAWNERS[0] if SPAWNERS else None


def spawner_name() -> str:
    """What starts openvpn (for the service's ready line)."""
    return SPAWNER.path if SPAWNER else "popen"


def spawn_argv(exe: str, argv: Sequence[str], user: UserIdentity, *, nice: int = 0,
               spawner: Spawner | None = SPAWNER, cgroup_fd: int | None = None,
               keep: Sequence[int] = ()) -> list[str]:
    """The command that runs ``exe argv`` as ``user`` (through ``spawner`` if given).

    Everything after ``--`` is openvpn's: neither program parses its own options past
    it, so no user-chosen option can reach them; they ``exec`` ``exe`` (an absolute
    path, no PATH search) once they are the user.  ``iservice-runas`` also sets the
    nice value, as root before it drops privileges, joins the session's cgroup
    through ``cgroup_fd`` and closes every descriptor but 0-2 and ``keep``; for the
    others the caller does all three.
    """
    if spawner is None:
        return [exe, *argv]
    if spawner.kind == "runas":
        groups = ",".join(str(g) for g in user.groups) or "-"
        return [spawner.path, str(user.uid), str(user.gid), groups, str(nice),
                "-" if cgroup_fd is None else str(cgroup_fd),
                ",".join(str(fd) for fd in keep) or "-", "--", exe, *argv]
    groups = ",".join(str(g) for g in user.groups)
    return [spawner.path, f"--reuid={user.uid}", f"--regid={user.gid}",
            f"--groups={groups}" if groups else "--clear-groups", "--inh-caps=-all",
            "--", exe, *argv]


def start_openvpn(exe: str, argv: Sequence[str], *, user: UserIdentity, workdir: str,
                  nice: int, stdin: bytes, channel_fd: int, output_fd: int,
                  extra_fds: Sequence[int] = (), spawner: Spawner | None = SPAWNER,
                  cgroup_fd: int | None = None) -> Child:
    """Start openvpn; its stdout and stderr go to ``output_fd`` (the session's log pipe).

    ``cgroup_fd``: the session cgroup's directory (``Cgroups.open_dir``).  The process
    is created in it (``spawn.spawn(cgroup=…)``, with ``iservice-runas``), or else joins
    it before it becomes the user; either way it and everything it ever forks are in
    it.  Raises OSError when it cannot be started (``exe`` not executable, spawn
    failed).
    """
    raise_stack_limit()  # openvpn's hooks get up to 6 MiB of environment
    via_runas = spawner is not None and spawner.kind == "runas"
    keep: tuple[int, ...] = (channel_fd, *extra_fds)  # openvpn's
    argv = ["--cd", workdir, *argv]
    if spawner is not None and not os.access(exe, os.X_OK):
        # The spawner would report this only as an exit status, after the PID reply; the
        # client gets the original's "cannot start" error instead (as with Popen).
        raise FileNotFoundError(errno.ENOENT if not os.path.exists(exe) else errno.EACCES,
                                f"{exe} is not executable", exe)
    if via_runas and spawn.available() and cgroup_fd is not None \
            and spawn.into_cgroup_available():
        try:  # born in the cgroup: nothing to join (spawn.py says what that saves)
            return _spawn_runas(spawn_argv(exe, argv, user, nice=nice, spawner=spawner,
                                           keep=keep),
                                user, stdin, output_fd, keep, cgroup=cgroup_fd)
        except spawn.CgroupSpawnUnavailable as exc:  # said once: from now on the old way
            log.warning("event=cgroup-spawn-unavailable reason=%s: each session's "
                        "iservice-runas joins its cgroup itself, which waits for an RCU "
                        "grace period (~10-20 ms) per start", json.dumps(str(exc)))
    procs_fd = None if cgroup_fd is None else open_procs_at(cgroup_fd)
    try:
        return _start_joining(exe, argv, user=user, nice=nice, stdin=stdin,
                              output_fd=output_fd, keep=keep, spawner=spawner,
                              procs_fd=procs_fd)
    finally:
        if procs_fd is not None:
            os.close(procs_fd)


def _start_joining(exe: str, argv: list[str], *, user: UserIdentity, nice: int,
                   stdin: bytes, output_fd: int, keep: tuple[int, ...],
                   spawner: Spawner | None, procs_fd: int | None) -> Child:
    """``start_openvpn`` where the process joins its cgroup itself, through ``procs_fd``
    (the cgroup's ``cgroup.procs``): ``iservice-runas``'s ``CGROUP``, or a
    ``preexec_fn`` in the fallbacks."""
    via_runas = spawner is not None and spawner.kind == "runas"
    full = spawn_argv(exe, argv, user, nice=nice, spawner=spawner,
                      cgroup_fd=procs_fd if via_runas else None, keep=keep)
    # what the spawned program gets; runas writes the cgroup's and closes it first
    passed = keep + ((procs_fd,) if via_runas and procs_fd is not None else ())
    if via_runas and spawn.available():
        return _spawn_runas(full, user, stdin, output_fd, passed)
    ids: dict[str, Any] = {}
    if procs_fd is not None and not via_runas:
        # The fallbacks join in the child before exec: CPython then forks instead
        # of vforking (slower, ~1.5 ms), which is why runas is preferred.
        fd = procs_fd
        ids["preexec_fn"] = lambda: move_self(fd)
    if spawner is None:
        ids.update(user=user.uid, group=user.gid, extra_groups=list(user.groups))
    proc = subprocess.Popen(
        full,
        executable=full[0],
        stdin=subprocess.PIPE,
        stdout=output_fd,
        stderr=subprocess.STDOUT,
        pass_fds=passed,
        cwd="/",
        env=clean_environment(user),
        start_new_session=True,  # no signals from the service's terminal
        **ids,
    )
    pidfd = _pidfd_or_end(proc.pid, proc.wait)
    if nice and not via_runas:
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
    return Child(proc.pid, pidfd, proc)


def _pidfd_or_end(pid: int, reap: Callable[[], object]) -> int:
    """A pidfd for our child ``pid``; if none can be opened (out of descriptors) the
    child is killed, reaped by ``reap`` and the error raised: nobody could watch it.
    (Still our unreaped child, so the pid cannot name another process.)"""
    try:
        return os.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        reap()
        raise


def _spawn_runas(full: list[str], user: UserIdentity, stdin: bytes, output_fd: int,
                 keep: tuple[int, ...], *, cgroup: int | None = None) -> Child:
    """``iservice-runas`` started by ``spawn.spawn`` (no GIL held while it starts; its
    KEEP closes whatever else the spawn let through), in ``cgroup`` if given."""
    stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = spawn.spawn(full[0], full, clean_environment(user), stdin=stdin_r,
                              stdout=output_fd, stderr=output_fd, keep=keep, cgroup=cgroup)
        finally:
            os.close(stdin_r)
        pidfd = _pidfd_or_end(pid, lambda: os.waitpid(pid, 0))
        try:
            # At most 4096 UTF-16 units: fits a pipe buffer, so this never blocks.
            if stdin:
                os.write(stdin_w, stdin)
        except BrokenPipeError:
            pass
    finally:
        os.close(stdin_w)  # also when nothing was started
    return Child(pid, pidfd)
