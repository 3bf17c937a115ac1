"""Hostile forwarded environments (``ISERVICE_ENV``, docs/architecture.md) through the real
service: a user-owned "openvpn" (tests/hostile_openvpn.py) writes the pieces itself.

Each case gets its documented answer, the service makes only what the policy allows,
and after the session everything is as before (``helpers.snapshot``).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.isv import Service, alive, wait_for
from tests.lab import Lab, User
from tests.security.helpers import snapshot

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

DENIED, DATA, QUOTA = 5, 0x20000002, 1816
ACK, RESULT = 0, 0x102

SCENARIO = r'''
import struct
T = m.MsgType
def pieces(env, mid, event=m.EVENT_UP):
    """Like wire.msg.env_chunks, without its bound (a hostile sender has none)."""
    data = b"".join(k.encode() + b"=" + v.encode() + b"\0" for k, v in env)
    n, S = m.ENV_DATA_SIZE, m.LAYOUT_OF[T.ISERVICE_ENV].struct
    parts = [data[i:i + n] for i in range(0, len(data), n)] or [b""]
    return [S.pack(T.ISERVICE_ENV, S.size, mid, event,
                   (i == 0) * m.ENV_FIRST | (i == len(parts) - 1) * m.ENV_LAST, len(p), p)
            for i, p in enumerate(parts)]
def answer(mid, timeout=5):
    """[type, error, requests, refused, refused_type] of the answer to mid (None: none)."""
    chan.settimeout(timeout)
    while True:
        try:
            a = chan.recv(64)
        except (TimeoutError, OSError):
            return None
        t, _size, aid, err = struct.unpack_from("<I4xQi4xi", a)
        if aid != mid:
            continue
        if t == T.ISERVICE_ENV_RESULT:
            return [t, err, *struct.unpack_from("<III", a, 28)]
        return [t, err]
def forward(env, mid, event=m.EVENT_UP):
    for p in pieces(env, mid, event):
        chan.send(p)
    return answer(mid)
r = {}
dev = [("dev", tun)]
# a piece that continues nothing, a piece with an unknown event: acks of their own
r["stray-piece"] = (chan.send(pieces(dev, 31)[0][:28] + struct.pack("<I", 2)
                              + pieces(dev, 31)[0][32:]), answer(31))[1]
bad_event = bytearray(pieces(dev, 32)[0]); struct.pack_into("<I", bad_event, 24, 3)
r["bad-event"] = (chan.send(bytes(bad_event)), answer(32))[1]
# the producer's output goes through the policy: another interface is refused
r["foreign-dev"] = forward([("dev", "lo"), ("ifconfig_local", "10.66.0.1"),
                            ("ifconfig_netmask", "255.255.255.0")], 33)
# routes through the tun are made; a /8 "bypass" via the default gateway is refused
r["routes"] = forward(dev + [("route_net_gateway", "198.18.0.1"),
                             ("route_network_1", "10.77.0.0"), ("route_netmask_1", "255.255.0.0"),
                             ("route_network_2", "10.0.0.0"), ("route_netmask_2", "255.0.0.0"),
                             ("route_gateway_2", "198.18.0.1"),
                             ("route_network_3", "10.78.0.0"), ("route_netmask_3", "255.255.0.0")],
                      34, m.EVENT_ROUTE_UP)
# a malformed environment makes nothing
r["malformed"] = forward(dev + [("tun_mtu", "15x0"), ("ifconfig_local", "10.66.0.1")], 35)
# more than 8 MiB: refused at once, the rest dropped without answers, then served again
big = pieces(dev + [("x", "y" * (m.MAX_ENV_BYTES + (4 << 20)))], 36)  # 12 MiB
chan.settimeout(30)
for p in big:
    chan.send(p)
r["over-the-bound"] = answer(36, timeout=10)
r["after-the-bound-nothing-more"] = answer(36, timeout=1)
# a forged "exiting" route-pre-down: nothing deleted now (the undo does it at the end)
r["forged-exit"] = forward(dev + [("signal", "sigterm"), ("route_network_1", "10.77.0.0"),
                                  ("route_netmask_1", "255.255.0.0")], 37,
                           m.EVENT_ROUTE_PREDOWN)
# pieces interleaved with a plain request: both answered
ps = pieces(dev + [("tun_mtu", "1400"), ("pad", "z" * 3000)], 38)
chan.send(ps[0])
r["plain-between-pieces"] = send(m.encode_message(m.RegisterDnsMsg(T.REGISTER_DNS, 39)))
for p in ps[1:]:
    chan.send(p)
r["after-interleaving"] = answer(38)
done(**r)
'''

EXPECTED: dict[str, Any] = {
    "stray-piece": [ACK, DATA],
    "bad-event": [ACK, DATA],
    "foreign-dev": [RESULT, DENIED, 1, 1, 1],  # add_address on lo: denied
    "routes": [RESULT, DENIED, 3, 1, 3],  # the /8 via the gateway: denied (add_route)
    "malformed": [RESULT, DATA, 0, 0, 0],
    "over-the-bound": [RESULT, QUOTA, 0, 0, 0],
    "after-the-bound-nothing-more": None,
    "forged-exit": [RESULT, 0, 0, 0, 0],
    "plain-between-pieces": [39, 0],
    "after-interleaving": [RESULT, 0, 1, 0, 0],  # set_mtu
}


def test_hostile_environments(lab: Lab, make_service: Callable[..., Service], user: User,
                              hostile_exe: Path) -> None:
    svc = make_service(extra=f"exe_path = {hostile_exe}\n")
    svc.start()
    before = snapshot(lab, svc, user)
    lab.write_file(f"{lab.config_dir.name}/environments.ovpn", SCENARIO)
    cp = svc.start_as(user, "--config", "environments.ovpn")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    pid = int(cp.stdout.strip())
    result = user.home / "environments.ovpn.result"
    wait_for(lambda: result.exists() or not alive(pid), 60, what=svc.log_tail)
    assert result.exists(), "\n".join(p.read_text() for p in svc.log_dir.glob("*.log"))[-3000:]
    got = json.loads(result.read_text())
    assert got == EXPECTED
    dsts = {r["dst"] for r in lab.routes(4)}
    # made and kept (the forged exit deleted nothing); the refused /8 never went in
    assert {"10.77.0.0/16", "10.78.0.0/16"} <= dsts and "10.0.0.0/8" not in dsts
    log = svc.log()
    assert "Traceback" not in log and "session-bug" not in log
    assert 'event=bad-environment' in log and "event=environment" in log
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: snapshot(lab, svc, user) == before, 5,
             what=lambda: f"{snapshot(lab, svc, user)}\n{before}")
    assert svc.connectable()
