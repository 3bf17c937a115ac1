"""The service end to end (issue 3): real openvpn, real netlink, unprivileged users.

Lab: two network namespaces joined by a veth; a real openvpn server in one; the
service in the other (private mount namespace, 0666 /dev/net/tun); lab users
created and removed by the tests; an approved config in config_dir.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.isv import ISERVICE, PYTHON, Service, Services, alive, pid_user, wait_for
from tests.lab import Lab, Pki, User

from iservice.wire import startup as w

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

PUSH = ('push "route 10.9.0.0 255.255.0.0"\n'
        'push "route-ipv6 fd00:9::/64"\n')
HOSTILE_SRC = Path(__file__).resolve().parent.parent / "hostile_openvpn.py"


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server(PUSH)
        lab.write_client_config("approved.ovpn")
        lab.write_client_config("broken.ovpn", "no-such-option-at-all yes")
        lab.write_client_config("persist.ovpn", "persist-tun")
        yield lab


@pytest.fixture
def make_service(lab: Lab) -> Iterator[Callable[..., Service]]:
    """Services made by a test; each is stopped at teardown, whatever the test did.

    A service a test killed is started once more so that its recovery removes
    what it left (a failing test must not leave devices for the next one).
    """
    services = Services(lab)
    yield services.make
    services.close()


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Iterator[Service]:
    s = make_service()
    s.start()
    yield s
    s.finish()


@pytest.fixture
def user(lab: Lab) -> User:
    return lab.add_user()


def started_pid(cp: Any) -> int:
    assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}"
    return int(cp.stdout.strip())


def tunnel_up(lab: Lab, svc: Service, pid: int, timeout: float = 15) -> str:
    """Wait until the session's routes are in the kernel; returns its tun."""
    def ready() -> str | None:
        for tun in svc.tuns():
            if any(r.get("dev") == tun and r["dst"] == "10.9.0.0/16" for r in lab.routes(4)) \
                    and any(r.get("dev") == tun and r["dst"] == "fd00:9::/64"
                            for r in lab.routes(6)):
                return tun
        return None
    return str(wait_for(ready, timeout, what=f"tunnel of openvpn {pid}\n{svc.log_tail()}"))


def our_routes(lab: Lab) -> list[dict[str, Any]]:
    return [r for fam in (4, 6) for r in lab.routes(fam) if r.get("protocol") == "158"]


# -- the central loop ----------------------------------------------------------

def test_unprivileged_user_brings_a_tunnel_up(lab: Lab, svc: Service, user: User) -> None:
    before4, before6 = lab.routes(4), lab.routes(6)
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    # openvpn runs as the user, not root.  The PID reply may come while the process is
    # still setpriv taking the user's identity (~0.5 ms; linux/launch.py).
    wait_for(lambda: pid_user(pid) == user.uid, 2, what="openvpn as the user")
    tun = tunnel_up(lab, svc, pid)
    link = lab.link(tun)
    assert link is not None and link["mtu"] == 1500 and "UP" in link["flags"]
    addrs = {(a["family"], a["local"], a["prefixlen"]) for a in lab.addrs(tun)}
    assert ("inet", "10.8.0.2", 24) in addrs or any(a[0] == "inet" and a[2] == 24 for a in addrs)
    assert any(a[0] == "inet6" and a[1].startswith("fd00:8::") for a in addrs)
    assert lab.ping("10.8.0.1") and lab.ping(Lab.pushed_host) and lab.ping(Lab.pushed_host6)
    # tun owned by the user (SPEC §4)
    owner = lab.ns_run(lab.client_ns, ["cat", f"/sys/class/net/{tun}/owner"]).strip()
    assert int(owner) == user.uid
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not svc.tuns() and svc.journal() == {"sessions": [], "changes": 0}, 5,
             what="tun and journal entries removed after openvpn exit")
    assert lab.routes(4) == before4 and lab.routes(6) == before6


@pytest.mark.parametrize("hook", ["auto", "script"])
def test_plugin_by_default_and_the_script_hook_fallback(
        lab: Lab, make_service: Callable[..., Service], user: User, hook: str) -> None:
    """``hook = auto`` (the default) gives openvpn the plugin; ``hook = script`` the
    Python hook, which must keep working (it is the fallback without a compiler)."""
    svc = make_service(f"hook = {hook}\n")
    svc.start()
    try:
        pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
        tun = tunnel_up(lab, svc, pid)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert lab.ping("10.8.0.1") and lab.ping(Lab.pushed_host6)
        ready = next(line for line in svc.log().splitlines() if "event=ready" in line)
        if hook == "auto":
            assert b"--plugin" in argv and b"--up" not in argv
            assert b"--script-security" not in argv
            assert "hook=plugin" in ready
            logs = "".join(p.read_text(errors="replace") for p in svc.log_dir.glob("*.log"))
            # openvpn prints the plugin's line per event at verb 1
            assert "PLUGIN iservice-plugin: up: " in logs, logs[-2000:]
            assert "PLUGIN iservice-plugin: route-up: " in logs, logs[-2000:]
        else:
            assert b"--plugin" not in argv and b"--route-up" in argv
            assert "hook=script" in ready
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: tun not in svc.tuns() and svc.journal() == {"sessions": [],
                                                                     "changes": 0}, 5,
                 what="tun and journal entries removed after openvpn exit")
    finally:
        svc.finish()


def test_raw_protocol_from_python(lab: Lab, svc: Service, user: User) -> None:
    payload = w.encode_startup(w.StartupData(str(lab.config_dir), "approved.ovpn", ""))
    replies = svc.raw_request(payload, user, read_all=False)
    reply = w.decode_reply(replies[0])
    assert isinstance(reply, w.PidReply)
    assert replies[0] == f"0x00000000\n0x{reply.pid:08x}\nProcess ID".encode("utf-16-le")
    tunnel_up(lab, svc, reply.pid)
    os.kill(reply.pid, signal.SIGKILL)
    wait_for(lambda: not svc.tuns(), 5, what="cleanup")


def test_kill9_of_openvpn_undoes_everything_within_2s(lab: Lab, svc: Service,
                                                      user: User) -> None:
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    tunnel_up(lab, svc, pid)
    assert svc.journal()["changes"] > 0
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: not svc.tuns() and not our_routes(lab) and
             svc.journal() == {"sessions": [], "changes": 0}, 2.0, what="undo within 2 s")
    assert time.monotonic() - t0 < 2.0


def test_sigterm_with_two_sessions(lab: Lab, user: User,
                                   make_service: Callable[..., Service]) -> None:
    svc = make_service()
    svc.start()
    other = lab.add_user()
    pids = [started_pid(svc.start_as(u, "--config", "approved.ovpn")) for u in (user, other)]
    # Both get 10.9.0.0/16 and fd00:9::/64 pushed: the kernel keeps one route per prefix
    # and metric, so the second copies are refused with "exists", as for openvpn as root.
    wait_for(lambda: len(svc.tuns()) == 2 and len(our_routes(lab)) >= 2 and
             all(any(a["family"] == "inet" for a in lab.addrs(t)) for t in svc.tuns()), 15,
             what=lambda: f"two tunnels: {svc.tuns()} {our_routes(lab)}\n{svc.log_tail()}"
             + svc.session_log(2)[-2000:])
    assert svc.stop() == 0, svc.log_tail()
    for pid in pids:
        assert not alive(pid)
    assert svc.tuns() == [] and our_routes(lab) == []
    assert svc.journal() == {"sessions": [], "changes": 0}


def test_leftovers_of_a_killed_service_are_undone_at_start(
        lab: Lab, user: User, make_service: Callable[..., Service]) -> None:
    svc = make_service()
    svc.start()
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    tunnel_up(lab, svc, pid)
    svc.kill9()
    assert svc.tuns() and svc.journal()["sessions"]  # left behind, as the crash leaves it
    svc.start()
    wait_for(lambda: "event=recovered" in svc.log(), 5, what="recovery")
    assert svc.tuns() == [] and our_routes(lab) == []
    assert svc.journal() == {"sessions": [], "changes": 0}
    wait_for(lambda: not alive(pid), 5, what="leftover openvpn ended")
    assert svc.stop() == 0


def test_recovery_leaves_alone_a_tun_it_did_not_make(
        lab: Lab, user: User, make_service: Callable[..., Service]) -> None:
    # The journal names a session's tun before the device exists; a service killed in
    # that window leaves a name that may now belong to someone else's device.
    from iservice.journal import Journal
    svc = make_service()
    svc.state_dir.mkdir(mode=0o700)
    journal = Journal(str(svc.state_dir / "journal.sqlite3"))
    sid = journal.new_session(user.uid, 1, {})
    journal.record(sid, "tun", {"name": f"istun{sid}", "ifindex": None})
    journal.close()
    other = lab.add_user()
    lab.add_tun(f"istun{sid}", other)
    try:
        svc.start()
        wait_for(lambda: "event=recovered" in svc.log(), 5, what=svc.log_tail)
        assert f"istun{sid}" in svc.tuns()  # not ours: left alone
        assert "tun-not-ours" in svc.log()
        assert svc.journal() == {"sessions": [], "changes": 0}
    finally:
        lab.ns_run(lab.client_ns, ["ip", "link", "del", f"istun{sid}"], check=False)
    assert svc.stop() == 0


def test_second_service_on_the_same_socket_refuses_to_start(
        lab: Lab, svc: Service, user: User) -> None:
    # The same settings: refused before it looks at the journal, whose live sessions it
    # would otherwise take for a crash's leftovers and undo.
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    tunnel_up(lab, svc, pid)
    cp = lab.run_service([ISERVICE, "serve", "--settings",
                          str(svc.settings_path)], timeout=20)
    assert cp.returncode != 0
    assert "another service uses the state directory" in cp.stderr
    assert alive(pid) and svc.tuns() and svc.journal()["sessions"]
    # Another state directory, the same socket: refused at the socket.
    other = lab.write_file("other.conf", svc.settings_path.read_text().replace(
        str(svc.state_dir), str(svc.state_dir) + "-other"), mode=0o644)
    cp = lab.run_service([ISERVICE, "serve", "--settings", str(other)], timeout=20)
    assert cp.returncode != 0
    assert "another service already listens" in cp.stderr
    assert svc.connectable() and alive(pid)


# -- refusals ------------------------------------------------------------------

CONFIG_SENTENCE = ('You have specified a config file location ({cfg} relative to {wd}) that '
                   'requires admin approval. This error may be avoided by adding your account '
                   'to the "{group}" group')
OPTION_SENTENCE = ('You have specified an option ({opt}) that may be used only with admin '
                   'approval. This error may be avoided by adding your account to the '
                   '"{group}" group')


def assert_nothing_started(svc: Service, lab: Lab) -> None:
    assert svc.tuns() == []
    assert "event=started" not in svc.log()
    assert svc.journal()["sessions"] == []


def test_refusals_and_admin(lab: Lab, svc: Service, user: User) -> None:
    outside = lab.write_file("elsewhere/own.ovpn", lab.client_config_text())
    wd = str(lab.config_dir)
    cases = [
        (["--config", str(outside)],
         CONFIG_SENTENCE.format(cfg=outside, wd=wd, group=svc.admin_group)),
        (["--config", "approved.ovpn", "--up", "/bin/sh"],
         OPTION_SENTENCE.format(opt="--up", group=svc.admin_group)),
        (["--config", "approved.ovpn", "--setenv", "opt", "--up", "/bin/sh"],
         OPTION_SENTENCE.format(opt="--setenv", group=svc.admin_group)),
    ]
    for options, sentence in cases:
        cp = svc.start_as(user, *options)
        assert cp.returncode == 1, cp.stderr
        assert cp.stdout.strip() == f"error 0x20000001: {sentence}"
    assert_nothing_started(svc, lab)
    # raw: exact reply bytes for one of them
    raw = svc.raw_request(w.encode_startup(w.StartupData(wd, f"--config {outside}", "")), user)
    assert raw == [("0x20000001\n" + cases[0][1] + "\n").encode("utf-16-le")]
    # an admin may do both
    admin = lab.add_user("isva", groups=[svc.admin_group])
    pid = started_pid(svc.start_as(admin, "--config", str(outside), "--verb", "4",
                                   "--setenv", "opt", "--connect-retry", "1"))
    tunnel_up(lab, svc, pid)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not svc.tuns(), 5, what="cleanup")


def test_openvpn_error_exit_is_reported_to_a_waiting_client(lab: Lab, svc: Service,
                                                          user: User) -> None:
    cp = svc.start_as(user, "--config", "broken.ovpn", wait=True)
    lines = cp.stdout.strip().splitlines()
    assert cp.returncode == 1, cp.stderr
    assert int(lines[0]) > 0
    assert lines[1] == "error 0x20000000: OpenVPN exited with error: exit code = 1"
    wait_for(lambda: not svc.tuns() and not svc.journal()["sessions"], 5, what="cleanup")


def test_startup_timeout(lab: Lab, svc: Service, user: User) -> None:
    script = ("import socket\n"
              "s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
              f"s.connect({str(svc.socket_path)!r})\n"
              "s.settimeout(5)\n"
              "print(s.recv(4096).decode('utf-16-le').replace(chr(10),'|'))\n")
    t0 = time.monotonic()
    cp = lab.run_client([PYTHON, "-I", "-c", script], user=user)
    assert cp.stdout.strip() == "0x20000001|GetStartupData (timeout)|"
    assert 1.5 < time.monotonic() - t0 < 5


# -- the channel: hostile openvpn (a test double run as exe_path) ----------------

@pytest.fixture
def hostile(lab: Lab, make_service: Callable[..., Service]) -> Iterator[Service]:
    exe = lab.write_file("bin/hostile-openvpn",
                         f"#!{PYTHON} -I\n" + HOSTILE_SRC.read_text(), mode=0o755)
    s = make_service(extra=f"exe_path = {exe}\n")
    s.start()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        assert s.stop() == 0, s.log_tail()
    assert s.tuns() == []


def run_scenario(lab: Lab, svc: Service, user: User, name: str, code: str,
                 timeout: float = 10) -> dict[str, Any]:
    import json
    lab.write_file(f"client/{name}", code)
    pid = started_pid(svc.start_as(user, "--config", name))
    result = user.home / f"{name}.result"
    wait_for(lambda: result.exists() or not alive(pid), timeout,
             what=f"scenario {name}\n{svc.log_tail()}")
    data: dict[str, Any] = json.loads(result.read_text()) if result.exists() else {}
    data["pid"] = pid
    return data


COMMON = """
from ipaddress import IPv4Address, IPv6Address
I = m.Interface
own = I(tun_index, tun)
other = I(1, "lo")
unset = I(m.IFACE_INDEX_INVALID, "")
def enc(msg):
    return m.encode_message(msg)
def addr(a, p, iface, t=m.MsgType.ADD_ADDRESS, mid=7):
    return enc(m.AddressMsg(t, mid, IPv4Address(a), p, iface))
def route(a, p, gw, iface, t=m.MsgType.ADD_ROUTE, mid=7, metric=-1):
    return enc(m.RouteMsg(t, mid, IPv4Address(a), p, IPv4Address(gw), iface, metric))
"""


def test_hostile_channel_requests_are_refused(lab: Lab, hostile: Service, user: User) -> None:
    before = lab.routes(4), lab.routes(6), lab.addrs("lo"), lab.addrs(Lab.client_if)
    code = COMMON + """
r = {}
r["addr_other"] = send(addr("10.66.0.1", 24, other))
r["addr_other_by_name"] = send(addr("10.66.0.1", 24, I(m.IFACE_INDEX_INVALID, "lab-c")))
r["route_other"] = send(route("10.66.0.0", 16, "0.0.0.0", other))
r["slash8_via_default_gw"] = send(route("10.0.0.0", 8, "198.18.0.1", unset))
r["host_via_wrong_gw"] = send(route("10.66.0.9", 32, "198.18.0.77", unset))
r["del_never_added"] = send(route("10.67.0.0", 16, "0.0.0.0", own, t=m.MsgType.DEL_ROUTE))
r["malformed"] = send(addr("10.66.0.1", 24, own)[:-1])
r["bad_size_field"] = send(addr("10.66.0.1", 24, own)[:8] + struct.pack("<Q", 999) +
                           addr("10.66.0.1", 24, own)[16:])
r["unknown_type"] = send(struct.pack("<I4xQi4x", 9, 24, 5))
r["wins"] = send(enc(m.WinsCfgMsg(m.MsgType.ADD_WINS_CFG, 8, own, (IPv4Address("10.8.0.1"),))))
r["mtu_low"] = send(enc(m.SetMtuMsg(m.MsgType.SET_MTU, 9, own, socket.AF_INET, 100)))
r["ok_own_address"] = send(addr("10.66.0.1", 24, own))
r["bypass_ok"] = send(route("192.0.2.1", 32, "198.18.0.1", unset))
done(**r)
"""
    r = run_scenario(lab, hostile, user, "hostile1.ovpn", code)
    denied = 5
    assert r["addr_other"] == [7, denied]
    assert r["addr_other_by_name"] == [7, denied]
    assert r["route_other"] == [7, denied]
    assert r["slash8_via_default_gw"] == [7, denied]
    assert r["host_via_wrong_gw"] == [7, denied]
    assert r["del_never_added"] == [7, 1168]
    assert r["malformed"] == [-1, 0x20000002] or r["malformed"][1] == 0x20000002
    assert r["bad_size_field"][1] == 0x20000002
    assert r["unknown_type"] == [5, 0x20000003]
    assert r["wins"] == [8, 50]
    assert r["mtu_low"] == [9, 87]
    assert r["ok_own_address"] == [7, 0]
    assert r["bypass_ok"] == [7, 0]
    tun = hostile.tuns()[0]
    assert [a["local"] for a in lab.addrs(tun) if a["family"] == "inet"] == ["10.66.0.1"]
    # nothing changed anywhere else
    after4 = [x for x in lab.routes(4) if x.get("dev") != tun and x["dst"] != "192.0.2.1"]
    assert after4 == before[0]
    assert lab.addrs("lo") == before[2] and lab.addrs(Lab.client_if) == before[3]
    # the bypass route exists now and goes when the session ends
    assert any(x["dst"] == "192.0.2.1" and x.get("gateway") == "198.18.0.1"
               for x in lab.routes(4))
    os.kill(r["pid"], signal.SIGKILL)
    wait_for(lambda: not hostile.tuns() and not our_routes(lab), 3, what="undo")
    assert lab.routes(4) == before[0]


def test_pipelined_requests_on_one_route_wait_for_each_other(lab: Lab, hostile: Service,
                                                             user: User) -> None:
    """Sent without waiting for acks, an add and the delete (or re-add) of the same route
    land in one batch: the second waits until the add's outcome is known, so the delete
    finds its record and the journal ends empty (session.py: the in-flight rule)."""
    code = COMMON + """
import time
chan.setblocking(True)
seq = [route("10.70.0.0", 16, "0.0.0.0", own, mid=1),
       route("10.70.0.0", 16, "0.0.0.0", own, t=m.MsgType.DEL_ROUTE, mid=2),
       route("10.71.0.0", 16, "0.0.0.0", own, mid=3),
       route("10.71.0.0", 16, "0.0.0.0", own, mid=4),
       route("10.72.0.0", 16, "0.0.0.0", own, mid=5),
       route("10.72.0.0", 16, "0.0.0.0", own, t=m.MsgType.DEL_ROUTE, mid=6),
       route("10.72.0.0", 16, "0.0.0.0", own, t=m.MsgType.DEL_ROUTE, mid=7)]
for raw in seq:
    chan.send(raw)
acks = []
for _ in seq:
    a = chan.recv(64)
    acks.append(list(struct.unpack_from("<i4xi", a, 16)))
done(acks=acks)
"""
    r = run_scenario(lab, hostile, user, "pipelined.ovpn", code)
    assert r["acks"] == [[1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0], [7, 1168]], r
    tun = hostile.tuns()[0]
    dsts = {x["dst"] for x in lab.routes(4) if x.get("dev") == tun}
    assert "10.71.0.0/16" in dsts and not dsts & {"10.70.0.0/16", "10.72.0.0/16"}
    import sqlite3
    db = sqlite3.connect(f"file:{hostile.state_dir / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        routes = [json.loads(d)["dst"] for (d,) in
                  db.execute("SELECT data FROM changes WHERE kind = 'route'")]
    finally:
        db.close()
    assert routes == ["10.71.0.0/16"]
    os.kill(r["pid"], signal.SIGKILL)
    wait_for(lambda: not hostile.tuns() and not hostile.journal()["sessions"], 3, what="undo")


def test_oversize_message_ends_the_session(lab: Lab, hostile: Service, user: User) -> None:
    code = COMMON + """
ok = send(addr("10.66.0.1", 24, own))
done(ok=ok)
chan.send(b"\\0" * 1697)
"""
    r = run_scenario(lab, hostile, user, "hostile2.ovpn", code)
    assert r["ok"] == [7, 0]
    wait_for(lambda: not alive(r["pid"]), 3, what="openvpn stopped")
    wait_for(lambda: not hostile.tuns() and not hostile.journal()["sessions"], 3, what="undo")
    assert "channel-abort" in hostile.log()


def test_two_users_only_touch_their_own_tun(lab: Lab, hostile: Service, user: User) -> None:
    other = lab.add_user()
    quiet = COMMON + 'send(addr("10.70.0.1", 24, own))\ndone(index=tun_index)\n'
    a = run_scenario(lab, hostile, other, "quiet.ovpn", quiet)
    attack = COMMON + f"""
victim = I({a["index"]}, "")
r = {{}}
r["addr"] = send(addr("10.71.0.1", 24, victim))
r["route"] = send(route("10.72.0.0", 16, "0.0.0.0", victim))
r["mtu"] = send(enc(m.SetMtuMsg(m.MsgType.SET_MTU, 9, victim, socket.AF_INET, 1400)))
r["flush"] = send(enc(m.FlushNeighborsMsg(m.MsgType.FLUSH_NEIGHBORS, 9, socket.AF_INET, victim)))
r["del_victims_addr"] = send(addr("10.70.0.1", 24, victim, t=m.MsgType.DEL_ADDRESS))
r["own"] = send(addr("10.73.0.1", 24, own))
done(**r)
"""
    b = run_scenario(lab, hostile, user, "attack.ovpn", attack)
    assert b["addr"][1] == 5 and b["route"][1] == 5 and b["mtu"][1] == 5
    assert b["flush"][1] == 5 and b["del_victims_addr"][1] == 5 and b["own"] == [7, 0]
    victim_tun = next(t for t in hostile.tuns()
                      if (lab.link(t) or {}).get("ifindex") == a["index"])
    v = lab.link(victim_tun)
    assert v is not None and v["mtu"] != 1400
    assert [x["local"] for x in lab.addrs(victim_tun) if x["family"] == "inet"] == ["10.70.0.1"]
    for pid in (a["pid"], b["pid"]):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not hostile.tuns(), 3, what="undo")


# -- reconnects ----------------------------------------------------------------

def test_reconnect_ends_with_the_new_configuration(lab: Lab, svc: Service, user: User) -> None:
    pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
    tun = tunnel_up(lab, svc, pid)
    for sig in (signal.SIGUSR1, signal.SIGHUP):
        n_before = svc.journal()["changes"]
        os.kill(pid, sig)
        time.sleep(1.0)
        tunnel_up(lab, svc, pid)
        wait_for(lambda: lab.ping(Lab.pushed_host), 10, what="ping after restart")
        v4 = [a for a in lab.addrs(tun) if a["family"] == "inet"]
        v6 = [a for a in lab.addrs(tun) if a["family"] == "inet6" and a["scope"] == "global"]
        assert len(v4) == 1 and len(v6) == 1, (v4, v6)
        routes = [r for r in our_routes(lab) if r.get("dev") == tun]
        assert sorted(r["dst"] for r in routes) == ["10.9.0.0/16", "fd00:9::/64"]
        assert svc.journal()["changes"] == n_before
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not svc.tuns(), 5, what="cleanup")


def test_restart_with_persist_tun_keeps_a_working_tunnel(lab: Lab, svc: Service,
                                                         user: User) -> None:
    # With persist-tun openvpn runs no route hooks at a restart, and later re-sends
    # its configuration without deleting it first: both must leave one clean copy.
    pid = started_pid(svc.start_as(user, "--config", "persist.ovpn"))
    tun = tunnel_up(lab, svc, pid)
    session = svc.journal()["sessions"][0]["id"]
    n_before = svc.journal()["changes"]
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: svc.session_log(session).count("Initialization Sequence Completed") >= 2,
             15, what=lambda: svc.session_log(session)[-3000:])
    wait_for(lambda: lab.ping(Lab.pushed_host) and lab.ping(Lab.pushed_host6), 10,
             what=lambda: svc.session_log(session)[-3000:])
    assert sorted(r["dst"] for r in our_routes(lab) if r.get("dev") == tun) == \
        ["10.9.0.0/16", "fd00:9::/64"]
    assert len([a for a in lab.addrs(tun) if a["family"] == "inet"]) == 1
    assert svc.journal()["changes"] == n_before
    assert "refused by the service" not in svc.session_log(session)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not svc.tuns() and not our_routes(lab), 5, what="cleanup")


def test_persist_tun_restart_with_changed_routes_keeps_only_the_new_ones(
        lab: Lab, user: User, make_service: Callable[..., Service]) -> None:
    # After a restart whose pushed options changed, openvpn (persist-tun) takes its
    # routes down without naming them; the hook's extension message removes them.
    # (IPv4 routes also vanish with the tun's last IPv4 address; IPv6 ones do not.)
    net, net6 = "10.29.0.0/24", "fd00:29::/64"
    first = lab.start_server('push "route 10.31.0.0 255.255.0.0"\n'
                             'push "route-ipv6 fd00:31::/64"\n', port=1197, name="chg1",
                             network=net, network6=net6)
    lab.write_client_config("change.ovpn", "persist-tun", port=1197)
    svc = make_service()
    svc.start()
    pid = started_pid(svc.start_as(user, "--config", "change.ovpn"))

    def routes() -> list[str]:
        return sorted(r["dst"] for r in our_routes(lab))

    wait_for(lambda: routes() == ["10.31.0.0/16", "fd00:31::/64"], 15, what=svc.log_tail)
    first.stop()
    lab.start_server('push "route 10.32.0.0 255.255.0.0"\n'
                     'push "route-ipv6 fd00:32::/64"\n', port=1197, name="chg2",
                     network=net, network6=net6)
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: "10.32.0.0/16" in routes() and "fd00:32::/64" in routes(), 20,
             what=lambda: f"{routes()}\n{svc.log_tail(30)}")
    time.sleep(0.5)  # the hook has finished: nothing of the old set may come back
    assert routes() == ["10.32.0.0/16", "fd00:32::/64"]
    assert len(svc.tuns()) == 1
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not svc.tuns() and not our_routes(lab) and
             svc.journal() == {"sessions": [], "changes": 0}, 10, what="cleanup")


# -- scale (correctness only; speed is measured in bench/) ------------------------

def test_a_thousand_pushed_routes_all_in_then_all_out(
        lab: Lab, user: User, make_service: Callable[..., Service]) -> None:
    pushes = "".join(f'push "route 10.{100 + i // 250}.{i % 250}.0 255.255.255.0"\n'
                     for i in range(1000))
    lab.start_server(pushes + 'push "route-ipv6 fd00:77::/64"\n', port=1195, name="many",
                     network="10.28.0.0/24", network6="fd00:28::/64")
    lab.write_client_config("many.ovpn", port=1195)
    svc = make_service()
    svc.start()
    pid = started_pid(svc.start_as(user, "--config", "many.ovpn"))
    wait_for(lambda: len(our_routes(lab)) == 1001, 30,
             what=lambda: f"{len(our_routes(lab))} routes\n{svc.log_tail(10)}")
    tun = svc.tuns()[0]
    assert all(r.get("dev") == tun for r in our_routes(lab))
    assert svc.journal()["changes"] >= 1001 + 2
    os.kill(pid, signal.SIGKILL)
    # (the journal's records go right after the tun, in the same undo: wait for both)
    wait_for(lambda: not our_routes(lab) and not svc.tuns() and
             svc.journal() == {"sessions": [], "changes": 0}, 5, what="all removed")
    assert svc.stop() == 0


# -- systemd glue -------------------------------------------------------------------

LAUNCHER = """
import os, socket, sys
path, notify, settings, iservice = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path); os.chmod(path, 0o666); s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), NOTIFY_SOCKET=notify)
os.execve(iservice, [iservice, "serve", "--settings", settings], env)  # same pid
"""


def test_socket_activation_and_notify(lab: Lab, user: User,
                                      make_service: Callable[..., Service]) -> None:
    svc = make_service()
    svc.run_dir.mkdir(mode=0o755)
    notify_path = lab.base_dir / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(10)
    try:
        svc.proc = lab.popen_service([PYTHON, "-I", "-c", LAUNCHER, str(svc.socket_path),
                                      str(notify_path), str(svc.settings_path),
                                      ISERVICE], label=svc.name)
        try:
            assert b"READY=1" in notify.recv(4096)
        except TimeoutError:
            raise AssertionError(svc.log_tail()) from None
        pid = started_pid(svc.start_as(user, "--config", "approved.ovpn"))
        tunnel_up(lab, svc, pid)
        assert svc.stop() == 0
        assert b"STOPPING=1" in notify.recv(4096)
        assert not alive(pid) and svc.tuns() == []
    finally:
        notify.close()
