"""The service's side of N routes, alone: first message sent → last ack received.

A stand-in for openvpn (``tests/hostile_openvpn.py``, a test double run as
``exe_path`` with the user's rights) loads the installed plugin and calls its
``route-up`` with an environment of N routes, as openvpn would, timing the call
(``--sender python``: N pre-encoded ``add_route`` messages sent pipelined from Python,
first send → last ack).  No openvpn, no hook start-up: what is left is the service (decode, decide,
journal, rtnetlink, audit lines, acks).  ``--profile FILE`` runs the service under
cProfile and writes its profile there (``python -m pstats FILE``).

    PYTHONPATH=. python bench/bench_channel.py 1000 10000 --repeat 3 [--profile /tmp/p]

Run as root after ``scripts/setup.sh`` (the service runs from the installed venv).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.isv import ISERVICE, PYTHON, Service, wait_for  # noqa: E402
from tests.lab import Lab, Pki  # noqa: E402

SCENARIO = """
import select, time
N = {n}
own = m.Interface(tun_index, tun)
from ipaddress import IPv4Address
msgs = [m.with_message_id(m.encode_message(m.RouteMsg(
            m.MsgType.ADD_ROUTE, 0, IPv4Address((100 << 24 | 64 << 16) + 64 * i), 26,
            IPv4Address(0), own, -1)), i + 1) for i in range(N)]
chan.setblocking(False)
sent = acked = failed = 0
t0 = time.monotonic()
while acked < N:
    want = select.POLLIN | (select.POLLOUT if sent < N else 0)
    p = select.poll(); p.register(chan, want)
    for _fd, ev in p.poll(60000):
        if ev & select.POLLOUT:
            while sent < N:
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
                acked += 1
                failed += struct.unpack_from("<i", a, 24)[0] != 0
t1 = time.monotonic()
done(seconds=t1 - t0, acked=acked, failed=failed)
"""


# The same, sent by the real plugin (loaded with ctypes by the stand-in, called with an
# openvpn-like route-up environment): what openvpn's route-up does, minus openvpn.
PLUGIN_SCENARIO = """
import ctypes, time
from iservice.plugin import plugin_path
N = {n}
CPP = ctypes.POINTER(ctypes.c_char_p)
Log = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p)
class Callbacks(ctypes.Structure):
    _fields_ = [("log", Log)] + [(f"f{{i}}", ctypes.c_void_p) for i in range(4)]
class OpenIn(ctypes.Structure):
    _fields_ = [("type_mask", ctypes.c_int), ("argv", CPP), ("envp", CPP),
                ("callbacks", ctypes.POINTER(Callbacks)), ("ssl_api", ctypes.c_int),
                ("v", ctypes.c_char_p), ("major", ctypes.c_uint), ("minor", ctypes.c_uint),
                ("patch", ctypes.c_char_p)]
class OpenRet(ctypes.Structure):
    _fields_ = [("type_mask", ctypes.c_int), ("handle", ctypes.c_void_p), ("rl", ctypes.c_void_p)]
class FuncIn(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("argv", CPP), ("envp", CPP), ("handle", ctypes.c_void_p),
                ("pcc", ctypes.c_void_p), ("depth", ctypes.c_int), ("cert", ctypes.c_void_p)]
def strings(items):
    arr = (ctypes.c_char_p * (len(items) + 1))(*items)
    return arr
lines = []
cb = Callbacks(log=Log(lambda f, n, fmt, a: lines.append(a)))
lib = ctypes.CDLL(plugin_path())
oin = OpenIn(0xFFFF, strings([b"p", str(chan.fileno()).encode()]), strings([]),
             ctypes.pointer(cb), 1, b"2.6.14", 2, 6, b"14")
ret = OpenRet()
assert lib.openvpn_plugin_open_v3(5, ctypes.byref(oin), ctypes.byref(ret)) == 0
env = [b"script_type=route-up", b"dev=" + tun.encode(), b"route_vpn_gateway=10.8.0.1"]
for i in range(N):
    a = (100 << 24 | 64 << 16) + 64 * i
    net = ".".join(str(a >> s & 255) for s in (24, 16, 8, 0))
    env += [f"route_network_{{i + 1}}={{net}}".encode(),
            f"route_netmask_{{i + 1}}=255.255.255.192".encode(),
            f"route_gateway_{{i + 1}}=10.8.0.1".encode()]
fin = FuncIn(type=2, argv=strings([b"p"]), envp=strings(env), handle=ret.handle)
t0 = time.monotonic()
rc = lib.openvpn_plugin_func_v3(5, ctypes.byref(fin), ctypes.c_void_p(0))
t1 = time.monotonic()
done(seconds=t1 - t0, acked=N if rc == 0 else 0, failed=rc, log=[x.decode() for x in lines if x])
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", help="run the service under cProfile, write the profile here")
    ap.add_argument("--sender", choices=("plugin", "python"), default="plugin",
                    help="who sends the routes: the installed plugin (default) or Python")
    args = ap.parse_args()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-"))
    try:
        return run(args, pki_dir)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def service_cpu(pid: int) -> float:
    """CPU seconds the service's threads have used so far (schedstat: nanoseconds; the
    steadier figure on a busy machine, and it includes the session's start and undo)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def run(args: argparse.Namespace, pki_dir: Path) -> int:
    hostile = (REPO / "tests" / "hostile_openvpn.py").read_text()
    with Lab(Pki.create(pki_dir)) as lab:
        exe = lab.write_file("bin/standin", f"#!{PYTHON} -I\n" + hostile, mode=0o755)
        # audit_burst: every route's audit line is written, in every repeat (the default
        # per-user limit would summarize most lines of the later repeats: less work)
        svc = Service(lab, extra=f"exe_path = {exe}\nmax_routes = 100000\n"
                      "audit_burst = 2147483647\n")
        if args.profile:
            argv = [PYTHON, "-m", "cProfile", "-o", args.profile, ISERVICE, "serve",
                    "--settings", str(svc.settings_path)]
            svc.proc = lab.popen_service(argv, label="svc")
            wait_for(svc.connectable, 20, what="service")
        else:
            svc.start()
        user = lab.add_user("isvb")
        results: dict[int, list[float]] = {}
        cpu: dict[int, list[float]] = {}
        spid = svc.service_pid()
        for n in args.counts:
            for k in range(args.repeat):
                name = f"routes{n}-{k}.ovpn"
                text = PLUGIN_SCENARIO if args.sender == "plugin" else SCENARIO
                lab.write_file(f"client/{name}", text.format(n=n))
                cpu0 = service_cpu(spid)
                cp = svc.start_as(user, "--config", name)
                assert cp.returncode == 0, cp.stderr
                pid = int(cp.stdout.strip())
                out = user.home / f"{name}.result"
                wait_for(out.exists, 120, what=f"{n} routes")
                r = json.loads(out.read_text())
                assert r["acked"] == n and r["failed"] == 0, r
                results.setdefault(n, []).append(r["seconds"])
                cpu.setdefault(n, []).append(service_cpu(spid) - cpu0)
                os.kill(pid, 9)
                wait_for(lambda: not svc.journal()["sessions"], 30, what="undo")
        svc.stop()
        for n, xs in results.items():
            med = statistics.median(xs)
            print(f"{n:>6} routes: median {med * 1000:8.1f} ms  ({n / med:,.0f} routes/s)  "
                  f"service CPU {statistics.median(cpu[n]) * 1000:.1f} ms  "
                  f"runs: {', '.join(f'{x * 1000:.1f}' for x in xs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
