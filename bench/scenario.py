"""Scenarios for the test double ``tests/hostile_openvpn.py`` (a stand-in openvpn that
runs its ``--config`` file as Python with the session channel as ``chan``), and the
bench's side of them: start a session with one, wait until it is ready, let it go,
read its result.

A scenario builds its requests first, creates ``$HOME/TAG.ready``, waits for
``$HOME/TAG.go`` (so the measured window holds the service's work, not the stand-in's
set-up), creates ``$HOME/TAG.started``, runs, and reports with ``done(**results)``
(``$HOME/TAG.ovpn.result``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from tests.isv import Service
from tests.lab import User

from bench.common import Bench, Driver, wait_for

# Sends pre-encoded requests while reading their acks (as the plugin does).
PIPELINE = '''
import os, select, time
from ipaddress import IPv4Address, IPv6Address
HOME = os.environ["HOME"]
own = m.Interface(tun_index, tun)

def send_all(msgs):
    """Every request sent, acks read meanwhile; (acked, failed)."""
    chan.setblocking(False)
    sent = acked = failed = 0
    n = len(msgs)
    while acked < n:
        p = select.poll()
        p.register(chan, select.POLLIN | (select.POLLOUT if sent < n else 0))
        events = p.poll(300000)
        if not events:
            break
        for _fd, ev in events:
            if ev & select.POLLOUT:
                while sent < n:
                    try:
                        chan.send(msgs[sent])
                    except BlockingIOError:
                        break
                    sent += 1
            if ev & select.POLLIN:
                while True:
                    try:
                        a = chan.recv(64)
                    except BlockingIOError:
                        break
                    if not a:
                        return acked, failed
                    acked += 1
                    failed += struct.unpack_from("<i", a, 24)[0] != 0
    chan.setblocking(True)
    return acked, failed

def route(i, v6, add=True):
    """The i-th route of a flood: IPv4 /32s from 100.64.0.0, IPv6 /56s in fd10::/16."""
    if v6:
        prefix, plen, gw = IPv6Address((0xfd10 << 112) + (i << 72)), 56, IPv6Address(0)
    else:
        prefix, plen, gw = IPv4Address((100 << 24 | 64 << 16) + i), 32, IPv4Address(0)
    kind = m.MsgType.ADD_ROUTE if add else m.MsgType.DEL_ROUTE
    return m.RouteMsg(kind, 0, prefix, plen, gw, own, -1)

def numbered(msgs, first=1):
    return [m.with_message_id(m.encode_message(x), first + k) for k, x in enumerate(msgs)]

def ready_then_wait(tag):
    open(f"{HOME}/{tag}.ready", "w").close()
    while not os.path.exists(f"{HOME}/{tag}.go"):
        time.sleep(0.005)
    open(f"{HOME}/{tag}.started", "w").close()  # the bench's cue: the run begins now
'''


class ScenarioSession:
    """One stand-in session of ``user`` running ``body`` (``PIPELINE`` comes first)."""

    def __init__(self, b: Bench, svc: Service, user: User, tag: str, body: str) -> None:
        self.user, self.tag, self.svc = user, tag, svc
        name = f"{tag}.ovpn"
        b.lab.write_file(f"client/{name}", PIPELINE + body)
        for suffix in (".ready", ".go", ".started", ".stop", ".ovpn.result", ".samples"):
            (user.home / f"{tag}{suffix}").unlink(missing_ok=True)
        # a driver of its own: closing another driver's connections must not touch it
        self.driver = Driver(b.lab, user, svc.socket_path)
        r = self.driver.call("start", workdir=str(b.lab.config_dir),
                             options=f"--config {name}", wait_end=False)
        if r["error"]:
            self.driver.close()
            raise RuntimeError(f"{tag}: the service refused the session: {r['error']}")
        self.pid: int = r["pid"]

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: (self.user.home / f"{self.tag}.ready").exists(), timeout,
                 f"{self.tag} ready ({self.svc.log_tail(5)})")

    def touch(self, suffix: str) -> None:
        (self.user.home / f"{self.tag}.{suffix}").touch()

    def result_path(self) -> Path:
        return self.user.home / f"{self.tag}.ovpn.result"

    def result(self, timeout: float) -> dict[str, Any]:
        path = self.result_path()
        wait_for(path.exists, timeout, f"{self.tag}'s result", interval=0.01)
        got: dict[str, Any] = json.loads(path.read_text())
        return got

    def end(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.driver.close()
