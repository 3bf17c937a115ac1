"""Kernel events (links and routes appearing and going) of a namespace, time-stamped on
receipt by a small child process and collected by a thread of the bench.

``bench/README.md`` says why the stamps are taken this way (a C child blocked in
``recv()``) and what the alternatives did to the figures.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cbuild import compile_c
from iservice.linux.netlink import run_in_netns

RTMGRP_LINK, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x40, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 24, 25
_NLH = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")
IFLA_IFNAME, RTA_OIF, RTA_TABLE = 3, 4, 15


@dataclass
class Event:
    t: float
    type: int
    ifindex: int  # link: its index; route: RTA_OIF (0 if none)
    name: str = ""  # link: IFLA_IFNAME
    family: int = 0
    dst_len: int = 0
    table: int = 0


def watch_command(work_dir: Path) -> list[str]:
    """The time-stamping child (``bench/c/watch.c``): it only receives and stamps (C: ~2 µs
    per event), so its stamps wait neither for the bench's GIL (parsing thousands of events
    in the bench's main thread delayed the stamps of a burst's last ones by tens of ms) nor
    take much of the CPU that openvpn and the service need.  Without a C compiler, the
    same in Python (``bench/watch_fallback.py``)."""
    exe = compile_c("watch", work_dir / "watch")
    if exe is not None:
        return [str(exe)]
    return [sys.executable, "-I", "-S", str(Path(__file__).resolve().parent / "watch_fallback.py")]


_WATCH_HEAD = struct.Struct("=dI")


class Watcher:
    """Kernel link and route notifications of a namespace, time-stamped on receipt.

    A child process (``WATCH_C``) receives and stamps them; a thread here collects
    them raw (cheap); ``events`` parses.  The receive buffer is large enough for every
    event of 30,000 routes.
    """

    def __init__(self, netns: str, work_dir: Path) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
            s.setsockopt(socket.SOL_SOCKET, 33, 256 * 1024 * 1024)  # SO_RCVBUFFORCE
            s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
            return s
        sock = run_in_netns(f"/run/netns/{netns}", make)
        try:
            self.child = subprocess.Popen([*watch_command(work_dir), str(sock.fileno())],
                                          pass_fds=(sock.fileno(),), stdout=subprocess.PIPE)
        finally:
            sock.close()  # the child has its own copy
        assert self.child.stdout is not None
        self._out = self.child.stdout.fileno()
        with contextlib.suppress(OSError):  # room for a burst while the thread reads
            fcntl.fcntl(self._out, 1031, 4 * 1024 * 1024)  # F_SETPIPE_SZ
        self._raw: list[tuple[float, bytes]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        raw = self._raw
        while True:
            chunk = os.read(self._out, 1 << 20)
            if not chunk:
                return
            buf += chunk
            off = 0
            while off + _WATCH_HEAD.size <= len(buf):
                t, n = _WATCH_HEAD.unpack_from(buf, off)
                if off + _WATCH_HEAD.size + n > len(buf):
                    break
                raw.append((t, buf[off + _WATCH_HEAD.size: off + _WATCH_HEAD.size + n]))
                off += _WATCH_HEAD.size + n
            buf = buf[off:]

    def close(self) -> None:
        self.child.kill()  # by its own pid
        self.child.wait()
        self._thread.join()
        assert self.child.stdout is not None
        self.child.stdout.close()

    def mark(self) -> int:
        return len(self._raw)

    def events(self, since: int = 0) -> list[Event]:
        out: list[Event] = []
        for t, data in self._raw[since:]:
            if data.startswith(b"LOST "):
                raise RuntimeError(f"netlink events lost: {data.decode()}")
            off = 0
            while off + 16 <= len(data):
                ln, typ, _fl, _seq, _pid = _NLH.unpack_from(data, off)
                if ln < 16:
                    break
                body = off + 16
                if typ in (RTM_NEWLINK, RTM_DELLINK):
                    index = struct.unpack_from("=i", data, body + 4)[0]
                    name = ""
                    for at, payload in _attrs(data, body + 16, off + ln):
                        if at == IFLA_IFNAME:
                            name = payload.rstrip(b"\0").decode(errors="replace")
                    out.append(Event(t, typ, index, name))
                elif typ in (RTM_NEWROUTE, RTM_DELROUTE):
                    family, dst_len = data[body], data[body + 1]
                    table = data[body + 4]
                    oif = 0
                    for at, payload in _attrs(data, body + 12, off + ln):
                        if at == RTA_OIF:
                            oif = struct.unpack("=i", payload)[0]
                        elif at == RTA_TABLE:
                            table = struct.unpack("=I", payload)[0]
                    out.append(Event(t, typ, oif, family=family, dst_len=dst_len, table=table))
                off += (ln + 3) & ~3
        return out

    def first(self, match: Callable[[Event], bool], since: int, what: str,
              timeout: float = 5) -> Event:
        """The first event since ``since`` that ``match``es, waiting for it: an event
        the kernel sent may still be on its way through the stamping child."""
        found: Event = self.wait(lambda evs: next((e for e in evs if match(e)), None),
                                 since, timeout, what)
        return found

    def wait(self, pred: Callable[[list[Event]], Any], since: int, timeout: float,
             what: str) -> Any:
        deadline = time.monotonic() + timeout
        seen = since
        acc: list[Event] = []
        while True:
            end = len(self._raw)
            if end > seen:
                acc += self.events(seen)[: None]
                seen = end
                got = pred(acc)
                if got:
                    return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.002)


def _attrs(data: bytes, off: int, end: int) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= end:
        ln, typ = _RTA.unpack_from(data, off)
        if ln < 4:
            return
        yield typ & 0x3FFF, data[off + 4: off + ln]
        off += (ln + 3) & ~3


def link_gone(name_or_index: str | int) -> Callable[[list[Event]], Event | None]:
    def pred(evs: list[Event]) -> Event | None:
        for e in evs:
            if e.type == RTM_DELLINK and name_or_index in (e.name, e.ifindex):
                return e
        return None
    return pred
