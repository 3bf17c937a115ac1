"""The start path (issue 8, P1/P3): how openvpn is spawned, journaled and recovered.

openvpn is spawned through iservice's ``iservice-runas`` helper with glibc's
``posix_spawn`` (else util-linux's ``setpriv`` by CPython's ``vfork``), from the monitor
thread.  These tests check that the process openvpn becomes is exactly what SPEC §4
asks for, by all three spawn paths (``iservice-runas``, ``setpriv`` and the
``Popen(user=...)`` fallback) and through the service: the user's uid, gid and
supplementary groups, no capabilities in any set, the clean environment, a new session,
the ``priority`` nice value, the raised stack limit, stdin then EOF, only the channel
and facts descriptors, ``--cd WORKDIR`` first; that the helper refuses malformed
numbers and commands before anything runs, and is not used when others could replace
it; that the spawn (``linux/spawn.py``) lets the service's other threads run while the
child gets to its ``exec``, and leaves nothing when it fails.  Then that recovery ends
a leftover process only when pid *and* start time match, that concurrent requests of
one user respect ``max_sessions_per_user``, and that an ``exe_path`` that cannot run
gets the original's "cannot start" reply and leaves nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.isv import PYTHON, Service, Services, wait_for
from tests.lab import Lab, Pki, User
from tests.lab.hung import hung_mount

from iservice.journal import Journal
from iservice.linux import identity, launch, spawn
from iservice.linux.cgroup import CgroupError, Cgroups, cgroup2_mount
from iservice.linux.identity import user_identity

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

# The stand-in openvpn: reports what it is, then stays alive (until killed).
REPORT = r'''#!{python} -I
import json, os, resource, sys, time
fds = [int(x) for x in os.listdir("/proc/self/fd")]
fds = sorted(fd for fd in fds if os.path.exists(f"/proc/self/fd/{{fd}}"))  # not listdir's own
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
report = {{"argv": sys.argv[1:], "resuid": os.getresuid(), "resgid": os.getresgid(),
          "groups": sorted(os.getgroups()),
          "caps": {{k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}},
          "signals": {{k: status[k].strip() for k in ("SigBlk", "SigIgn")}},
          "env": dict(os.environ), "nice": os.getpriority(os.PRIO_PROCESS, 0),
          "pid": os.getpid(), "sid": os.getsid(0), "cwd": os.getcwd(), "fds": fds,
          "stack": resource.getrlimit(resource.RLIMIT_STACK)[0],
          "cgroup": [x[3:].strip() for x in open("/proc/self/cgroup") if x.startswith("0::")],
          "cpus": sorted(os.sched_getaffinity(0)),
          "stdin": sys.stdin.buffer.read().decode()}}
print("REPORT " + json.dumps(report), flush=True)
time.sleep(600)
'''
ZERO_CAPS = {k: "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.write_client_config("approved.ovpn")
        yield lab


@pytest.fixture(scope="module")
def reporter(lab: Lab) -> Path:
    return lab.write_file("report-openvpn", REPORT.format(python=PYTHON), mode=0o755)


@pytest.fixture
def make_service(lab: Lab) -> Iterator[Callable[..., Service]]:
    services = Services(lab, prefix="sp")
    yield services.make
    services.close()


@pytest.fixture(scope="module")
def grouped_user(lab: Lab) -> User:
    """A user with two supplementary groups besides its own."""
    return lab.add_user("isvs", groups=[lab.add_group("isvsa"), lab.add_group("isvsb")])


@pytest.fixture
def session_cgroup(tmp_path: Path) -> Iterator[tuple[Cgroups, str]]:
    """A session cgroup made as the service makes one (``Cgroups``), removed after."""
    groups = Cgroups.find(str(tmp_path))
    path = groups.path_for(os.getpid())
    groups.create(path)
    try:
        yield groups, path
    finally:
        groups.remove(path)
        with contextlib.suppress(OSError):
            os.rmdir(groups._abs(groups.base))


def test_the_group_list_is_the_c_librarys(lab: Lab, grouped_user: User) -> None:
    """``identity.getgrouplist`` (through ctypes, without the GIL) gives what
    ``os.getgrouplist`` gives, also past its first buffer of 64 groups."""
    many = lab.add_user("isvm", groups=[lab.add_group("isvmg") for _ in range(70)])
    for u in (grouped_user, many):
        assert sorted(identity.getgrouplist(u.name, u.gid)) == \
            sorted(os.getgrouplist(u.name, u.gid))
    assert len(identity.getgrouplist(many.name, many.gid)) == 71


def expected_groups(user: User) -> list[int]:
    return sorted(user_identity(user.uid, user.gid).groups)


def check_report(r: dict[str, Any], user: User, *, nice: int, stdin: str,
                 keep_fds: set[int]) -> None:
    assert r["resuid"] == [user.uid] * 3
    assert r["resgid"] == [user.gid] * 3
    assert r["groups"] == expected_groups(user) and len(r["groups"]) == 3
    assert r["caps"] == ZERO_CAPS  # no capability in any set
    # nothing blocked or ignored (a blocked SIGTERM would break every disconnect), but
    # for the two signals the Python stand-in's own start ignores
    python_ignores = 1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)
    assert int(r["signals"]["SigBlk"], 16) == 0, r["signals"]
    assert int(r["signals"]["SigIgn"], 16) & ~python_ignores == 0, r["signals"]
    assert r["env"] == launch.clean_environment(user_identity(user.uid, user.gid))
    assert r["nice"] == nice
    assert r["sid"] == r["pid"]  # a new session: no signals from the service's terminal
    assert r["cwd"] == "/"  # openvpn enters the workdir itself (--cd), with its rights
    assert r["fds"] == sorted({0, 1, 2} | keep_fds)
    _soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    want = launch.OPENVPN_STACK_LIMIT if hard == resource.RLIM_INFINITY else \
        min(launch.OPENVPN_STACK_LIMIT, hard)
    assert r["stack"] == resource.RLIM_INFINITY or r["stack"] >= want
    assert r["stdin"] == stdin  # written, then EOF (the read returned)
    # the spawner's own CPUs: never left pinned to the one it was created on (spawn.py)
    assert r["cpus"] == sorted(os.sched_getaffinity(0))


def read_report(fd: int, timeout: float = 10) -> dict[str, Any]:
    buf = b""
    deadline = time.monotonic() + timeout
    os.set_blocking(fd, False)
    while b"\n" not in buf:
        assert time.monotonic() < deadline, buf
        try:
            buf += os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
    line = buf.split(b"\n")[0].decode()
    assert line.startswith("REPORT "), line
    result: dict[str, Any] = json.loads(line.removeprefix("REPORT "))
    return result


def test_the_helper_is_built_and_preferred() -> None:
    # setup.sh installs gcc and libc6-dev, so pip install builds iservice-runas.
    assert [s.kind for s in launch.SPAWNERS] == ["runas", "setpriv"]
    assert launch.SPAWNER is launch.SPAWNERS[0]


SPAWN_PATHS = [pytest.param(s, id=s.kind) for s in launch.SPAWNERS] + \
    [pytest.param(None, id="popen-user")]


def start_reporter(reporter: Path, grouped_user: User, *,
                   spawner: launch.Spawner | None = launch.SPAWNER,
                   cgroup_fd: int | None = None, nice: int = 0, stdin: bytes = b"",
                   argv: tuple[str, ...] = (), extra_fds: tuple[int, ...] = (),
                   ) -> tuple[dict[str, Any], set[int], int]:
    """``start_openvpn`` of the stand-in: its report, the descriptors it was to keep and
    the pid ``start_openvpn`` gave (the child is ended after its report)."""
    user = user_identity(grouped_user.uid, grouped_user.gid)
    chan_a, chan_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        child = launch.start_openvpn(str(reporter), list(argv), user=user, workdir="/tmp",
                                     nice=nice, stdin=stdin, channel_fd=chan_b.fileno(),
                                     output_fd=out_w, extra_fds=extra_fds, spawner=spawner,
                                     cgroup_fd=cgroup_fd)
        try:
            os.close(out_w)
            out_w = -1
            return read_report(out_r), {chan_b.fileno(), *extra_fds}, child.pid
        finally:
            child.signal(signal.SIGKILL)
            child.reap()
            child.close()
    finally:
        for fd in (out_r, out_w):
            if fd >= 0:
                os.close(fd)
        chan_a.close()
        chan_b.close()


@pytest.mark.parametrize("spawner", SPAWN_PATHS)
@pytest.mark.parametrize("nice", [10, -5])
def test_every_spawn_path_makes_the_same_process(reporter: Path, grouped_user: User,
                                                 spawner: launch.Spawner | None,
                                                 nice: int) -> None:
    facts_r, facts_w = os.pipe2(os.O_CLOEXEC)
    stray = os.open("/dev/null", os.O_RDONLY)  # not passed: must not reach the child
    os.set_inheritable(stray, True)
    try:
        r, keep, pid = start_reporter(reporter, grouped_user, spawner=spawner, nice=nice,
                                      stdin=b"user\npass\n", argv=("--config", "x.ovpn"),
                                      extra_fds=(facts_r,))
        assert r["argv"] == ["--cd", "/tmp", "--config", "x.ovpn"]
        assert r["pid"] == pid
        check_report(r, grouped_user, nice=nice, stdin="user\npass\n", keep_fds=keep)
    finally:
        for fd in (facts_r, facts_w, stray):
            os.close(fd)


BAD_RUNAS_ARGS = [[*a, "-", "-"] for a in [
    ["x", "1000", "-", "0"], ["-1", "1000", "-", "0"], ["4294967295", "1000", "-", "0"],
    ["1000", "", "-", "0"], ["1000", "1e3", "-", "0"], ["1000", "1000", "", "0"],
    ["1000", "1000", "1,,2", "0"], ["1000", "1000", "1,", "0"], ["1000", "1000", ",", "0"],
    ["1000", "1000", "-", "20"], ["1000", "1000", "-", "-21"], ["1000", "1000", "-", "+1"],
]] + [
    # the cgroup descriptor: not a number, stdin/out/err, not open
    ["1000", "1000", "-", "0", "x", "-"], ["1000", "1000", "-", "0", "2", "-"],
    ["1000", "1000", "-", "0", "999", "-"], ["1000", "1000", "-", "0", "", "-"],
    # the descriptors to keep: not numbers, stdin/out/err, not open, empty entries
    ["1000", "1000", "-", "0", "-", "x"], ["1000", "1000", "-", "0", "-", "1"],
    ["1000", "1000", "-", "0", "-", "999"], ["1000", "1000", "-", "0", "-", ""],
    ["1000", "1000", "-", "0", "-", "3,,4"], ["1000", "1000", "-", "0", "-", ","],
]


@pytest.mark.parametrize("args", BAD_RUNAS_ARGS, ids=lambda a: "/".join(a))
def test_the_helper_refuses_bad_numbers_before_running_anything(tmp_path: Path,
                                                                args: list[str]) -> None:
    assert launch.SPAWNERS and launch.SPAWNERS[0].kind == "runas"
    mark = tmp_path / "ran"
    r = subprocess.run([launch.SPAWNERS[0].path, *args, "--", "/usr/bin/touch", str(mark)],
                       capture_output=True, text=True)
    assert r.returncode == 126 and r.stderr.startswith("iservice-runas: "), r
    assert not mark.exists()


@pytest.mark.parametrize("into_cgroup", [False, True], ids=["posix_spawn", "clone3"])
def test_a_spawn_lets_the_services_other_threads_run_until_its_exec(
        lab: Lab, session_cgroup: tuple[Cgroups, str], into_cgroup: bool) -> None:
    """``spawn.spawn`` waits for the child's ``exec`` without the GIL (CPython 3.11's
    ``Popen`` holds it all that time: docs/performance.md), by either of its ways.  Here
    the ``exec`` waits on a file system that never answers; the main thread meanwhile
    sleeps 0.1 s and wakes, which it could not while another thread held the GIL (it
    would wake only when the mount's dead man's switch ends the wait, after 20 s)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    outcome: list[BaseException] = []
    groups, path = session_cgroup
    cgroup = groups.open_dir(path) if into_cgroup else None

    def start(path: str) -> None:
        try:
            spawn.spawn(path, [path], {}, stdin=out_r, stdout=out_w, stderr=out_w,
                        cgroup=cgroup)
        except OSError as exc:
            outcome.append(exc)
    try:
        with hung_mount(lab.base_dir / f"hung-exec-{into_cgroup}", deadline=20) as hung:
            th = threading.Thread(target=start, args=(str(hung / "openvpn"),), daemon=True)
            th.start()
            time.sleep(0.2)  # the child is in its exec by now
            t0 = time.monotonic()
            time.sleep(0.1)
            slept = time.monotonic() - t0
            waiting = th.is_alive()
        th.join(20)  # the mount is gone: the exec failed, posix_spawn reaped the child
        assert slept < 2 and waiting, (slept, waiting)
        assert not th.is_alive() and len(outcome) == 1 and \
            isinstance(outcome[0], OSError), outcome
    finally:
        for fd in (out_r, out_w, cgroup):
            if fd is not None:
                os.close(fd)


def own_children() -> set[int]:
    """This process's children, zombies included (every thread's ``children`` list)."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):
            found |= {int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()}
    return found


def test_a_spawn_that_cannot_exec_raises_and_leaves_no_process(tmp_path: Path) -> None:
    r, w_ = os.pipe2(os.O_CLOEXEC)
    try:
        before = own_children()
        for path, err in ((tmp_path / "missing", errno.ENOENT),
                          (tmp_path, errno.EACCES)):  # a directory
            with pytest.raises(OSError) as info:
                spawn.spawn(str(path), [str(path)], {}, stdin=r, stdout=w_, stderr=w_)
            assert info.value.errno == err
        assert own_children() == before  # the child was reaped by posix_spawn itself
        # a NUL would cut the argument in C: refused before anything runs
        for argv, env in ((["true", "--config\0x"], {}), (["true"], {"A": "b\0c"})):
            with pytest.raises(ValueError, match="NUL"):
                spawn.spawn("/bin/true", argv, env, stdin=r, stdout=w_, stderr=w_)
        assert own_children() == before
        with pytest.raises(ValueError):  # the child's 0-2 are made from others
            spawn.spawn("/bin/true", ["true"], {}, stdin=0, stdout=w_, stderr=w_)
    finally:
        os.close(r)
        os.close(w_)


@pytest.mark.parametrize("spawner", SPAWN_PATHS)
def test_a_child_that_cannot_be_watched_is_ended(reporter: Path, grouped_user: User,
                                                 spawner: launch.Spawner | None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors right after the spawn (no pidfd): the child is killed and
    reaped, and the start fails, instead of an openvpn nobody watches."""
    user = user_identity(grouped_user.uid, grouped_user.gid)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)

    def no_pidfd(pid: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")
    try:
        before = own_children()
        monkeypatch.setattr(os, "pidfd_open", no_pidfd)  # the module launch uses
        with pytest.raises(OSError) as info:
            launch.start_openvpn(str(reporter), [], user=user, workdir="/tmp", nice=0,
                                 stdin=b"", channel_fd=out_r, output_fd=out_w,
                                 spawner=spawner)
        assert info.value.errno == errno.EMFILE
        assert own_children() == before
    finally:
        os.close(out_r)
        os.close(out_w)


@pytest.mark.parametrize("tail", [["/usr/bin/touch", "{mark}"], ["--"],
                                  ["-", "/usr/bin/touch", "{mark}"], ["--", "touch", "{mark}"]],
                         ids=["no-dashes", "no-exe", "not-dashes", "relative-exe"])
def test_the_helper_refuses_a_malformed_command(tmp_path: Path, tail: list[str]) -> None:
    mark = tmp_path / "ran"
    r = subprocess.run([launch.SPAWNERS[0].path, "1000", "1000", "-", "0", "-", "-",
                        *(t.format(mark=mark) for t in tail)],
                       capture_output=True, text=True, cwd="/usr/bin")
    assert r.returncode == 126 and "usage" in r.stderr, r
    assert not mark.exists()


def test_the_helper_keeps_exactly_the_descriptors_it_is_told_to() -> None:
    """KEEP with gaps around and between its descriptors: the program has 0-2 and KEEP,
    whatever else was open (here ten inheritable descriptors around them)."""
    opened = [os.open("/dev/null", os.O_RDONLY) for _ in range(10)]
    try:
        for fd in opened:
            os.set_inheritable(fd, True)
        keep = sorted(opened)[2::4]  # e.g. 5 and 9: open ones before, between, after
        r = subprocess.run([launch.SPAWNERS[0].path, "65534", "65534", "-", "0", "-",
                            ",".join(map(str, reversed(keep))), "--", "/bin/ls",
                            "/proc/self/fd"], capture_output=True, text=True,
                           close_fds=False)
        assert r.returncode == 0, r
        listed = sorted(int(x) for x in r.stdout.split())
        # and ls's own descriptor of the directory: the lowest free one, 3
        assert listed == sorted({0, 1, 2, 3, *keep}), (listed, keep)
    finally:
        for fd in opened:
            os.close(fd)


def test_the_helper_reports_an_exec_failure_as_127() -> None:
    r = subprocess.run([launch.SPAWNERS[0].path, "1000", "1000", "-", "0", "-", "-", "--",
                        "/nonexistent/openvpn"], capture_output=True, text=True)
    assert r.returncode == 127 and "cannot run /nonexistent/openvpn" in r.stderr, r


JOIN = """mount -t cgroup2 none /sys/fs/cgroup || exit 1
d=/sys/fs/cgroup/$1
mkdir "$d" || exit 1
"$2" 65534 65534 - 0 3 - -- /bin/sh -c 'cat /proc/self/cgroup; ls -l /proc/$$/fd' \
    3>"$d/cgroup.procs"
rc=$?
rmdir "$d"
exit $rc
"""


def test_the_helper_joins_the_sessions_cgroup_and_closes_its_descriptor() -> None:
    """Every process of a session is in its cgroup from before it runs as the user; the
    descriptor that put it there (root's, writable) never reaches the program."""
    name = f"isv-runas-{os.getpid()}"
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", JOIN,
                        "join", name, launch.SPAWNERS[0].path],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r
    assert f"0::/{name}" in r.stdout.split()
    assert "cgroup.procs" not in r.stdout


@pytest.mark.parametrize("way", ["created-there", "joined"])
def test_openvpn_is_in_the_sessions_cgroup_either_way(
        reporter: Path, grouped_user: User, session_cgroup: tuple[Cgroups, str], way: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Created in the cgroup (``iservice_spawn.so``, clone3's CLONE_INTO_CGROUP), or, where
    that cannot be done, joined by ``iservice-runas`` before it drops root: the same
    process, in the session's cgroup, and no descriptor of the cgroup reaches it."""
    groups, path = session_cgroup
    if way == "joined":
        monkeypatch.setattr(spawn, "_cgroup_spawner", None)
    else:  # setup.sh builds the library; the machines have Linux >= 5.7 on x86-64
        assert spawn.into_cgroup_available()
    dir_fd = groups.open_dir(path)
    try:
        r, keep, _pid = start_reporter(reporter, grouped_user, cgroup_fd=dir_fd,
                                      spawner=launch.SPAWNERS[0])
    finally:
        os.close(dir_fd)
    assert r["cgroup"] == [path]
    check_report(r, grouped_user, nice=0, stdin="", keep_fds=keep)


def test_only_a_session_cgroup_is_opened_for_a_spawn(
        session_cgroup: tuple[Cgroups, str]) -> None:
    """The descriptor a spawn is created under names a session cgroup of this service and
    nothing else, whatever path it is asked for (a damaged journal names the path)."""
    groups, path = session_cgroup
    for other in ("/", groups.base, f"{path}/../session-1", "session-1",
                  f"{groups.base}/session-x"):
        with pytest.raises(CgroupError):
            groups.open_dir(other)
    fd = groups.open_dir(path)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(groups._abs(path)))
    finally:
        os.close(fd)


class NoClone3IntoCgroup:
    """Test double for a kernel without clone3 (or a seccomp filter refusing it), which
    these machines do not have: ``isv_spawn`` answers ENOSYS and starts nothing."""

    calls = 0

    def isv_spawn(self, *args: object) -> int:
        self.calls += 1
        return errno.ENOSYS


def test_a_kernel_that_cannot_create_in_a_cgroup_falls_back_to_joining_it(
        reporter: Path, grouped_user: User, session_cgroup: tuple[Cgroups, str],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The start still succeeds, in the cgroup (the helper joins it); the service says
    so once and does not try again."""
    groups, path = session_cgroup
    double = NoClone3IntoCgroup()
    monkeypatch.setattr(spawn, "_cgroup_spawner", double)
    dir_fd = groups.open_dir(path)
    try:
        with caplog.at_level("WARNING", logger="iservice.launch"):
            first, _, _ = start_reporter(reporter, grouped_user, cgroup_fd=dir_fd,
                                         spawner=launch.SPAWNERS[0])
            second, keep, _ = start_reporter(reporter, grouped_user, cgroup_fd=dir_fd,
                                              spawner=launch.SPAWNERS[0])
    finally:
        os.close(dir_fd)
    assert first["cgroup"] == second["cgroup"] == [path]
    check_report(second, grouped_user, nice=0, stdin="", keep_fds=keep)
    assert double.calls == 1 and not spawn.into_cgroup_available()
    assert [m for m in caplog.messages if "event=cgroup-spawn-unavailable" in m] != []


def test_a_spawn_into_a_cgroup_is_there_from_its_first_instruction(
        tmp_path: Path, session_cgroup: tuple[Cgroups, str]) -> None:
    """The program's first read of /proc/self/cgroup already names the session's cgroup
    (nothing joined it); a failing exec, a descriptor that is not a cgroup's, a NUL:
    an error, and no process left."""
    groups, path = session_cgroup
    dir_fd = groups.open_dir(path)
    r, w_ = os.pipe2(os.O_CLOEXEC)
    not_a_cgroup = os.open(str(tmp_path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        before = own_children()
        pid = spawn.spawn("/bin/cat", ["cat", "/proc/self/cgroup"], {}, stdin=r, stdout=w_,
                          stderr=w_, cgroup=dir_fd)
        assert os.waitpid(pid, 0)[1] == 0
        assert f"0::{path}" in os.read(r, 65536).decode().splitlines()
        # every argument and variable arrives as given
        args = [f"arg{i}-" + "é" * (i % 40) for i in range(200)]
        env = {f"V{i}": "x" * (i % 50) for i in range(300)}
        pid = spawn.spawn("/bin/sh", ["sh", "-c", 'printf "%s\\n" "$@"; env', "sh", *args],
                          env, stdin=r, stdout=w_, stderr=w_, cgroup=dir_fd)
        out = b""  # read before the wait, so that no output can hold the child up
        while not out.endswith(b"\n") or out.count(b"\n") < len(args) + len(env):
            out += os.read(r, 1 << 20)
        assert os.waitpid(pid, 0)[1] == 0
        lines = out.decode().splitlines()
        assert lines[:len(args)] == args
        assert {k: v for k, _, v in (x.partition("=") for x in lines[len(args):])
                if k != "PWD"} == env
        for exe, fd, err in ((tmp_path / "missing", dir_fd, errno.ENOENT),
                             (tmp_path, dir_fd, errno.EACCES),
                             (Path("/bin/true"), not_a_cgroup, errno.EBADF)):
            with pytest.raises(OSError) as info:
                spawn.spawn(str(exe), [str(exe)], {}, stdin=r, stdout=w_, stderr=w_, cgroup=fd)
            assert info.value.errno == err
            assert not isinstance(info.value, spawn.CgroupSpawnUnavailable)
        with pytest.raises(ValueError, match="NUL"):
            spawn.spawn("/bin/true", ["true", "a\0b"], {}, stdin=r, stdout=w_, stderr=w_,
                        cgroup=dir_fd)
        assert own_children() == before and groups.procs(path) == []
        assert spawn.into_cgroup_available()  # those were errors, not a kernel without it
    finally:
        for fd in (dir_fd, r, w_, not_a_cgroup):
            os.close(fd)


def test_a_helper_others_could_replace_is_not_used(tmp_path: Path) -> None:
    copy = tmp_path / "iservice-runas"
    shutil.copy(launch.SPAWNERS[0].path, copy)
    copy.chmod(0o755)
    assert launch._own_file(str(copy))
    copy.chmod(0o775)  # group-writable
    assert not launch._own_file(str(copy))
    copy.chmod(0o755)
    os.chown(copy, 65534, 0)  # owned by nobody
    assert not launch._own_file(str(copy))


def test_an_exe_that_cannot_run_raises_before_any_process(grouped_user: User) -> None:
    user = user_identity(grouped_user.uid, grouped_user.gid)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with pytest.raises(FileNotFoundError):
            launch.start_openvpn("/nonexistent/openvpn", [], user=user, workdir="/", nice=0,
                                 stdin=b"", channel_fd=r, output_fd=w)
    finally:
        os.close(r)
        os.close(w)


def test_the_service_starts_openvpn_as_the_user_with_nothing_else(
        lab: Lab, make_service: Callable[..., Service], reporter: Path,
        grouped_user: User) -> None:
    svc = make_service(f"exe_path = {reporter}\npriority = BELOW_NORMAL_PRIORITY_CLASS\n")
    svc.start()
    cp = svc.start_as(grouped_user, "--config", "approved.ovpn", stdin="secret")
    assert cp.returncode == 0, cp.stdout + cp.stderr + svc.log_tail()
    pid = int(cp.stdout.strip())
    try:
        [session] = svc.journal()["sessions"]
        text = wait_for(lambda: next((line for line in svc.session_log(session["id"])
                                      .splitlines() if line.startswith("REPORT ")), None),
                        10, what=svc.log_tail)
        r = json.loads(text.removeprefix("REPORT "))
        assert r["pid"] == pid
        assert r["argv"][:2] == ["--cd", str(lab.config_dir)]  # --cd WORKDIR first
        argv = r["argv"]
        # the channel's fd: the plugin's argument, or the script hook's last word
        channel = int(argv[argv.index("--plugin") + 2]) if "--plugin" in argv \
            else int(argv[argv.index("--up") + 1].split()[-1])
        # the channel is all openvpn inherits (the facts stay in the service: produce.py)
        assert "ISERVICE_FACTS_FD" not in argv
        check_report(r, grouped_user, nice=10, stdin="secret", keep_fds={channel})
        # pid journaled; openvpn runs in the session's journaled cgroup, which recovery
        # ends, so its start time is not read nor journaled (it is only for sessions
        # without one: the next test)
        [info] = [s["info"] for s in svc.journal()["sessions"]]
        assert info["pid"] == pid
        assert info["start_time"] is None
        assert info["tun"] in svc.tuns()
        db = sqlite3.connect(f"file:{svc.state_dir / 'journal.sqlite3'}?mode=ro", uri=True)
        try:
            [(group,)] = db.execute("SELECT json_extract(data, '$.path') FROM changes "
                                    "WHERE kind = 'cgroup'").fetchall()
        finally:
            db.close()
        assert Path(f"/proc/{pid}/cgroup").read_text().strip().endswith(group), group
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not svc.tuns() and not svc.journal()["sessions"], 5, what=svc.log_tail)
    mount = cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    assert mount is not None and mount[1] == "/"
    base = Path(mount[0] + os.path.dirname(group))  # where the service made its cgroups
    assert base.is_dir() and not (base / os.path.basename(group)).exists()
    assert svc.stop() == 0
    assert not base.exists()  # a stopped service leaves no empty cgroup behind


def test_recovery_ends_a_leftover_process_only_if_pid_and_start_time_match(
        lab: Lab, make_service: Callable[..., Service], grouped_user: User) -> None:
    def sleeper() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "600"], user=grouped_user.uid,
                                group=grouped_user.gid, start_new_session=True)
    same, unknown, other = sleeper(), sleeper(), sleeper()
    try:
        svc = make_service()
        svc.state_dir.mkdir(mode=0o700)
        journal = Journal(str(svc.state_dir / "journal.sqlite3"))
        start = launch.process_start_time(same.pid)
        assert start is not None
        for proc, start_time in ((same, start),
                                 (unknown, None),  # killed before its start time was written
                                 (other, (launch.process_start_time(other.pid) or 0) + 1)):
            journal.new_session(grouped_user.uid, 1, {"pid": proc.pid, "start_time": start_time})
        journal.close()
        svc.start()
        wait_for(lambda: svc.log().count("event=recovered") == 3, 5, what=svc.log_tail)
        assert same.wait(timeout=5) == -signal.SIGKILL
        assert unknown.poll() is None and other.poll() is None  # not provably ours
        assert svc.journal() == {"sessions": [], "changes": 0}
        assert re.search(rf"event=recovered session=\d+ .*pid={same.pid} killed=True",
                         svc.log())
        assert svc.stop() == 0
    finally:
        for p in (same, unknown, other):
            if p.poll() is None:
                p.kill()
                p.wait()


BURST = r'''
import socket, sys
from iservice.wire import startup as w
path, workdir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(20)
    s.connect(path)
    s.send(w.encode_startup(w.StartupData(workdir, "--config approved.ovpn", "")))
    socks.append(s)
for s in socks:
    r = w.decode_reply(s.recv(65536))
    print(r.pid if isinstance(r, w.PidReply) else "refused " + r.func, flush=True)
'''


def test_concurrent_requests_of_one_user_respect_the_session_limit(
        lab: Lab, make_service: Callable[..., Service], reporter: Path,
        grouped_user: User) -> None:
    svc = make_service(f"exe_path = {reporter}\nmax_sessions_per_user = 2\n")
    svc.start()
    script = lab.write_file("burst-client.py", BURST)
    cp = lab.run_client([PYTHON, "-I", str(script), str(svc.socket_path),
                         str(lab.config_dir), "6"], user=grouped_user, timeout=60)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.split()
    pids = [int(x) for x in lines if x.isdigit()]
    try:
        assert len(pids) == 2, cp.stdout + svc.log_tail()
        assert cp.stdout.count("Too many sessions for this user") == 4, cp.stdout
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not svc.tuns() and not svc.journal()["sessions"], 10, what=svc.log_tail)
    assert svc.stop() == 0


def test_an_exe_path_that_cannot_run_is_refused_and_leaves_nothing(
        lab: Lab, make_service: Callable[..., Service], grouped_user: User) -> None:
    svc = make_service("exe_path = /nonexistent/openvpn\n")
    svc.start()
    cp = svc.start_as(grouped_user, "--config", "approved.ovpn")
    assert cp.returncode != 0
    assert "Cannot start openvpn" in cp.stdout + cp.stderr, cp.stdout + cp.stderr
    wait_for(lambda: not svc.tuns() and not svc.journal()["sessions"], 5, what=svc.log_tail)
    assert svc.stop() == 0
