"""Isolation: a user controls their openvpn completely (docs/security.md "Threat model").

The user's openvpn runs as them: they can ptrace it, make it send anything, fork from
it, and call any ioctl a tun owner may call (TUNSETOWNER, TUNSETPERSIST, attaching more
processes).  A test double (tests/hostile_openvpn.py, run by the service as exe_path
with the user's rights, exactly like openvpn) plays that openvpn; each case checks that
nothing it changes in the kernel decides what undo removes, that every process it
starts ends with its session (also after the service was killed), that no user takes
another's routes, and that one session's flood does not stall another user's start.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.isv import PYTHON, Service, live_pids, wait_for
from tests.lab import Lab, User

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

DENIED, EXISTS, QUOTA = 5, 5010, 1816

COMMON = r'''
import fcntl, os, struct, time
from ipaddress import IPv4Address, IPv6Address
I = m.Interface
own = I(tun_index, tun)
unset = I(m.IFACE_INDEX_INVALID, "")
T = m.MsgType
enc = m.encode_message
TUNSETIFF, TUNSETOWNER, TUNSETPERSIST = 0x400454CA, 0x400454CC, 0x400454CB
def attach():
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", tun.encode(), 0x1001))
    return fd
def addr(a, p, iface=own, t=T.ADD_ADDRESS, mid=7):
    return enc(m.AddressMsg(t, mid, IPv4Address(a), p, iface))
def route(a, p, gw="0.0.0.0", iface=own, t=T.ADD_ROUTE, mid=7, metric=-1):
    return enc(m.RouteMsg(t, mid, IPv4Address(a), p, IPv4Address(gw), iface, metric))
def block(flags, mid=9):
    return enc(m.WfpBlockMsg(T.ADD_WFP_BLOCK, mid, flags, own))
'''


@pytest.fixture
def hostile(lab: Lab, make_service: Callable[..., Service],
            hostile_exe: Path) -> Iterator[Callable[..., Service]]:
    """Services that start the hostile stand-in as openvpn."""
    made: list[Service] = []

    def make(extra: str = "") -> Service:
        s = make_service(extra=f"exe_path = {hostile_exe}\n" + extra)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        if s.proc is not None and s.proc.poll() is None:
            assert s.stop() == 0, s.log_tail()
        assert s.tuns() == [], s.log_tail()


def start_scenario(lab: Lab, svc: Service, user: User, name: str, code: str) -> int:
    lab.write_file(f"client/{name}", COMMON + code)
    cp = svc.start_as(user, "--config", name)
    assert cp.returncode == 0, cp.stdout + cp.stderr + svc.log_tail()
    return int(cp.stdout.split()[-1])


def result(svc: Service, user: User, name: str, pid: int,
           timeout: float = 15) -> dict[str, Any]:
    path = user.home / f"{name}.result"
    wait_for(lambda: path.exists(), timeout, what=f"scenario {name}\n{svc.log_tail()}")
    data: dict[str, Any] = json.loads(path.read_text())
    data["pid"] = pid
    return data


def user_pids(user: User) -> list[int]:
    return live_pids(user.uid)


def gone(svc: Service) -> bool:
    return svc.tuns() == [] and svc.journal() == {"sessions": [], "changes": 0}


# -- 1. undo by its own records; every process ends with its session ------------------

def test_reowned_tun_is_still_deleted_with_its_routes(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    other = lab.add_user("isvo")
    svc = hostile()
    code = f"""
fd = attach()
r = dict(addr=send(addr("10.66.0.1", 24)), route=send(route("10.67.0.0", 16)))
fcntl.ioctl(fd, TUNSETOWNER, {other.uid})
fcntl.ioctl(fd, TUNSETPERSIST, 1)
r["owner"] = open(f"/sys/class/net/{{tun}}/owner").read().strip()
done(**r)
os._exit(0)
"""
    pid = start_scenario(lab, svc, user, "reown.ovpn", code)
    r = result(svc, user, "reown.ovpn", pid)
    assert r["addr"] == [7, 0] and r["route"] == [7, 0]
    assert r["owner"] == str(other.uid)  # the kernel let the tun's owner give it away
    wait_for(lambda: gone(svc), 5, what=f"undo of a re-owned tun\n{svc.log_tail()}")
    assert not any(x["dst"] == "10.67.0.0/16" for x in lab.routes(4))
    assert "tun-not-ours" not in svc.log()


def test_forked_children_end_with_the_session(lab: Lab, hostile: Callable[..., Service],
                                              user: User) -> None:
    svc = hostile()
    code = """
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork():
            os._exit(0)
        fd = attach() if not kids else None  # the first grandchild holds the tun
        while True:
            time.sleep(1)
    os.waitpid(pid, 0)
    kids.append(pid)
time.sleep(0.2)
done(kids=kids)
"""
    pid = start_scenario(lab, svc, user, "fork.ovpn", code)
    result(svc, user, "fork.ovpn", pid)
    procs = user_pids(user)
    assert len(procs) >= 3  # openvpn's stand-in and two daemons it left
    os.kill(pid, signal.SIGKILL)  # openvpn dies; its daemons would live on
    wait_for(lambda: gone(svc) and user_pids(user) == [], 5,
             what=f"every process of the session ended: {user_pids(user)}\n{svc.log_tail()}")


def test_killed_service_leaves_no_process_of_a_session(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    """No window: the cgroup is journaled before openvpn exists, so a service killed at
    any moment after the PID reply (here: as soon as openvpn's pid, which the reply
    follows, is in the journal) ends everything at its next start."""
    svc = hostile()
    code = """
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(1)
done(ok=1)
"""
    lab.write_file("client/window.ovpn", COMMON + code)
    proc = lab.popen_client(svc.start_cmd("--config", "window.ovpn"), user=user)
    # (not just the session: it is journaled before its cgroup, tun and openvpn exist,
    # and a kill in that window leaves nothing to end — 2 of 20 runs on a busy host)
    wait_for(lambda: any(s["info"].get("pid") for s in svc.journal()["sessions"]), 5,
             what="openvpn's pid journaled")
    svc.kill9()
    proc.wait(timeout=10)
    wait_for(lambda: len(user_pids(user)) >= 2, 5, what="the stand-in and its daemon")
    svc.start()
    wait_for(lambda: "event=recovered" in svc.log(), 5, what=svc.log_tail())
    wait_for(lambda: user_pids(user) == [] and gone(svc), 5,
             what=f"leftovers {user_pids(user)}\n{svc.log_tail()}")
    assert "killed=True" in svc.log()


def test_a_second_service_in_the_namespace_leaves_the_firsts_session_alone(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    """Two services with the same instance name ("") but their own state directories:
    the second's orphan sweep at its start must not take the first's live tun for one
    of its own leftovers (marks name the state directory, not only the instance)."""
    first = hostile()
    code = """
r = dict(addr=send(addr("10.68.0.1", 24)), route=send(route("10.69.0.0", 16)))
done(**r)
"""
    pid = start_scenario(lab, first, user, "held.ovpn", code)
    assert result(first, user, "held.ovpn", pid)["route"] == [7, 0]
    (tun,) = first.tuns()
    second = hostile()
    wait_for(lambda: "event=ready" in second.log(), 5,
             what=second.log_tail())
    assert first.tuns() == [tun], second.log_tail()
    assert any(x["dst"] == "10.69.0.0/16" for x in lab.routes(4))
    assert "orphan" not in second.log(), second.log_tail()
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: gone(first), 5, what=first.log_tail())


def test_a_process_attached_from_outside_changes_nothing_undo_removes(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile()
    pid = start_scenario(lab, svc, user, "plain.ovpn",
                         'done(addr=send(addr("10.66.0.1", 24)))\n')
    result(svc, user, "plain.ovpn", pid)
    [tun] = svc.tuns()
    # The user's own process, outside the session: attaches, re-owns, unpersists.
    outside = f"""
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"{tun}", 0x1001))
fcntl.ioctl(fd, 0x400454CC, 0)
fcntl.ioctl(fd, 0x400454CB, 0)
print("attached", flush=True)
time.sleep(60)
"""
    holder = lab.popen_service([PYTHON, "-I", "-c", outside], user=user, label="holder")
    wait_for(lambda: "attached" in Path(str(holder.stdout_path)).read_text(), 5,
             what="the outside process attached")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc), 5, what=f"undo with an outside holder\n{svc.log_tail()}")
    assert holder.poll() is None  # not the session's: the service does not touch it
    holder.end()


# -- 2. routes belong to whoever was acknowledged first ---------------------------------

def _routes_code(*routes: tuple[str, int]) -> str:
    sends = ", ".join(f'"{a}/{p}": send(route("{a}", {p}))' for a, p in routes)
    return f'done(**{{{sends}}})\n'


def test_no_user_takes_another_users_routes_in_either_order(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile()
    bob = lab.add_user("isvb")
    a = start_scenario(lab, svc, user, "a.ovpn", _routes_code(("10.50.0.0", 16),
                                                              ("10.61.1.0", 24)))
    ra = result(svc, user, "a.ovpn", a)
    assert ra["10.50.0.0/16"] == [7, 0] and ra["10.61.1.0/24"] == [7, 0]
    b = start_scenario(lab, svc, bob, "b.ovpn", _routes_code(
        ("10.50.1.0", 24),  # inside alice's route: it would take part of her traffic
        ("10.50.0.0", 16),  # exactly hers
        ("10.61.0.0", 16),  # wider than hers: takes nothing (hers is more specific)
        ("10.62.0.0", 16)))  # nobody's
    rb = result(svc, bob, "b.ovpn", b)
    assert rb["10.50.1.0/24"] == [7, DENIED]
    assert rb["10.50.0.0/16"] == [7, EXISTS]
    assert rb["10.61.0.0/16"] == [7, 0] and rb["10.62.0.0/16"] == [7, 0]
    # alice's traffic for her /24 still goes into her tunnel, bob's /16 changes nothing
    via = lab.run_client(["ip", "-j", "route", "get", "10.61.1.5"]).stdout
    assert json.loads(via)[0]["dev"] == tun_of(svc, user)
    via = lab.run_client(["ip", "-j", "route", "get", "10.61.2.5"]).stdout
    assert json.loads(via)[0]["dev"] == tun_of(svc, bob)
    log = svc.log()
    assert "verdict=denied" in log and "would take part of a route of session" in log
    os.kill(a, signal.SIGKILL)
    os.kill(b, signal.SIGKILL)
    wait_for(lambda: gone(svc), 5, what=svc.log_tail())


def tun_of(svc: Service, user: User) -> str:
    [tun] = [s["info"]["tun"] for s in svc.journal()["sessions"] if s["uid"] == user.uid]
    return str(tun)


def test_bypass_route_to_another_sessions_server_is_refused(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile()
    bob = lab.add_user("isvb")
    gw = lab.server_addr  # the client namespace's default gateway
    a = start_scenario(lab, svc, user, "srv-a.ovpn",
                       f'done(r=send(route("192.0.2.77", 32, "{gw}", unset)))\n')
    assert result(svc, user, "srv-a.ovpn", a)["r"] == [7, 0]
    b = start_scenario(lab, svc, bob, "srv-b.ovpn", 'done(tun=send(route("192.0.2.77", 32)), '
                       'wide=send(route("192.0.2.0", 24)))\n')
    rb = result(svc, bob, "srv-b.ovpn", b)
    assert rb["tun"] == [7, EXISTS]  # the same host through bob's tunnel: hers
    assert rb["wide"] == [7, 0]  # her /32 stays more specific
    os.kill(a, signal.SIGKILL)
    os.kill(b, signal.SIGKILL)
    wait_for(lambda: gone(svc), 5, what=svc.log_tail())


def test_admins_keep_the_originals_semantics(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile()
    admin = lab.add_user("isva", groups=[svc.admin_group])
    a = start_scenario(lab, svc, user, "u.ovpn", _routes_code(("10.55.0.0", 16)))
    assert result(svc, user, "u.ovpn", a)["10.55.0.0/16"] == [7, 0]
    b = start_scenario(lab, svc, admin, "adm.ovpn", _routes_code(("10.55.9.0", 24)))
    assert result(svc, admin, "adm.ovpn", b)["10.55.9.0/24"] == [7, 0]
    # ... but an admin's routes are protected from users like everybody's
    carol = lab.add_user("isvc")
    c = start_scenario(lab, svc, carol, "c.ovpn", _routes_code(("10.55.9.128", 25)))
    assert result(svc, carol, "c.ovpn", c)["10.55.9.128/25"] == [7, DENIED]
    for pid in (a, b, c):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc), 5, what=svc.log_tail())


# -- 4/5. fairness and budgets ------------------------------------------------------

def test_a_flood_of_identical_blocks_does_not_stall_another_users_start(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile()
    code = """
chan.setblocking(True)
acks = []
for i in range(2000):
    chan.send(block(2, mid=i))
for i in range(2000):
    acks.append(struct.unpack_from("<I4xQi4xI", chan.recv(64))[3])
done(errors=sorted(set(acks)), n=len(acks))
"""
    lab.write_file("client/flood.ovpn", COMMON + code)
    flood = lab.popen_client(svc.start_cmd("--config", "flood.ovpn"), user=user)
    bob = lab.add_user("isvb")
    lab.write_file("client/quiet.ovpn", COMMON + "done(ok=1)\n")
    wait_for(lambda: svc.journal()["sessions"], 5, what="the flood's session")
    t0 = time.monotonic()
    cp = svc.start_as(bob, "--config", "quiet.ovpn")
    took = time.monotonic() - t0
    assert cp.returncode == 0, cp.stderr
    assert took < 5, f"another user's start waited {took:.1f} s behind the flood"
    flood_pid = next(s["info"]["pid"] for s in svc.journal()["sessions"]
                     if s["uid"] == user.uid)
    r = result(svc, user, "flood.ovpn", flood_pid, timeout=60)
    assert r == {"errors": [0], "n": 2000, "pid": flood_pid}
    # one table was made, and nothing ran for the 1,999 that changed nothing
    tables = lab.run_service(["nft", "list", "tables"]).stdout
    assert tables.count("iservice_") == 1
    flood.wait(timeout=10)
    os.kill(flood_pid, signal.SIGKILL)
    os.kill(int(cp.stdout.split()[-1]), signal.SIGKILL)
    wait_for(lambda: gone(svc), 10, what=svc.log_tail())


def test_a_flood_of_server_changes_is_paced_and_the_last_one_counts(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    """openvpn's output names the VPN server; each change is an nft run in the thread all
    sessions share, so a flood of them is coalesced and paced (session.SERVERS_PACE):
    the kill switch must still end up letting exactly the last server through."""
    svc = hostile()
    code = """
chan.setblocking(True)
chan.send(block(2))
r = struct.unpack_from("<I4xQi4xI", chan.recv(64))[3]
for i in range(3000):
    print(f"2026-12-06 00:00:00 TCP/UDP: link remote: [AF_INET]192.0.2.{1 + i % 200}:1194")
print("2026-12-06 00:00:00 TCP/UDP: link remote: [AF_INET]198.51.100.7:1194", flush=True)
done(block=r)
"""
    pid = start_scenario(lab, svc, user, "servers.ovpn", code)
    assert result(svc, user, "servers.ovpn", pid)["block"] == 0

    def table() -> str:
        names = [n for n in lab.run_service(["nft", "list", "tables"]).stdout.split()
                 if n.startswith("iservice_")]
        return "".join(lab.run_service(["nft", "list", "table", "inet", n]).stdout
                       for n in names)
    wait_for(lambda: "198.51.100.7" in table(), 5, what=f"{table()}\n{svc.log_tail()}")
    time.sleep(3 * 0.1)  # a paced update still due would land now
    assert "198.51.100.7" in table() and "192.0.2.200" in table()  # the last two
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc), 10, what=svc.log_tail())


def test_route_and_address_budgets_are_per_user(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile("max_routes_per_user = 5\nmax_addresses_per_user = 1\n")
    a = start_scenario(lab, svc, user, "b1.ovpn", _routes_code(
        *[(f"10.71.{i}.0", 24) for i in range(3)]))
    ra = result(svc, user, "b1.ovpn", a)
    assert all(v == [7, 0] for k, v in ra.items() if k != "pid"), ra
    code = ('done(r=[send(route(f"10.72.{i}.0", 24))[1] for i in range(3)], '
            'a=send(addr("10.66.0.1", 24))[1], a2=send(addr("10.66.0.2", 24))[1])\n')
    b = start_scenario(lab, svc, user, "b2.ovpn", code)
    rb = result(svc, user, "b2.ovpn", b)
    assert rb["r"] == [0, 0, QUOTA]  # 3 + 2 = the user's 5
    assert rb["a"] == 0 and rb["a2"] == QUOTA
    # another user has a budget of their own
    bob = lab.add_user("isvb")
    c = start_scenario(lab, svc, bob, "b3.ovpn", code.replace("10.72", "10.73"))
    assert result(svc, bob, "b3.ovpn", c)["r"] == [0, 0, 0]
    for pid in (a, b, c):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc), 5, what=svc.log_tail())


def test_pending_connections_are_limited_per_user_not_by_live_sessions(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    svc = hostile("max_clients = 3\nmax_clients_per_user = 2\n")
    lab.write_file("client/idle.ovpn", COMMON + "done(ok=1)\n")
    # live sessions do not count: four of them, more than max_clients
    pids = [int(svc.start_as(user, "--config", "idle.ovpn").stdout.split()[-1])
            for _ in range(4)]
    # a user holding connections open without a request fills only their own share
    hold = ("import socket, time, sys\n"
            "ss = []\n"
            "for _ in range(3):\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            f"    s.connect({str(svc.socket_path)!r})\n"
            "    ss.append(s)\n"
            "print('held', flush=True)\n"
            "r = ss[2].recv(4096)\n"
            "print(r.decode('utf-16-le').split(chr(10))[0], flush=True)\n"
            "time.sleep(1.5)\n")
    bob = lab.add_user("isvb")
    holder = lab.popen_client([PYTHON, "-I", "-c", hold], user=bob, label="holder")
    wait_for(lambda: "0x0000022a" in Path(str(holder.stdout_path)).read_text(), 5,
             what="bob's third pending connection refused")
    cp = svc.start_as(user, "--config", "idle.ovpn")  # the other user is still served
    assert cp.returncode == 0, cp.stdout + cp.stderr
    holder.wait(timeout=10)
    for pid in [*pids, int(cp.stdout.split()[-1])]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc), 10, what=svc.log_tail())


# -- 3. route_scope = user: the far end of a tunnel cannot reach the machine's loopback --

def test_per_user_dns_redirect_does_not_open_the_loopback_to_the_tunnel(
        lab: Lab, hostile: Callable[..., Service], user: User) -> None:
    """A per-user session's tun accepts loopback-sourced packets (the user's redirected
    DNS queries to a resolver on 127.0.0.53 need it); a packet that *arrives* on the tun
    for a loopback address (what a hostile VPN server could send) is dropped unless it
    is the reply of such a query.  The stand-in writes both kinds into its tun."""
    svc = hostile("route_scope = user\n")
    listener = r"""
import socket, sys
socks = []
for addr, port in (("127.0.0.1", 5555), ("0.0.0.0", 5556)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(4)
    socks.append((port, s))
print("ready", flush=True)
for port, s in socks:
    try:
        data, src = s.recvfrom(100)
        print(port, data.decode(), flush=True)
    except TimeoutError:
        print(port, "nothing", flush=True)
"""
    heard = lab.popen_service([PYTHON, "-I", "-c", listener], label="loopback-listener")
    wait_for(lambda: "ready" in Path(str(heard.stdout_path)).read_text(), 5, what="listener")
    code = r'''
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
def udp(src, dst, port, payload):
    body = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + body
r = dict(addr=send(addr("10.66.0.2", 24)),
         dns=send(enc(m.DnsCfgMsg(T.ADD_DNS_CFG, 8, own, "", socket.AF_INET,
                                  (IPv4Address("10.66.0.1"),)))))
fd = attach()
time.sleep(0.2)
os.write(fd, udp("10.66.0.1", "127.0.0.1", 5555, b"to-loopback"))
os.write(fd, udp("10.66.0.1", "10.66.0.2", 5556, b"to-the-tun"))
done(**r)
'''
    pid = start_scenario(lab, svc, user, "guard.ovpn", code)
    r = result(svc, user, "guard.ovpn", pid)
    assert r["addr"] == [7, 0] and r["dns"] == [8, 0], svc.log_tail()
    assert heard.wait(timeout=15) == 0
    out = Path(str(heard.stdout_path)).read_text().split("\n")
    assert "5555 nothing" in out, out  # dropped by the guard
    assert "5556 to-the-tun" in out, out  # the way in works: the drop is the guard's
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc), 5, what=svc.log_tail())
