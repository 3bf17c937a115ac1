#!/usr/bin/env python3
"""iservice benchmarks P1–P4 (issue 8), side by side with their peers, in one run.

Run as root after ``scripts/setup.sh``:  ``bash bench/run.sh [--quick] [--only P1,P2]``

Builds the namespace lab of the tests (``tests/lab.py``: a real openvpn server in one
namespace, the service and its users in another), runs every measurement with its peer
alternately in the same run, prints a Markdown table (figure, peer, ratio, target,
pass/fail) and writes it, with the raw samples, to ``--out`` (default
``bench/results/latest.md`` and ``.json``).  Everything it creates is removed at the end.

* P1 start latency: connect → PID reply through the service, vs. the same user spawning
  the same executable with the same arguments directly (``Popen`` returned: the process
  exists, as when the service replies).  ``exe_path`` = ``/bin/true``.
* P2 many routes: a server pushing N routes; the same openvpn as root (installing the
  routes itself) vs. as the user through the service: connection requested → "Initialization
  Sequence Completed" with all N routes in the kernel; the route phase (root: first → last
  route in the kernel; iservice: openvpn runs the route-up hook → the hook exits, i.e. every
  route acknowledged); teardown (root: SIGTERM → tun gone; iservice: kill -9 → tun gone).
* P3 many sessions: 10 users × 10 sessions at once with a stand-in that stays alive, and
  20 real openvpn sessions to one server: p99 connect → PID reply, the service's RSS.
* P4 undo latency: kill -9 of openvpn → tun gone (the last undo step), vs. the kernel
  removing a root openvpn's tun after its kill -9.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.isv import PYTHON, VENV, Service  # noqa: E402
from tests.lab import INIT_DONE, OPENVPN, Lab, Pki, User  # noqa: E402

from iservice.linux.netlink import run_in_netns  # noqa: E402

# --------------------------------------------------------------------------- results


@dataclass
class Row:
    name: str
    figure: float | None
    peer: float | None
    unit: str
    target: str
    ok: bool | None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.peer:
            return None
        return self.figure / self.peer


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.2f} s"
    if unit == "ms":
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "MB":
        return f"{v:.1f} MB"
    return f"{v:g} {unit}"


def table(rows: Sequence[Row]) -> str:
    out = ["| benchmark | iservice | peer (same run) | ratio | target | result |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r.ratio is None else f"{r.ratio:.2f}"
        result = {True: "pass", False: "**FAIL**", None: "info"}[r.ok]
        name = r.name + (f" ({r.note})" if r.note else "")
        out.append(f"| {name} | {fmt(r.figure, r.unit)} | {fmt(r.peer, r.unit)} | {ratio} "
                   f"| {r.target} | {result} |")
    return "\n".join(out)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p99(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]  # nearest rank


# --------------------------------------------------------------------------- netlink events

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


# The Watcher's timestamping child: it only receives and stamps (C: ~2 µs per event),
# so its stamps wait neither for the bench's GIL (parsing thousands of events in the
# bench's main thread delayed the stamps of a burst's last ones by tens of ms) nor take
# much of the CPU that openvpn and the service need.
WATCH_C = r'''
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* bench only: netlink notifications from fd argv[1] to stdout as (double t, u32 n, data) */
static char buf[12 + (1 << 20)];
int main(int argc, char **argv) {
  int fd = argc > 1 ? atoi(argv[1]) : -1;
  prctl(PR_SET_PDEATHSIG, SIGKILL);  /* never outlives the bench, even if it crashes */
  if (getppid() == 1) return 1;
  for (;;) {
    ssize_t n = recv(fd, buf + 12, 1 << 20, 0);
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = ts.tv_sec + ts.tv_nsec / 1e9;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) n = snprintf(buf + 12, 256, "LOST %s", strerror(errno));
    if (n == 0) return 0;
    uint32_t len = (uint32_t)n;
    memcpy(buf, &t, 8); memcpy(buf + 8, &len, 4);
    for (char *p = buf; p < buf + 12 + n;) {
      ssize_t w = write(1, p, buf + 12 + n - p);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return 1;
      p += w;
    }
  }
}
'''
# Without a C compiler: the same in Python (its stamps cost the machine more CPU).
WATCH_PY = r'''
import ctypes, os, socket, struct, sys, time
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: never outlives the bench
s = socket.socket(fileno=int(sys.argv[1]))
head, now, recv, write = struct.Struct("=dI"), time.monotonic, s.recv, os.write
while True:
    try:
        data = recv(1 << 20)
    except OSError as exc:  # ENOBUFS: events were lost; the bench says so loudly
        data = b"LOST " + str(exc).encode()
    if not data:
        break
    write(1, head.pack(now(), len(data)) + data)
'''


def compile_c(source: str, exe: Path, *flags: str, static: bool = False) -> Path | None:
    """Build a bench-only C program (``cc -O2``); None without a compiler or if it fails.
    ``static``: linked statically if libc.a is there (libc6-dev), else dynamically."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = exe.with_name(exe.name + ".c")
    src.write_text(source)
    for link in ((["-static"], []) if static else ([],)):
        if subprocess.run([cc, "-O2", *link, "-o", str(exe), str(src), *flags]).returncode == 0:
            exe.chmod(0o755)
            return exe
    return None


def watch_command(work_dir: Path) -> list[str]:
    exe = compile_c(WATCH_C, work_dir / "watch")
    return [str(exe)] if exe else [sys.executable, "-I", "-S", "-c", WATCH_PY]


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


# --------------------------------------------------------------------------- the user's side

DRIVER = r'''
import json, os, select, socket, subprocess, sys, time
from iservice.wire import startup as w
path = sys.argv[1]
conns = []
def start(workdir, options, wait_end):
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.connect(path)
    s.send(w.encode_startup(w.StartupData(workdir=workdir, options=options, stdin="")))
    raw = s.recv(65536)
    t1 = time.monotonic()
    r = w.decode_reply(raw)
    t2 = None
    if wait_end:
        while s.recv(65536):
            pass
        t2 = time.monotonic()
        s.close()
    else:
        conns.append(s)
    return {"t0": t0, "t1": t1, "t2": t2, "pid": getattr(r, "pid", None),
            "error": None if hasattr(r, "pid") else repr(r)}
def burst(workdir, options, n):
    socks, t0, out = [], {}, []
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        t0[s.fileno()] = time.monotonic()
        s.connect(path)
        s.send(w.encode_startup(w.StartupData(workdir=workdir, options=options, stdin="")))
        socks.append(s)
    waiting = {s.fileno(): s for s in socks}
    while waiting:
        r, _, _ = select.select(list(waiting), [], [], 30)
        if not r:
            break
        for fd in r:
            s = waiting.pop(fd)
            raw = s.recv(65536)
            t1 = time.monotonic()
            rep = w.decode_reply(raw)
            out.append({"t0": t0[fd], "t1": t1, "pid": getattr(rep, "pid", None),
                        "error": None if hasattr(rep, "pid") else repr(rep)})
            conns.append(s)
    return {"results": out, "missing": len(waiting)}
def spawn(argv):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)
    t1 = time.monotonic()
    p.wait()
    return {"t0": t0, "t1": t1, "t2": time.monotonic()}
for line in sys.stdin:
    req = json.loads(line)
    op = req.pop("op")
    if op == "start":
        res = start(**req)
    elif op == "burst":
        res = burst(**req)
    elif op == "spawn":
        res = spawn(**req)
    elif op == "close":
        for s in conns:
            s.close()
        conns.clear()
        res = {}
    print(json.dumps(res), flush=True)
'''


class Driver:
    """A process of ``user`` in the client namespace that sends requests on command."""

    def __init__(self, lab: Lab, user: User, socket_path: Path) -> None:
        script = lab.write_file(f"driver-{user.name}.py", DRIVER)
        self.proc = lab.popen_client([PYTHON, "-I", str(script), str(socket_path)], user=user,
                                     label=f"driver-{user.name}", stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"driver exited: {self.proc.errors()[-2000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.end(grace=2)


# --------------------------------------------------------------------------- helpers

HOOK_TIMER_C = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
/* bench only: openvpn runs this as the hook; it times the real hook (exec → exit). */
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  double t0 = now(); int st = 0; pid_t pid = fork();
  if (pid == 0) { argv[0] = REAL; execv(REAL, argv); _exit(127); }
  waitpid(pid, &st, 0);
  double t1 = now(); const char *s = getenv("script_type"); const char *d = getenv("dev");
  FILE *f = fopen(LOG, "a");
  if (f) { fprintf(f, "%s %s %.6f %.6f %d\n", d ? d : "-", s ? s : "-", t0, t1, st); fclose(f); }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
'''


STANDIN_C = r'''
#include <unistd.h>
/* bench only: P3's stand-in openvpn; it stays alive until killed, and costs one exec. */
int main(void) { for (;;) pause(); }
'''


def build_standin(lab: Lab) -> Path:
    """P3's stand-in openvpn: a static C program that waits to be killed (one exec of a
    small binary), or a shell script running ``sleep`` (two execs, ~1 ms more CPU per
    session, measured) where there is no C compiler."""
    exe = compile_c(STANDIN_C, lab.make_dir("standin", mode=0o755) / "standin-stay",
                    static=True)
    if exe is not None:
        return exe
    return lab.write_file("standin-stay.sh", "#!/bin/sh\nexec /bin/sleep 3600\n", mode=0o755)


def build_hook_timer(lab: Lab) -> tuple[Path, Path] | None:
    d = lab.make_dir("hooktimer", mode=0o755)
    log_path = lab.make_dir("hooktimer/log", mode=0o1777) / "hooks.log"
    real = VENV / "bin" / "iservice-hook"
    exe = compile_c(HOOK_TIMER_C, d / "iservice-hook-timed", f'-DREAL="{real}"',
                    f'-DLOG="{log_path}"')
    return (exe, log_path) if exe else None


def hook_times(log_path: Path, dev: str, script: str) -> tuple[float, float] | None:
    if not log_path.exists():
        return None
    for line in reversed(log_path.read_text().splitlines()):
        parts = line.split()
        if len(parts) == 5 and parts[0] == dev and parts[1] == script:
            return float(parts[2]), float(parts[3])
    return None


# The plugin's line per event (src/iservice/plugin/iservice_plugin.c), as openvpn prints it:
# "PLUGIN iservice-plugin: route-up: 100 messages, 0 refused, 1.2 ms (monotonic a -> b)"
PLUGIN_LINE = re.compile(r"PLUGIN iservice-plugin: (?P<event>[a-z-]+): \d+ messages, \d+ refused, "
                         r"[0-9.]+ ms \(monotonic (?P<t0>[0-9.]+) -> (?P<t1>[0-9.]+)\)")


def plugin_times(log_text: str, event: str) -> tuple[float, float] | None:
    """openvpn's call of the plugin → the last ack, from the plugin's own timing line."""
    found = None
    for mt in PLUGIN_LINE.finditer(log_text):
        if mt.group("event") == event:
            found = float(mt.group("t0")), float(mt.group("t1"))
    return found


class LogTail:
    """Incremental reader of a growing log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.text = ""

    def poll(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self.text
        self.pos += len(data)
        self.text += data.decode(errors="replace")
        return self.text


def wait_log(tail: LogTail, needle: str, timeout: float, proc_alive: Callable[[], bool],
             ) -> float:
    deadline = time.monotonic() + timeout
    while True:
        if needle in tail.poll():
            return time.monotonic()
        if not proc_alive():
            raise RuntimeError(f"openvpn exited before {needle!r}:\n{tail.text[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {needle!r} after {timeout:g} s:\n{tail.text[-3000:]}")
        time.sleep(0.002)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def count_routes(lab: Lab, ifindex: int, family: int, dst_len: int) -> int:
    from iservice.linux.netlink import rtnl_in_netns
    rt = rtnl_in_netns(f"/run/netns/{lab.client_ns}")
    try:
        fam = socket.AF_INET6 if family == 6 else socket.AF_INET
        return sum(1 for r in rt.route_list(fam)
                   if r.oif == ifindex and r.dst.prefixlen == dst_len)
    finally:
        rt.close()


def pushes(n: int, v6: bool) -> str:
    if v6:  # /56s in fd10::/16
        return "".join(f'push "route-ipv6 fd10:{i >> 8:x}:{(i & 0xFF) << 8:x}::/56"\n'
                       for i in range(n))
    base = 100 << 24 | 64 << 16  # /26s from 100.64.0.0
    out = []
    for i in range(n):
        a = base + i * 64
        out.append(f'push "route {a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255} '
                   '255.255.255.192"\n')
    return "".join(out)


# --------------------------------------------------------------------------- the bench

@dataclass
class Config:
    quick: bool
    p1_starts: int
    p2_counts: list[tuple[int, bool]]  # (N, ipv6)
    p2_repeat: int
    p3_users: int
    p3_per_user: int
    p3_bursts: int
    p3_real: int
    p4_repeat: int


class Bench:
    def __init__(self, lab: Lab, cfg: Config) -> None:
        self.lab = lab
        self.cfg = cfg
        self.rows: list[Row] = []
        self.watcher = Watcher(lab.client_ns, lab.make_dir("watch", mode=0o755))
        self.timer = build_hook_timer(lab)
        self.admins = lab.add_group("isvbadm")
        # two users for the real openvpn sessions; more for P3
        self.users = [lab.add_user("isvb") for _ in range(max(2, cfg.p3_users))]
        stay = build_standin(lab)
        limits = (f"max_sessions_per_user = {max(16, cfg.p3_per_user + 2)}\n"
                  "max_clients = 256\nmax_clients_per_user = 64\n")
        self.svc_true = Service(lab, name="bsvtrue", extra="exe_path = /bin/true\n" + limits)
        self.svc_stay = Service(lab, name="bsvstay", extra=f"exe_path = {stay}\n" + limits)
        self.svc_real = Service(lab, name="bsvreal", extra=limits)
        if self.timer:  # the real hook, run (and timed) by the bench's wrapper
            p = self.svc_real.settings_path
            p.write_text("".join(f"hook_path = {self.timer[0]}\n"
                                 if line.startswith("hook_path") else line
                                 for line in p.read_text().splitlines(keepends=True)))
        for s in (self.svc_true, self.svc_stay, self.svc_real):
            s.start()
        self.drivers: dict[str, dict[str, Driver]] = {}

    def driver(self, svc: Service, user: User) -> Driver:
        by_user = self.drivers.setdefault(svc.name, {})
        if user.name not in by_user:
            by_user[user.name] = Driver(self.lab, user, svc.socket_path)
        return by_user[user.name]

    def close(self) -> None:
        for by_user in self.drivers.values():
            for d in by_user.values():
                d.close()
        for s in (self.svc_true, self.svc_stay, self.svc_real):
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
        self.watcher.close()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)

    # -- P1 ----------------------------------------------------------------------------

    def p1(self) -> None:
        user = self.users[0]
        cfg_path = self.lab.config_dir / "approved.ovpn"
        d = self.driver(self.svc_true, user)
        options = f"--config {cfg_path.name}"
        argv = ["/bin/true", "--cd", str(self.lab.config_dir), "--config", str(cfg_path),
                *["--dev", "istun1", "--dev-type", "tun", "--disable-dco", "--ifconfig-noexec",
                  "--route-noexec", "--script-security", "2", "--up", "/x 4",
                  "--route-up", "/x 4", "--route-pre-down", "/x 4", "--down", "/x 4",
                  "--up-restart"]]
        svc_ms: list[float] = []
        spawn_ms: list[float] = []
        spawn_exit_ms: list[float] = []
        for _ in range(2):  # warm-up
            d.call("start", workdir=str(self.lab.config_dir), options=options, wait_end=True)
        for _ in range(self.cfg.p1_starts):
            r = d.call("start", workdir=str(self.lab.config_dir), options=options,
                       wait_end=True)
            if r["error"]:
                raise RuntimeError(f"P1 start refused: {r['error']}")
            svc_ms.append((r["t1"] - r["t0"]) * 1000)
            s = d.call("spawn", argv=argv)
            spawn_ms.append((s["t1"] - s["t0"]) * 1000)
            spawn_exit_ms.append((s["t2"] - s["t0"]) * 1000)
        fig, peer = median(svc_ms), median(spawn_ms)
        self.add(Row(f"P1 start: connect → PID reply, median of {len(svc_ms)}", fig, peer,
                     "ms", "≤ 1.5× peer", fig <= 1.5 * peer,
                     note="peer: the user's own Popen of /bin/true, same argv",
                     samples={"iservice": svc_ms, "spawn": spawn_ms,
                              "spawn_exit": spawn_exit_ms}))
        self.add(Row("P1 start: connect → PID reply, p99", p99(svc_ms), p99(spawn_ms), "ms",
                     "info", None))

    # -- P2 ----------------------------------------------------------------------------

    def p2(self) -> None:
        for k, (n, v6) in enumerate(self.cfg.p2_counts):
            try:
                self.p2_one(n, v6, port=1200 + k, net=f"10.{40 + k}.0.0/24",
                            net6=f"fd00:{40 + k:x}::/64")
            except Exception as exc:  # one count failing must not hide the others
                print(f"  P2 {n}{'v6' if v6 else ''} failed: {exc}", flush=True)
                self.add(Row(f"P2 {n:,} IPv{6 if v6 else 4} routes", None, None, "s",
                             "works", False, note=f"error: {str(exc).splitlines()[0][:120]}"))

    def p2_one(self, n: int, v6: bool, *, port: int, net: str, net6: str) -> None:
        lab = self.lab
        name = f"p2-{n}{'v6' if v6 else ''}"
        t = time.monotonic()
        server = lab.start_server(pushes(n, v6), port=port, name=name, network=net,
                                  network6=net6, timeout=120)
        cfg = lab.write_client_config(f"{name}.ovpn", "verb 1\n", port=port)
        print(f"  {name}: server up in {time.monotonic() - t:.1f} s", flush=True)
        fam, dst_len = (6, 56) if v6 else (4, 26)
        timeout = 30 + n / 300  # 30,000 routes: ~50 s per openvpn run here
        root: dict[str, list[float]] = {"total": [], "routes": [], "teardown": []}
        isv: dict[str, list[float]] = {"total": [], "routes": [], "teardown": [],
                                       "hook_up": []}
        user = self.users[0]
        drv = self.driver(self.svc_real, user)
        try:
            for rep in range(self.cfg.p2_repeat):
                order = ("root", "isv") if rep % 2 == 0 else ("isv", "root")
                for who in order:
                    if who == "root":
                        self._p2_root(cfg, n, fam, dst_len, timeout, root, rep)
                    else:
                        self._p2_isv(drv, cfg, n, fam, dst_len, timeout, isv)
                print(f"  {name} run {rep + 1}: root {root['total'][-1]:.3f} s, "
                      f"iservice {isv['total'][-1]:.3f} s", flush=True)
        finally:
            server.stop()
        label = f"{n:,} IPv{6 if v6 else 4} routes"
        rt, it = median(root["total"]), median(isv["total"])
        if n < 1000:
            target, ok = "≤ peer + 25 ms", it <= rt + 0.025
        else:
            target, ok = "ratio ≤ 1.0", it <= rt
        reps = len(isv["total"])
        self.add(Row(f"P2 {label}: connect → Initialization Sequence Completed, all routes "
                     f"in, median of {reps}", it, rt, "s", target, ok,
                     note="peer: the same openvpn as root", samples={"iservice": isv["total"],
                                                                      "root": root["total"]}))
        if isv["routes"]:
            ir, rr = median(isv["routes"]), median(root["routes"])
            self.add(Row(f"P2 {label}: route phase", ir, rr, "s", "ratio ≤ 1.0", ir <= rr,
                         note="iservice: openvpn calls the plugin at route-up → last ack "
                         "(plugin's timing line; hook = script: hook run → exit); root: "
                         "first → last route in the kernel",
                         samples={"iservice": isv["routes"], "root": root["routes"],
                                  "iservice_up_hook": isv["hook_up"]}))
        itd, rtd = median(isv["teardown"]), median(root["teardown"])
        self.add(Row(f"P2 {label}: teardown", itd, rtd, "s", "ratio ≤ 1.0", itd <= rtd,
                     note="iservice: kill -9 → tun and routes gone; root: SIGTERM → gone",
                     samples={"iservice": isv["teardown"], "root": root["teardown"]}))

    def _p2_root(self, cfg: Path, n: int, fam: int, dst_len: int, timeout: float,
                 out: dict[str, list[float]], rep: int) -> None:
        lab = self.lab
        dev = f"bnchtun{rep}"
        mark = self.watcher.mark()
        t0 = time.monotonic()
        h = lab.start_client(cfg, "--dev", dev, "--dev-type", "tun", wait=False,
                             name=f"root-{n}")
        tail = LogTail(h.log_path)
        t1 = wait_log(tail, INIT_DONE, timeout, lambda: h.proc.poll() is None)
        idx = self.watcher.first(lambda e: e.type == RTM_NEWLINK and e.name == dev,
                                 mark, f"{dev} created").ifindex

        def all_routes(evs: list[Event]) -> list[Event] | None:
            got = [e for e in evs if e.type == RTM_NEWROUTE and e.ifindex == idx
                   and e.dst_len == dst_len]
            return got if len(got) >= n else None
        ours = self.watcher.wait(all_routes, mark, 10, f"{n} route events")
        got = count_routes(lab, idx, fam, dst_len)
        if got != n:
            raise RuntimeError(f"root openvpn: {got} of {n} routes in the kernel")
        out["total"].append(t1 - t0)
        out["routes"].append(ours[n - 1].t - ours[0].t)
        mark = self.watcher.mark()
        t2 = time.monotonic()
        h.proc.send_signal(signal.SIGTERM)
        ev = self.watcher.wait(link_gone(dev), mark, timeout, f"root {dev} gone")
        h.proc.wait(timeout)
        out["teardown"].append(ev.t - t2)

    def _p2_isv(self, drv: Driver, cfg: Path, n: int, fam: int, dst_len: int,
                timeout: float, out: dict[str, list[float]]) -> None:
        svc = self.svc_real
        before = set(svc.log_dir.glob("session-*.log")) if svc.log_dir.exists() else set()
        mark = self.watcher.mark()
        r = drv.call("start", workdir=str(self.lab.config_dir), options=f"--config {cfg.name}",
                     wait_end=False)
        if r["error"]:
            raise RuntimeError(f"iservice refused: {r['error']}")
        pid = r["pid"]
        new: list[Path] = []

        def session_log() -> bool:
            new[:] = [p for p in svc.log_dir.glob("session-*.log") if p not in before]
            return bool(new)
        deadline = time.monotonic() + 10
        while not session_log():
            if time.monotonic() > deadline:
                raise RuntimeError("no session log")
            time.sleep(0.002)
        tail = LogTail(new[0])
        t1 = wait_log(tail, INIT_DONE, timeout, lambda: pid_alive(pid))
        link = self.watcher.first(
            lambda e: e.type == RTM_NEWLINK and e.name.startswith("istun"), mark, "the tun")
        idx, dev = link.ifindex, link.name
        got = count_routes(self.lab, idx, fam, dst_len)
        if got != n:
            raise RuntimeError(f"iservice: {got} of {n} routes in the kernel\n"
                               f"{tail.text[-3000:]}\n{svc.log_tail(20)}")
        out["total"].append(t1 - r["t0"])
        # the plugin (hook = auto/plugin) times itself; the script hook is timed by the
        # bench's wrapper (hook = script, or no plugin built)
        hr, hu = plugin_times(tail.text, "route-up"), plugin_times(tail.text, "up")
        if hr is None and self.timer is not None:
            hr = hook_times(self.timer[1], dev, "route-up")
            hu = hook_times(self.timer[1], dev, "up")
        if hr is not None:
            out["routes"].append(hr[1] - hr[0])
        if hu is not None:
            out["hook_up"].append(hu[1] - hu[0])
        mark = self.watcher.mark()
        t2 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        ev = self.watcher.wait(link_gone(dev), mark, timeout, f"{dev} gone")
        out["teardown"].append(ev.t - t2)
        drv.call("close")
        # the session's journal entry is gone right after the tun (undo's last step)
        deadline = time.monotonic() + 10
        while svc.journal()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- P3 ----------------------------------------------------------------------------

    def p3(self) -> None:
        svc = self.svc_stay
        spid = svc.service_pid()
        users = self.users[: self.cfg.p3_users]
        drivers = [self.driver(svc, u) for u in users]
        cfgname = "approved.ovpn"
        # warm up: one session, ended, so "idle" is the service after its first session
        w = drivers[0].call("start", workdir=str(self.lab.config_dir),
                            options=f"--config {cfgname}", wait_end=False)
        os.kill(w["pid"], signal.SIGKILL)
        self._wait_sessions(svc, 0, 10)
        drivers[0].call("close")
        # the service gives memory back 2 s after its last session (IDLE_TRIM_DELAY)
        time.sleep(3.0)
        idle = rss_mb(spid)
        total = self.cfg.p3_users * self.cfg.p3_per_user
        lat: list[float] = []
        burst_p99: list[float] = []
        errors: list[str] = []
        missing = 0
        live = 0.0
        # Several bursts, the first one cold: a single burst's p99 is its one or two
        # slowest starts, which move by ±50 ms between runs on this 2-core VM.
        for _ in range(self.cfg.p3_bursts):
            results = self._p3_burst(svc, drivers, cfgname)
            got = [(x["t1"] - x["t0"]) * 1000 for r in results for x in r["results"]
                   if x["pid"]]
            lat += got
            burst_p99.append(p99(got) if got else math.inf)
            errors += [x["error"] for r in results for x in r["results"] if not x["pid"]]
            missing += sum(r["missing"] for r in results)
            pids = [x["pid"] for r in results for x in r["results"] if x["pid"]]
            self._wait_sessions(svc, len(pids), 10)
            live = max(live, rss_mb(spid))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._wait_sessions(svc, 0, 30)
            for d in drivers:
                d.call("close")
        time.sleep(3.0)  # as for the idle figure
        after = rss_mb(spid)
        bursts = self.cfg.p3_bursts
        served = len(lat)
        self.add(Row(f"P3 {total} concurrent sessions ({self.cfg.p3_users} users × "
                     f"{self.cfg.p3_per_user}, stand-in), {bursts} bursts: served", served,
                     total * bursts, "sessions", "all",
                     served == total * bursts and not errors and not missing,
                     note=f"errors: {errors[:2]}" if errors else ""))
        per_burst = ", ".join(f"{x:.0f}" for x in burst_p99)
        self.add(Row(f"P3 {total} concurrent sessions: connect → PID reply, p99 of all "
                     f"{served}", p99(lat), None, "ms", "≤ 250 ms", p99(lat) <= 250,
                     note=f"median {median(lat):.0f} ms; p99 per burst {per_burst} ms",
                     samples={"iservice": lat, "burst_p99": burst_p99}))
        self.add(Row(f"P3 service RSS with {total} live sessions (highest of the bursts)", live,
                     idle, "MB", "≤ 80 MB", live <= 80, note="peer: idle"))
        self.add(Row("P3 service RSS after they ended", after, idle, "MB", "≤ 1.1× idle",
                     after <= 1.1 * idle, note="peer: idle"))
        if self.cfg.p3_real:
            self.p3_real()

    def _p3_burst(self, svc: Service, drivers: list[Driver],
                  cfgname: str) -> list[dict[str, Any]]:
        """Every driver sends its requests at once; their results."""
        results: list[dict[str, Any]] = []
        lock = threading.Lock()

        def go(d: Driver) -> None:
            r = d.call("burst", workdir=str(self.lab.config_dir),
                       options=f"--config {cfgname}", n=self.cfg.p3_per_user)
            with lock:
                results.append(r)
        threads = [threading.Thread(target=go, args=(d,)) for d in drivers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return results

    def p3_real(self) -> None:
        svc = self.svc_real
        spid = svc.service_pid()
        n = self.cfg.p3_real
        server = self.lab.start_server("", port=1300, name="p3", network="10.60.0.0/22",
                                       network6="fd00:60::/64")
        cfg = self.lab.write_client_config("p3.ovpn", "verb 1\n", port=1300)
        before = set(svc.log_dir.glob("session-*.log")) if svc.log_dir.exists() else set()
        users = self.users[:2]
        per = [n // 2, n - n // 2]
        results: list[dict[str, Any]] = []
        lock = threading.Lock()
        t0 = time.monotonic()

        def go(u: User, k: int) -> None:
            r = self.driver(svc, u).call("burst", workdir=str(self.lab.config_dir),
                                         options=f"--config {cfg.name}", n=k)
            with lock:
                results.append(r)
        threads = [threading.Thread(target=go, args=(u, k)) for u, k in zip(users, per,
                                                                             strict=True)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        lat = [(x["t1"] - x["t0"]) * 1000 for r in results for x in r["results"] if x["pid"]]
        pids = [x["pid"] for r in results for x in r["results"] if x["pid"]]
        try:
            deadline = time.monotonic() + 60
            while True:
                logs = [p for p in svc.log_dir.glob("session-*.log") if p not in before]
                done = sum(INIT_DONE in p.read_text(errors="replace") for p in logs)
                if done >= n or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            t_all = time.monotonic() - t0
            live = rss_mb(spid)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._wait_sessions(svc, 0, 30)
            for u in users:
                self.driver(svc, u).call("close")
            server.stop()
        self.add(Row(f"P3 {n} real openvpn sessions to one server: connected", done, n,
                     "sessions", "all", done == n and len(lat) == n,
                     note=f"all connected {t_all:.1f} s after the requests"))
        self.add(Row(f"P3 {n} real openvpn sessions: connect → PID reply, p99", p99(lat), None,
                     "ms", "≤ 250 ms", p99(lat) <= 250, samples={"iservice": lat}))
        self.add(Row(f"P3 service RSS with {n} live real sessions", live, None, "MB",
                     "≤ 80 MB", live <= 80))

    def _wait_sessions(self, svc: Service, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(svc.journal()["sessions"]) != n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{svc.name}: {len(svc.journal()['sessions'])} sessions, "
                                   f"expected {n}\n{svc.log_tail(20)}")
            time.sleep(0.02)

    # -- P4 ----------------------------------------------------------------------------

    def p4(self) -> None:
        lab = self.lab
        svc = self.svc_real
        cfg = lab.config_dir / "approved.ovpn"
        drv = self.driver(svc, self.users[0])
        undo: list[float] = []
        kern: list[float] = []
        for rep in range(self.cfg.p4_repeat):
            # iservice: kill -9 of the user's openvpn → its tun (the oldest change, undone
            # last) gone, with its routes, addresses and journal records
            before = set(svc.log_dir.glob("session-*.log")) if svc.log_dir.exists() else set()
            mark = self.watcher.mark()
            r = drv.call("start", workdir=str(lab.config_dir), options=f"--config {cfg.name}",
                         wait_end=False)
            if r["error"]:
                raise RuntimeError(r["error"])
            pid = r["pid"]
            deadline = time.monotonic() + 10
            while not (new := [p for p in svc.log_dir.glob("session-*.log")
                               if p not in before]):
                if time.monotonic() > deadline:
                    raise RuntimeError("no session log")
                time.sleep(0.005)
            wait_log(LogTail(new[0]), INIT_DONE, 20, lambda: pid_alive(pid))  # noqa: B023
            dev = self.watcher.first(
                lambda e: e.type == RTM_NEWLINK and e.name.startswith("istun"), mark,
                "the tun").name
            mark = self.watcher.mark()
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            ev = self.watcher.wait(link_gone(dev), mark, 10, f"{dev} gone")
            undo.append((ev.t - t0) * 1000)
            self._wait_sessions(svc, 0, 10)
            drv.call("close")
            # peer: openvpn as root, kill -9: the kernel removes its tun and routes
            rdev = f"bnchk{rep}"
            h = lab.start_client(cfg, "--dev", rdev, "--dev-type", "tun", wait=False,
                                 name="root-kill")
            wait_log(LogTail(h.log_path), INIT_DONE, 20, lambda: h.proc.poll() is None)  # noqa: B023
            mark = self.watcher.mark()
            t0 = time.monotonic()
            h.proc.send_signal(signal.SIGKILL)
            ev = self.watcher.wait(link_gone(rdev), mark, 10, f"{rdev} gone")
            kern.append((ev.t - t0) * 1000)
            h.proc.wait(5)
        fig, peer = median(undo), median(kern)
        self.add(Row(f"P4 undo: kill -9 of openvpn → every change undone, median of "
                     f"{len(undo)}", fig, peer, "ms", "≤ 200 ms", fig <= 200,
                     note="peer: the kernel cleaning up after kill -9 of a root openvpn",
                     samples={"iservice": undo, "root_kill": kern}))

    # -- hook start-up (informational, explains P2 at small N) ------------------------

    def hook_startup(self) -> None:
        def run_ms(argv: list[str], k: int = 20) -> float:
            xs = []
            for _ in range(k):
                t0 = time.perf_counter()
                subprocess.run(argv, env={"script_type": "none"}, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                xs.append((time.perf_counter() - t0) * 1000)
            return median(xs)
        hook = run_ms([str(VENV / "bin" / "iservice-hook"), "99"])
        bare = run_ms([sys.executable, "-I", "-S", "-c", "pass"])
        self.add(Row("hook start-up (`iservice-hook` with nothing to send)", hook, bare, "ms",
                     "info", None, note="peer: `python -I -S -c pass`"))


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ovpn = subprocess.run([OPENVPN, "--version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0].split(" [")[0]
    os_name = "?"
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return (f"{os_name}, kernel {platform.release()}, {os.cpu_count()} × {cpu}, "
            f"{mem:.0f} GB RAM, {ovpn}, Python {platform.python_version()}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small N and few repeats: checks that the benchmark runs (CI)")
    ap.add_argument("--only", default="P1,P2,P3,P4,hook", help="comma-separated subset")
    ap.add_argument("--counts", help="P2 route counts, e.g. 100,1000,10000,30000,1000v6")
    ap.add_argument("--repeat", type=int, help="P2 repeats per count (median)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latest"),
                    help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (namespaces, users, openvpn)", file=sys.stderr)
        return 2
    if args.quick:
        cfg = Config(True, 5, [(100, False), (1000, False)], 1, 2, 3, 1, 0, 2)
    else:
        cfg = Config(False, 50, [(100, False), (1000, False), (10_000, False),
                                 (30_000, False), (1000, True)], 5, 10, 10, 3, 20, 20)
    if args.counts:
        cfg.p2_counts = [(int(c.removesuffix("v6")), c.endswith("v6"))
                         for c in args.counts.split(",")]
    if args.repeat:
        cfg.p2_repeat = args.repeat
    only = {x.strip().upper() for x in args.only.split(",")}
    started = datetime.datetime.now(datetime.UTC)
    load0 = os.getloadavg()  # other work on the machine skews every figure: say how much
    t0 = time.monotonic()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-", dir="/tmp"))
    rows: list[Row] = []
    try:
        pki = Pki.create(pki_dir)
        with Lab(pki) as lab:
            lab.write_client_config("approved.ovpn", "verb 1\n")
            server = lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                                      'push "route-ipv6 fd00:9::/64"\n')
            bench = Bench(lab, cfg)
            try:
                if "HOOK" in only:
                    bench.hook_startup()
                if "P1" in only:
                    bench.p1()
                if "P4" in only:
                    bench.p4()
                if "P3" in only:
                    bench.p3()
                if "P2" in only:
                    bench.p2()
            finally:
                rows = bench.rows
                bench.close()
                server.stop()
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)
    took = time.monotonic() - t0
    mode = "quick" if cfg.quick else "full"
    load = " / ".join(f"{x:.1f}" for x in (load0[0], os.getloadavg()[0]))
    head = (f"`bash bench/run.sh{' --quick' if cfg.quick else ''}` ({mode}), "
            f"{started:%Y-%m-%d %H:%M} UTC, {took / 60:.1f} min, load average at start / "
            f"end {load}; {machine()}")
    text = head + "\n\n" + table(rows) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"when": started.isoformat(), "mode": mode, "machine": machine(),
         "rows": [{"name": r.name, "figure": r.figure, "peer": r.peer, "unit": r.unit,
                   "ratio": r.ratio, "target": r.target, "ok": r.ok, "note": r.note,
                   "samples": r.samples} for r in rows]}, indent=1))
    failed = [r for r in rows if r.ok is False]
    return 1 if failed and not cfg.quick else 0


if __name__ == "__main__":
    sys.exit(main())
