"""The service as a target: squatting, impersonation, local DoS, limits, audit trail.

Rows of docs/security.md: CVE-2024-24974 / CVE-2024-4877 (reachable only as the
documented file; unsafe socket or state directories and a second listener stop the
start; the client refuses a socket not served by root), CVE-2024-27903's config_dir
warning, CVE-2025-13751 (clients that hang up, stay silent, send garbage, or open a
thousand connections: the service never exits and still answers another user at
once; memory bounded), limits with their documented replies, failure injection of
a netlink request that fails half-way, and the audit trail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.isv import ISERVICE, PYTHON, Service, alive, terminate, wait_for
from tests.lab import Lab, User
from tests.security.helpers import audit_lines, raw_requests, rss_kib, snapshot, suppressed

from iservice.wire import startup as w
from iservice.wire.control import Request, encode_request

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]


def started_pid(cp: Any) -> int:
    assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}"
    return int(cp.stdout.strip())


def end(svc: Service, pid: int) -> None:
    terminate(pid, lambda: not svc.tuns() and not svc.journal()["sessions"])


# -- CVE-2024-24974 / CVE-2024-4877: who can reach the socket, who may serve it ------

def _serve_once(lab: Lab, svc: Service) -> Any:
    return lab.run_service([ISERVICE, "serve", "--settings", str(svc.settings_path)],
                           timeout=20)


@pytest.mark.parametrize("case", [
    "socket-dir-user-owned", "socket-dir-group-writable", "socket-dir-world-writable",
    "socket-dir-is-symlink", "socket-dir-parent-user-writable", "state-dir-user-owned",
    "state-dir-world-writable", "socket-path-is-a-file",
])
def test_refuses_to_start_on_unsafe_directories(lab: Lab, make_service: Callable[..., Service],
                                                 user: User, case: str) -> None:
    svc = make_service()
    kind, _, problem = case.partition("-dir-") if "-dir-" in case else (case, "", "")
    if case == "socket-dir-parent-user-writable":
        parent = lab.make_dir(f"{svc.name}-parent", owner=user, mode=0o755)
        svc.run_dir = parent / "run"
        svc.socket_path = svc.run_dir / "service"
        text = svc.settings_path.read_text().replace(
            f"socket_path = {lab.base_dir / (svc.name + '-run')}/service",
            f"socket_path = {svc.socket_path}")
        svc.settings_path.write_text(text)
        lab.make_dir(f"{svc.name}-parent/run")
        expect = "its parent"
    elif case == "socket-path-is-a-file":
        svc.run_dir.mkdir(mode=0o755)
        svc.socket_path.write_text("not a socket")
        expect = "is not a socket"
    else:
        d = svc.run_dir if kind == "socket" else svc.state_dir
        if problem == "is-symlink":
            real = lab.make_dir(f"{svc.name}-elsewhere")
            d.symlink_to(real)
            expect = "is not a directory"
        else:
            d.mkdir(mode=0o755)
            if problem == "user-owned":
                os.chown(d, user.uid, user.gid)
            elif problem == "group-writable":
                d.chmod(0o775)
            elif problem == "world-writable":
                d.chmod(0o1777)
            expect = "must be owned by root and not writable"
    cp = _serve_once(lab, svc)
    assert cp.returncode == 1, cp.stderr
    assert "event=cannot-start" in cp.stderr and expect in cp.stderr, cp.stderr
    if case != "socket-path-is-a-file":
        assert not svc.socket_path.exists() or svc.socket_path.is_symlink()


@pytest.mark.parametrize("key", ["state_dir", "socket_path"])
def test_a_missing_directory_is_not_made_in_a_users_directory(
        lab: Lab, make_service: Callable[..., Service], user: User, key: str) -> None:
    """state_dir holds the journal that decides what undo removes, the socket directory
    the door every request comes through: root makes a missing one only below
    directories that pass the parents' rule, and leaves nothing behind in a user's
    directory when it refuses."""
    svc = make_service()
    theirs = lab.make_dir(f"{svc.name}-theirs", owner=user, mode=0o755)
    d = theirs / "made"
    old = svc.state_dir if key == "state_dir" else svc.socket_path
    new, what = (d, "state_dir") if key == "state_dir" else (d / "service", "socket directory")
    text = svc.settings_path.read_text()
    assert f"{key} = {old}\n" in text
    svc.settings_path.write_text(text.replace(f"{key} = {old}\n", f"{key} = {new}\n"))
    cp = _serve_once(lab, svc)
    assert cp.returncode == 1, cp.stderr
    assert "event=cannot-start" in cp.stderr and f"{what} {d}: cannot be made in {theirs}" \
        in cp.stderr, cp.stderr
    assert not d.exists()


@pytest.mark.parametrize("case", [
    "group-writable", "world-writable", "user-owned", "is-symlink", "parent-user-owned",
    "missing-under-user-dir", "missing-under-user-link",
])
def test_refuses_to_start_on_an_unsafe_log_dir(lab: Lab, make_service: Callable[..., Service],
                                               user: User, case: str) -> None:
    """Root writes every session's log in log_dir: if a user could write there (or rename
    it, or point it elsewhere), they could plant a link where the next file goes."""
    svc = make_service()
    d = svc.log_dir
    expect = "must be owned by root and not writable"
    made_by_root: Path | None = None  # a directory the service must not have made
    if case in ("group-writable", "world-writable", "user-owned"):
        d.mkdir(mode=0o750)
        if case == "group-writable":
            d.chmod(0o770)
        elif case == "world-writable":
            d.chmod(0o1777)
        else:
            os.chown(d, user.uid, user.gid)
    elif case == "is-symlink":
        d.symlink_to(lab.make_dir(f"{svc.name}-real-logs", mode=0o750))
        expect = "is not a directory"
    else:
        theirs = lab.make_dir(f"{svc.name}-theirs", owner=user, mode=0o755)
        if case == "parent-user-owned":
            d = theirs / "logs"
            d.mkdir(mode=0o750)  # root's, but the user may rename it and put their own
            expect = "its parent"
        elif case == "missing-under-user-dir":
            d = theirs / "logs"
            made_by_root = d
            expect = "cannot be made in"
        else:  # the user points a link of theirs at a root-owned place
            target = lab.make_dir(f"{svc.name}-roots", mode=0o755)
            (theirs / "link").symlink_to(target)
            os.lchown(theirs / "link", user.uid, user.gid)
            d = theirs / "link" / "logs"
            made_by_root = target / "logs"
            expect = "cannot be made in"
        text = svc.settings_path.read_text().replace(f"log_dir = {svc.log_dir}\n",
                                                     f"log_dir = {d}\n")
        svc.settings_path.write_text(text)
    cp = _serve_once(lab, svc)
    assert cp.returncode == 1, cp.stderr
    assert "event=cannot-start" in cp.stderr and f"log_dir {d}" in cp.stderr, cp.stderr
    assert expect in cp.stderr, cp.stderr
    assert not svc.socket_path.exists()
    if made_by_root is not None:
        assert not made_by_root.exists()


def test_session_log_never_follows_a_planted_link(lab: Lab, svc: Service, user: User) -> None:
    """A link planted where the next session's log goes (possible if log_dir were
    writable; here root plays the user) is moved aside, never followed; the log is a new
    root-owned file, mode 0640."""
    victim = lab.write_file(f"{svc.name}-victim", "root's own file\n", mode=0o600)
    planted = {n: svc.log_dir / f"session-{n}.log" for n in (1, 2, 3)}
    for link in planted.values():
        link.symlink_to(victim)
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    [session] = svc.journal()["sessions"]
    assert session["id"] in planted, session
    wait_for(lambda: "Initialization Sequence Completed" in svc.session_log(session["id"]), 20,
             what=lambda: svc.log_tail())
    log_file = planted[session["id"]]
    st = log_file.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_mode & 0o7777 == 0o640
    assert victim.read_text() == "root's own file\n" and victim.stat().st_mode & 0o777 == 0o600
    moved = [p for p in svc.log_dir.iterdir() if p.name.startswith(log_file.name + ".")]
    assert len(moved) == 1 and moved[0].is_symlink()
    assert "event=session-log-renamed" in svc.log()
    end(svc, pid)


def test_a_log_dir_loosened_after_the_start_gets_no_log_file(lab: Lab, svc: Service,
                                                               user: User) -> None:
    """The check is made again at every open: a session still runs, without its file, and
    the audit trail says why."""
    svc.log_dir.chmod(0o770)
    try:
        pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
        wait_for(lambda: "event=session-log-failed" in svc.log(), 10, what=svc.log_tail)
        line = next(x for x in svc.log().splitlines() if "event=session-log-failed" in x)
        assert f"log_dir {svc.log_dir} must be owned by root and not writable" in line
        assert f"uid={user.uid} " in line
        assert not list(svc.log_dir.iterdir())
        end(svc, pid)
    finally:
        svc.log_dir.chmod(0o750)


def test_second_listener_is_refused_and_the_first_keeps_serving(lab: Lab, svc: Service,
                                                                 user: User) -> None:
    cp = _serve_once(lab, svc)  # the same settings: its state directory is taken
    assert cp.returncode == 1 and "another service uses the state directory" in cp.stderr
    assert svc.connectable() and svc.socket_path.is_socket()


SQUATTER = r"""
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path); os.chmod(path, 0o666); s.listen(4); s.settimeout(15)
open(out + ".ready", "w").close()
got = b""
try:
    c, _ = s.accept()
    c.settimeout(3)
    try:
        got = c.recv(65536)
    except (TimeoutError, OSError):
        pass
finally:
    with open(out, "w") as f:
        f.write(repr(got))
"""


def test_client_refuses_a_socket_not_served_by_root(lab: Lab, user: User) -> None:
    """A user plants a socket; another user's client must not send it anything."""
    victim = lab.add_user("isvv")
    squat_dir = lab.make_dir("squat", mode=0o1777)
    sock_path, out = squat_dir / "service", squat_dir / "got"
    proc = lab.popen_client([PYTHON, "-I", "-c", SQUATTER, str(sock_path), str(out)],
                            user=user, label="squatter")
    wait_for(lambda: Path(str(out) + ".ready").exists(), 10, what="squatter ready")
    cp = lab.run_client([ISERVICE, "start", "--socket", str(sock_path), "--workdir", "/",
                         "--stdin", "secret-password", "--", "--config", "x.ovpn"],
                        user=victim)
    assert cp.returncode == 3, cp.stdout + cp.stderr
    assert "is not served by root" in cp.stderr
    proc.wait(timeout=20)
    assert out.read_text() == "b''"  # nothing, not even the startup message


def test_socket_is_only_a_file_with_the_documented_permissions(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    group = lab.add_group("isvsock")
    member = lab.add_user("isvm", groups=[group])
    svc = make_service(extra=f"socket_mode = 0660\nsocket_group = {group}\n")
    svc.start()
    st = svc.socket_path.stat()
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o660 and st.st_gid != 0
    cp = svc.start_as(user, "--config", "approved.ovpn")
    assert cp.returncode == 3, cp.stdout + cp.stderr  # not in the group: cannot connect
    pid = started_pid(svc.start_as(member, "--config", "approved.ovpn"))
    end(svc, pid)
    # no network listener: every socket of the service is AF_UNIX or AF_NETLINK
    inodes = set()
    fd_dir = Path(f"/proc/{svc.service_pid()}/fd")
    for fd in fd_dir.iterdir():
        try:
            with_target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed meanwhile (a pipe to nft, a connection)
        if with_target.startswith("socket:["):
            inodes.add(with_target[8:-1])
    assert inodes
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        text = Path(f"/proc/{svc.service_pid()}/net/{table}").read_text()
        for line in text.splitlines()[1:]:
            assert line.split()[9] not in inodes, (table, line)
    assert svc.stop() == 0


# -- CVE-2024-27903: approved means nothing if a user can write config_dir -------------

def test_warns_when_config_dir_is_writable_by_a_non_admin(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    quiet = make_service()
    quiet.start()
    assert "insecure-config-dir" not in quiet.log()
    assert quiet.stop() == 0
    loose = lab.make_dir("loose-configs", mode=0o755)
    lab.write_file("loose-configs/ok.ovpn", "client\n")
    lab.write_file("loose-configs/theirs.ovpn", "client\n", owner=user)
    lab.write_file("loose-configs/open.ovpn", "client\n", mode=0o666)
    lab.make_dir("loose-configs/sub", mode=0o777)
    svc = make_service(extra="")
    text = svc.settings_path.read_text().replace(f"config_dir = {lab.config_dir}",
                                                 f"config_dir = {loose}")
    svc.settings_path.write_text(text)
    svc.start()
    warnings = [x for x in svc.log().splitlines() if "event=insecure-config-dir" in x]
    assert len(warnings) == 3, warnings
    assert any("theirs.ovpn" in x and f"uid {user.uid}" in x for x in warnings)
    assert any("open.ovpn" in x and "every user" in x for x in warnings)
    assert any("sub" in x and "every user" in x for x in warnings)
    assert not any("ok.ovpn" in x for x in warnings)
    assert svc.stop() == 0


# -- CVE-2025-13751: local denial of service ---------------------------------------------

FLOOD = r"""
import os, resource, socket, sys, time
path, n, hold, marker = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
kept, t0 = [], time.monotonic()
counts = {"silent": 0, "garbage": 0, "half": 0, "hangup": 0, "failed": 0}
for i in range(n):
    if i == n // 2:
        open(marker, "w").close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError:
        counts["failed"] += 1
        s.close()
        continue
    kind = ("silent", "garbage", "half", "hangup")[i % 4]
    counts[kind] += 1
    try:
        if kind == "garbage":
            s.setblocking(False)
            for _ in range(20):
                s.send(os.urandom(777))
        elif kind == "half":
            s.shutdown(socket.SHUT_WR)
        elif kind == "hangup":
            s.close()
            continue
    except OSError:
        pass
    kept.append(s)
time.sleep(max(0.0, hold - (time.monotonic() - t0)))
for s in kept:
    s.close()
counts["seconds"] = time.monotonic() - t0
print(counts)
"""

TIMED = r"""
import socket, sys, time
path, payload = sys.argv[1], sys.stdin.read()
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(20)
t0 = time.monotonic()
while True:  # as iservice's client does: a full queue is retried, not an error
    try:
        s.connect(path)
        break
    except BlockingIOError:
        time.sleep(0.01)
s.send(payload.encode("utf-16-le"))
r = s.recv(65536)
print(time.monotonic() - t0)
print(r.decode("utf-16-le").replace("\n", "|"))
"""


def test_a_thousand_hostile_connections_do_not_deny_another_user(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    svc = make_service()
    svc.start()
    other = lab.add_user("isvo")
    pid_service = svc.service_pid()
    rss_before = rss_kib(pid_service)
    marker = user.home / f"{svc.name}-half"
    flood = lab.popen_client([PYTHON, "-I", "-c", FLOOD, str(svc.socket_path), "1000", "4",
                              str(marker)], user=user, label="flood")
    peak = [rss_before]

    def sample() -> bool:
        peak[0] = max(peak[0], rss_kib(pid_service))
        return marker.exists()

    wait_for(sample, 30, interval=0.02,
             what=lambda: f"flood half way: {flood.poll()} {flood.output()} "
             f"{Path(str(flood.stderr_path)).read_text()[-2000:]}")
    payload = f"{lab.config_dir}\0--config approved.ovpn\0\0"
    cp = lab.run_client([PYTHON, "-I", "-c", TIMED, str(svc.socket_path)],
                        user=other, timeout=30, input=payload)
    assert cp.returncode == 0, cp.stderr
    seconds_text, reply = cp.stdout.strip().splitlines()
    seconds = float(seconds_text)
    assert reply.startswith("0x00000000|0x") and reply.endswith("|Process ID"), reply
    pid = int(reply.split("|")[1], 16)
    while flood.poll() is None:
        sample()
        time.sleep(0.05)
    assert flood.returncode == 0, Path(str(flood.stderr_path)).read_text()
    counts = eval(flood.output().strip().splitlines()[-1])  # our own dict's repr
    assert sum(counts[k] for k in ("silent", "garbage", "half", "hangup")) >= 990, counts
    rss_after = rss_kib(pid_service)
    log = svc.log()
    Path(lab.base_dir / f"{svc.name}-figures.json").write_text(json.dumps(
        {"seconds_to_pid": seconds, "rss_kib": [rss_before, peak[0], rss_after],
         "counts": counts, "too_many": log.count("event=too-many-clients")}))
    print(f"\nflood: other user's PID after {seconds:.3f}s; RSS KiB before/peak/after "
          f"{rss_before}/{peak[0]}/{rss_after}; refused {log.count('event=too-many-clients')}")
    # 1 s is the target (docs/security.md has the measured figure); allow a loaded CI.
    assert seconds < 3.0
    assert peak[0] - rss_before < 64 * 1024
    assert svc.proc is not None and svc.proc.poll() is None
    assert log.count("event=too-many-clients") > 0
    assert "Traceback" not in log and "session-bug" not in log and "accept-bug" not in log
    end(svc, pid)
    assert svc.connectable()


def test_silent_client_times_out_and_others_are_served_meanwhile(
        lab: Lab, svc: Service, user: User) -> None:
    script = ("import socket,time\n"
              "s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
              f"s.connect({str(svc.socket_path)!r})\n"
              "s.settimeout(6)\nt=time.monotonic()\n"
              "r=s.recv(4096)\nprint(time.monotonic()-t)\n"
              "print(r.decode('utf-16-le').replace(chr(10),'|'))\n")
    silent = lab.popen_client([PYTHON, "-I", "-c", script], user=user, label="silent")
    time.sleep(0.3)
    out = raw_requests(lab, svc, user, [w.encode_startup(w.StartupData("/", "--up x", ""))])
    assert w.decode_reply(out[0]["replies"][0]).code == 0x20000001
    assert out[0]["seconds"] < 1.5
    assert silent.wait(timeout=15) == 0
    seconds, reply = silent.output().strip().splitlines()
    assert reply == "0x20000001|GetStartupData (timeout)|"
    assert 1.5 < float(seconds) < 4


# -- limits and their replies ----------------------------------------------------------

def test_connection_limit_per_user_gets_the_documented_reply(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    svc = make_service(extra="max_clients_per_user = 2\nmax_clients = 3\n")
    svc.start()
    other, third = lab.add_user("isvo"), lab.add_user("isvt")
    script = (
        "import socket,sys,time\n"
        "held=[]\n"
        "for i in range(2):\n"
        "    s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET); s.connect(sys.argv[1])\n"
        "    held.append(s)\n"
        "time.sleep(0.3)\n"
        "s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET); s.settimeout(5)\n"
        "s.connect(sys.argv[1]); r=s.recv(4096)\n"
        "sys.stdout.write(r.hex()); sys.stdout.flush()\n"
        "time.sleep(float(sys.argv[2]))\n")
    cp = lab.run_client([PYTHON, "-I", "-c", script, str(svc.socket_path), "0"], user=user)
    reply = bytes.fromhex(cp.stdout)
    assert reply == w.encode_reply(w.too_many_clients_reply())
    assert reply.decode("utf-16-le").startswith("0x0000022a\nToo many concurrent clients\n")
    # global limit: user holds 2, another holds 1 -> a third user is refused too
    holder = lab.popen_client([PYTHON, "-I", "-c", script, str(svc.socket_path), "3"],
                              user=user, label="holder")
    time.sleep(0.5)
    one = ("import socket,sys,time\n"
           "s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET); s.connect(sys.argv[1])\n"
           "time.sleep(2)\n")
    other_p = lab.popen_client([PYTHON, "-I", "-c", one, str(svc.socket_path)], user=other,
                               label="one")
    time.sleep(0.5)
    out = raw_requests(lab, svc, third, [b"x\0"])
    assert out[0]["replies"] == [w.encode_reply(w.too_many_clients_reply())]
    holder.wait(timeout=20)
    other_p.wait(timeout=20)
    assert any("event=too-many-clients" in x and "verdict=refused" in x
               for x in svc.log().splitlines())
    assert svc.stop() == 0


def test_session_limit_per_user(lab: Lab, make_service: Callable[..., Service],
                                user: User) -> None:
    svc = make_service(extra="max_sessions_per_user = 1\n")
    svc.start()
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    cp = svc.start_as(user, "--config", "approved.ovpn")
    assert cp.returncode == 1
    assert cp.stdout.strip().startswith("error 0x0000022a: Too many sessions for this user")
    other = lab.add_user("isvo")
    pid2 = started_pid(svc.start_as(other, "--config", "approved.ovpn"))
    terminate(pid2, lambda: all(s["info"].get("pid") != pid2
                                for s in svc.journal()["sessions"]))
    end(svc, pid)
    assert svc.stop() == 0


# -- failure injection: a netlink request that fails half-way ------------------------------

def test_kernel_refusal_half_way_leaves_nothing(
        lab: Lab, make_service: Callable[..., Service], user: User, hostile_exe: Path) -> None:
    """The middle route of a batch is refused by the kernel (it exists already, not ours):
    the others are applied, the refused one is not journaled, and at the end the
    admin's route is still there while everything of the session is gone."""
    lab.ns_run(lab.client_ns, ["ip", "route", "add", "10.88.0.0/16", "dev", Lab.client_if])
    try:
        svc = make_service(extra=f"exe_path = {hostile_exe}\n")
        svc.start()
        before = snapshot(lab, svc, user)
        code = r'''
import threading
from ipaddress import IPv4Address
own = m.Interface(tun_index, tun)
msgs = [m.encode_message(m.RouteMsg(m.MsgType.ADD_ROUTE, i, IPv4Address(f"10.{87 + i}.0.0"),
                                    16, IPv4Address("0.0.0.0"), own, -1)) for i in range(3)]
for raw in msgs:          # pipelined: one batch
    chan.send(raw)
acks = []
for _ in msgs:
    a = chan.recv(64)
    acks.append(list(struct.unpack_from("<i", a, 16)) + list(struct.unpack_from("<i", a, 24)))
done(acks=acks)
'''
        lab.write_file(f"{lab.config_dir.name}/halfway.ovpn", code)
        pid = started_pid(svc.start_as(user, "--config", "halfway.ovpn"))
        result = user.home / "halfway.ovpn.result"
        wait_for(result.exists, 10, what=svc.log_tail)
        acks = json.loads(result.read_text())["acks"]
        assert acks == [[0, 0], [1, 5010], [2, 0]]
        session_routes = [r for r in lab.routes(4) if r.get("protocol") == "158"]
        assert sorted(r["dst"] for r in session_routes) == ["10.87.0.0/16", "10.89.0.0/16"]
        # the cgroup, the tun and two routes, not the refused one
        assert svc.journal()["changes"] == 2 + 2
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: snapshot(lab, svc, user) == before, 5,
                 what=lambda: f"{snapshot(lab, svc, user)}\n{before}")
        assert any(r["dst"] == "10.88.0.0/16" for r in lab.routes(4))
        assert svc.stop() == 0
    finally:
        lab.ns_run(lab.client_ns, ["ip", "route", "del", "10.88.0.0/16"], check=False)


# -- the audit trail ------------------------------------------------------------------------

def test_audit_trail_answers_who_changed_this_route_and_when(lab: Lab, svc: Service,
                                                             user: User) -> None:
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    wait_for(lambda: any(r.get("protocol") == "158" and r["dst"] == "10.9.0.0/16"
                         for r in lab.routes(4)), 15, what=svc.log_tail)
    refused = svc.start_as(user, "--config", "approved.ovpn", "--up", "/bin/sh")
    assert refused.returncode == 1
    end(svc, pid)
    lines = svc.log().splitlines()
    request = [x for x in lines if "event=request" in x]
    started = [x for x in lines if "event=started" in x]
    route = [x for x in lines if "verdict=applied" in x and "add_route dst=10.9.0.0/16" in x]
    denied = [x for x in lines if "event=refused" in x]
    assert len(request) == 2 and len(started) == 1 and len(route) == 1 and len(denied) == 1
    for x in (*request, *started, *route, *denied):
        assert f"uid={user.uid} " in x and "client_pid=" in x
        assert x[:4].isdigit()  # the log line's own timestamp: "when"
    assert "verdict=allowed" in started[0] and f"pid={pid}" in started[0]
    assert f"pid={pid}" in route[0] and "session=" in route[0]
    assert "verdict=refused" in denied[0] and "--up" in denied[0] and "reason=" in denied[0]
    assert "options=" in request[1] and "--up" in request[1]


def test_audit_values_cannot_forge_lines(lab: Lab, svc: Service, user: User) -> None:
    evil = "--config x\n2026-01-01 00:00:00 INFO iservice.audit: event=started uid=0"
    out = raw_requests(lab, svc, user, [w.encode_startup(w.StartupData("/", evil, ""))])
    assert w.decode_reply(out[0]["replies"][0]).code == 0x20000001
    log = svc.log()
    assert not any(x.startswith("2026-01-01") for x in log.splitlines())
    forged = re.compile(r"\d{4}-\d\d-\d\d \S+ \w+ [\w.]+: event=started ")
    assert not any(forged.match(x) for x in log.splitlines())
    request = next(x for x in log.splitlines() if "event=request" in x)
    assert '\\n2026-01-01' in request  # the newline is shown escaped, inside the value


def test_service_survives_clients_that_vanish_mid_reply(lab: Lab, svc: Service,
                                                        user: User) -> None:
    script = ("import socket,sys\n"
              "for i in range(200):\n"
              "    s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
              "    s.connect(sys.argv[1])\n"
              "    s.send(('/\\0--up x\\0\\0').encode('utf-16-le'))\n"
              "    s.close()\n")
    cp = lab.run_client([PYTHON, "-I", "-c", script, str(svc.socket_path)], user=user)
    assert cp.returncode == 0, cp.stderr
    # each is refused, or turned away by the per-user connection limit
    wait_for(lambda: svc.log().count("event=refused") + svc.log().count("too-many-clients")
             >= 200, 10, what=svc.log_tail)
    assert svc.proc is not None and svc.proc.poll() is None and svc.connectable()
    assert "Traceback" not in svc.log()
    assert alive(svc.service_pid())


def test_socket_family_is_unix_seqpacket(svc: Service) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError):
            s.connect(str(svc.socket_path))  # wrong type: EPROTOTYPE
    finally:
        s.close()


# -- audit lines per user: a flood is counted, not written, and hides nobody else's lines ----

REFUSED_FLOOD = r"""
import socket, sys
path, n, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(path)
    s.send(payload)
    while s.recv(65536):
        pass
    s.close()
print(n)
"""
REFUSED = w.encode_startup(w.StartupData("/", "--up x", ""))  # a user's: not allowed
MALFORMED = b"\0"  # refused for anyone, root too (not a startup message)
AUDIT_LIMITS = "audit_rate = 5\naudit_burst = 60\n"


def test_one_users_flood_of_refused_requests_hides_no_one_elses_lines(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    svc = make_service(extra=AUDIT_LIMITS)
    svc.start()
    other = lab.add_user("isvo")
    flood_n = 2000
    t0 = time.monotonic()
    flood = lab.popen_client([PYTHON, "-I", "-c", REFUSED_FLOOD, str(svc.socket_path),
                              str(flood_n), REFUSED.hex()], user=user, label="audit-flood")
    # meanwhile another user: ten refused requests and a real session
    wait_for(lambda: svc.log().count(f"uid={user.uid} ") >= 60, 30, what=svc.log_tail)
    overlapped = flood.poll() is None  # (shown, not asserted: a loaded machine may differ)
    raw_requests(lab, svc, other, [REFUSED] * 10)
    pid = started_pid(svc.start_as(other, "--config", "approved.ovpn"))
    wait_for(lambda: any("add_route dst=10.9.0.0/16" in x
                         for x in audit_lines(svc.log(), other.uid)), 15, what=svc.log_tail)
    end(svc, pid)
    # and root (an admin: only a malformed request is refused), never limited
    cp = lab.run_client([PYTHON, "-I", "-c", REFUSED_FLOOD, str(svc.socket_path), "100",
                         MALFORMED.hex()])
    assert cp.returncode == 0, cp.stderr
    assert flood.wait(timeout=120) == 0, Path(str(flood.stderr_path)).read_text()
    seconds = time.monotonic() - t0
    assert svc.stop() == 0  # the stop writes the summaries not yet due
    log = svc.log()
    # the flooding user: every line written or counted, and not more written than allowed
    written = audit_lines(log, user.uid)
    left_out = suppressed(log, user.uid)
    assert left_out, "no audit-suppressed line"
    by_event = {e: sum(1 for x in written if f"event={e} " in x) for e in ("request", "refused")}
    assert by_event["request"] + left_out.get("request", 0) == flood_n
    assert by_event["refused"] + left_out.get("refused", 0) == flood_n
    assert set(left_out) <= {"request", "refused"}
    assert len(written) <= 60 + 5 * seconds + 1
    # the other user: all of its lines are there, nothing of theirs was left out
    theirs = audit_lines(log, other.uid)
    assert suppressed(log, other.uid) == {}
    assert sum(1 for x in theirs if "event=refused" in x) == 10
    for event in ("event=started ", "event=exited ", "event=undone "):
        assert sum(1 for x in theirs if event in x) == 1, (event, theirs)
    assert sum(1 for x in theirs if "event=request " in x) == 11
    # root: 100 lines, more than any user's burst, all written
    roots = audit_lines(log, 0)
    assert sum(1 for x in roots if "event=refused" in x) == 100 and suppressed(log, 0) == {}
    print(f"\naudit flood: {flood_n} refused requests in {seconds:.1f}s (other user during "
          f"the flood: {overlapped}); user's lines written {len(written)}, left out "
          f"{sum(left_out.values())} ({left_out})")
    print("\n".join(x for x in log.splitlines() if "event=audit-suppressed" in x))


def test_a_flood_of_control_requests_is_rate_limited_like_startup_requests(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    """Every control request is an audit line (``event=control``), under the user's rate
    limit: a user's flood of requests is written up to the limit and counted beyond it,
    not stored line by line in the journal."""
    svc = make_service(extra=AUDIT_LIMITS)
    svc.start()
    flood_n = 300
    request = encode_request(Request("sessions"))
    t0 = time.monotonic()
    cp = lab.run_client([PYTHON, "-I", "-c", REFUSED_FLOOD,
                         str(svc.socket_path.parent / "control"), str(flood_n), request.hex()],
                        user=user, timeout=120)
    assert cp.returncode == 0, cp.stderr
    seconds = time.monotonic() - t0
    assert svc.stop() == 0  # the stop writes the summaries not yet due
    log = svc.log()
    written = [x for x in audit_lines(log, user.uid) if "event=control " in x]
    assert written and all(" what=sessions" in x for x in written), written[:3]
    left_out = suppressed(log, user.uid)
    assert len(written) + left_out.get("control", 0) == flood_n, (len(written), left_out)
    assert len(written) <= 60 + 5 * seconds + 1


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_openvpn_ending_while_its_routes_are_in_the_monitor_harms_no_other_session(
        lab: Lab, make_service: Callable[..., Service], user: User, hostile_exe: Path,
        ending: str) -> None:
    """openvpn (the user's) sends routes and ends at once, while its batches are still
    being applied: the session's wait for them is cancelled.  The monitor finishes the
    batches all the same, the session is undone completely, and the next session of
    anyone starts and gets its routes (a cancelled wait once made the monitor thread die
    on the result it could no longer deliver: every later request hung)."""
    svc = make_service(extra=f"exe_path = {hostile_exe}\n")
    svc.start()
    code = r'''
import os, signal
from ipaddress import IPv4Address
own = m.Interface(tun_index, tun)
for i in range(700):   # two batches (512 + 188): the second waits for the first
    chan.send(m.encode_message(m.RouteMsg(m.MsgType.ADD_ROUTE, i + 1,
        IPv4Address((100 << 24 | 80 << 16) + 4 * i), 30, IPv4Address(0), own, -1)))
os.kill(os.getpid(), signal.SIGKILL) if "kill" in tun_note else os._exit(0)
'''
    other = lab.add_user("isvn")
    for k in range(5):  # the race is not hit every time: several tries
        lab.write_file(f"{lab.config_dir.name}/ending{k}.ovpn",
                       f"tun_note = {ending!r}\n" + code)
        started_pid(svc.start_as(user, "--config", f"ending{k}.ovpn"))
        wait_for(lambda: not svc.journal()["sessions"] and not svc.tuns(), 20,
                 what=svc.log_tail)
    assert "Exception in thread monitor" not in svc.log(), svc.log_tail()
    # the monitor still serves: another user's session starts, applies and ends
    lab.write_file(f"{lab.config_dir.name}/after.ovpn", r'''
from ipaddress import IPv4Address
own = m.Interface(tun_index, tun)
done(ack=send(m.encode_message(m.RouteMsg(m.MsgType.ADD_ROUTE, 1,
    IPv4Address("100.81.0.0"), 24, IPv4Address(0), own, -1))))
''')
    pid = started_pid(svc.start_as(other, "--config", "after.ovpn"))
    result = other.home / "after.ovpn.result"
    wait_for(result.exists, 20, what=svc.log_tail)
    assert json.loads(result.read_text())["ack"] == [1, 0]
    end(svc, pid)
    assert svc.stop() == 0


def test_an_admins_fifo_config_does_not_hold_up_anyones_start(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    """An admin may name any file as ``--config``, a FIFO too.  The service reads the
    config as the user (for the facts it watches) in one of the few check slots every
    start needs: a plain ``open`` waited for a writer that never came, and two such
    requests held every user's start.  Now a FIFO is not read (``facts._read_config``)."""
    svc = make_service(extra="exe_path = /bin/true\n")
    svc.start()
    admin = lab.add_user("isva", groups=[svc.admin_group])
    fifo = admin.home / "fifo.ovpn"
    os.mkfifo(fifo)
    os.chown(fifo, admin.uid, admin.gid)
    for _ in range(3):  # more than the check slots (identity.FS_USER_THREADS = 2)
        started_pid(svc.start_as(admin, "--config", str(fifo), "--verb", "3", timeout=20))
    started_pid(svc.start_as(user, "--config", "approved.ovpn", timeout=20))
    wait_for(lambda: not svc.journal()["sessions"], 10, what=svc.log_tail)


def test_a_channel_flood_is_counted_per_event(
        lab: Lab, make_service: Callable[..., Service], user: User, hostile_exe: Path) -> None:
    """A hostile openvpn's denied messages (a line each) and applied routes (lines per
    batch, ``record_lines``): every one is written or counted in audit-suppressed."""
    svc = make_service(extra=f"exe_path = {hostile_exe}\n{AUDIT_LIMITS}")
    svc.start()
    code = r'''
from ipaddress import IPv4Address
own = m.Interface(tun_index, tun)
lo = m.Interface(1, "lo")
def route(i, iface):
    return m.encode_message(m.RouteMsg(m.MsgType.ADD_ROUTE, i,
        IPv4Address((100 << 24 | 64 << 16) + 64 * i), 26, IPv4Address(0), iface, -1))
msgs = [route(i, own if i % 5 < 2 else lo) for i in range(5000)]   # 2000 ok, 3000 denied
acks = {}
for start in range(0, len(msgs), 100):
    for raw in msgs[start:start + 100]:
        chan.send(raw)
    for _ in msgs[start:start + 100]:
        a = chan.recv(64)
        err = struct.unpack_from("<i", a, 24)[0]
        acks[err] = acks.get(err, 0) + 1
done(acks=acks)
'''
    lab.write_file(f"{lab.config_dir.name}/auditflood.ovpn", code)
    pid = started_pid(svc.start_as(user, "--config", "auditflood.ovpn"))
    result = user.home / "auditflood.ovpn.result"
    wait_for(result.exists, 60, what=svc.log_tail)
    acks = json.loads(result.read_text())["acks"]
    assert acks == {"0": 2000, "5": 3000}, acks
    end(svc, pid)
    assert svc.stop() == 0
    log = svc.log()
    written = audit_lines(log, user.uid)
    left_out = suppressed(log, user.uid)
    applied = sum(1 for x in written if "event=applied " in x and "add_route" in x)
    denied = sum(1 for x in written if "event=denied " in x)
    assert applied + left_out.get("applied", 0) == 2000, (applied, left_out)
    assert denied + left_out.get("denied", 0) == 3000, (denied, left_out)
    assert left_out.get("applied", 0) > 0 and left_out.get("denied", 0) > 0
