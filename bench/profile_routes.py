#!/usr/bin/env python3
"""Where the route phase's time goes in the service: N routes sent by the real plugin
(``bench_channel.py``'s stand-in), R times, with per-thread CPU (``schedstat``) and,
with ``--py-spy``, a sampling profile of the service attributed to the route path's
steps.

    PYTHONPATH=. python bench/profile_routes.py 10000 --repeat 10 [--py-spy PATH]

Steps (the innermost frame of iservice's own code decides; library frames count for
the iservice frame that called them): channel receive (``linux/mmsg.py`` receiving), the
forwarded environment (``envstream.py``, ``produce.py``), decoding (``wire/``), the
decision (``policy/``), the journal (``journal.py``, SQLite included), rtnetlink
(``linux/netlink.py``: encoding, ``sendmsg``, the kernel's insertion), the effects'
records (``effects/``), acks (``mmsg`` sending), audit lines (``audit.py``), the pipeline
and the session (``pipeline.py``, ``session.py``), the monitor's hand-over and dispatch
(``monitor.py``), the event loop itself (asyncio, selectors).  ``--gil`` keeps only the
samples that hold the GIL (Python running).  Run as root after ``scripts/setup.sh``,
with ``ISERVICE_VENV`` naming its venv.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(REPO)

from tests.isv import PYTHON, Service, wait_for  # noqa: E402
from tests.lab import Lab, Pki  # noqa: E402

from bench.bench_channel import PLUGIN_SCENARIO  # noqa: E402
from bench.common import thread_cpu  # noqa: E402

# (step, pattern on "function (file:line)"), first match from the innermost iservice frame
STEPS = [
    ("channel receive (recvmmsg)", r"BatchReader|iservice/linux/mmsg\.py.*recv"),
    ("acks sent (sendmmsg)", r"BatchSender|iservice/linux/mmsg\.py"),
    ("environment: pieces, parsing, producing the requests",
     r"iservice/(produce|envstream)\.py"),
    ("decoding", r"iservice/wire/"),
    ("decision (policy, ownership)", r"iservice/policy/"),
    ("journal (SQLite)", r"iservice/journal\.py"),
    ("rtnetlink (encode, sendmsg, kernel)", r"iservice/linux/netlink\.py"),
    ("effects (records, route specs)", r"iservice/effects/"),
    ("audit lines", r"iservice/audit\.py"),
    ("pipeline and session (order, settle)", r"iservice/(pipeline|session)\.py"),
    ("monitor (hand-over, lanes, dispatch)", r"iservice/monitor\.py"),
    ("other iservice", r"iservice/"),
]
# A sample whose innermost frame is one of these waits: the thread was idle (py-spy
# counts some lock and condition waits as active).
IDLE = re.compile(r"^(Condition\.wait|wait|_wait_for_tstate_lock|select|[A-Za-z]*Selector\.select|"
                  r"get|acquire|PyThread_acquire_lock_timed|pthread_cond_\w*wait|"
                  r"_worker|run_until_complete|run_forever|_run_once) \(")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")




def step_of(frames: list[str]) -> str:
    """The step of one sampled stack (root first), by its innermost iservice frame."""
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        where = f"{m.group('func')} {m.group('file')}" if m else frame
        if "iservice/" not in where:
            continue
        for step, pattern in STEPS:
            if re.search(pattern, where):
                return step
    if any("asyncio" in f or "selectors" in f for f in frames):
        return "event loop (asyncio)"
    return "other (interpreter, threads)"


def thread_kind(stack: str) -> str:
    """py-spy names threads by their pthread id: tell them apart by their stacks."""
    if "Monitor._serve" in stack:
        return "monitor thread"
    if "run (iservice/server.py" in stack or "<module>" in stack:
        return "event loop thread"
    return "other threads (executor, as-user checks)"


def attribute(collapsed: Path) -> tuple[dict[str, collections.Counter[str]], int]:
    """Samples per thread kind and step from py-spy's raw (collapsed) output, and the
    number of samples left out as idle."""
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    idle = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames or IDLE.match(frames[-1]):
            idle += int(count)
            continue
        out[thread_kind(stack)][step_of(frames)] += int(count)
    return out, idle


V4_ROUTES = """            f"route_gateway_{{i + 1}}=10.8.0.1".encode()]"""
V6_ROUTES = """            f"route_gateway_{{i + 1}}=10.8.0.1".encode()]
net6 = "fd10:{{:x}}:{{:x}}::/56"
env = env[:3] + [f"route_ipv6_network_{{i + 1}}={{net6.format(i >> 8, (i & 0xFF) << 8)}}".encode()
                 for i in range(N)] + [f"route_ipv6_gateway_{{i + 1}}=fd00:8::1".encode()
                                       for i in range(N)]"""


def scenario(n: int, v6: bool) -> str:
    """bench_channel's plugin scenario, with IPv6 routes instead of IPv4 ones if ``v6``."""
    assert V4_ROUTES in PLUGIN_SCENARIO
    return (PLUGIN_SCENARIO.replace(V4_ROUTES, V6_ROUTES) if v6 else PLUGIN_SCENARIO).format(n=n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("count", nargs="?", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--py-spy", help="py-spy binary: sample the service while it works")
    ap.add_argument("--gil", action="store_true",
                    help="py-spy: only samples holding the GIL (Python running, not waiting "
                    "for the GIL or the other thread's lock)")
    ap.add_argument("--out", default=tempfile.gettempdir(), help="where py-spy's output goes")
    ap.add_argument("--v6", action="store_true",
                    help="IPv6 routes (/56s in fd10::/16 via a gateway, as P2's) instead of IPv4")
    args = ap.parse_args()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-"))
    try:
        return run(args, pki_dir)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def run(args: argparse.Namespace, pki_dir: Path) -> int:
    n = args.count
    hostile = (REPO / "tests" / "hostile_openvpn.py").read_text()
    with Lab(Pki.create(pki_dir)) as lab:
        exe = lab.write_file("bin/standin", f"#!{PYTHON} -I\n" + hostile, mode=0o755)
        svc = Service(lab, extra=f"exe_path = {exe}\nmax_routes = {max(100_000, n)}\n")
        svc.start()
        user = lab.add_user("isvb")
        spid = svc.service_pid()
        spy = None
        raw = Path(args.out) / f"iservice-profile-{n}.txt"
        if args.py_spy:
            # --nonblocking: never stop the service to sample it (stopping it 1,000
            # times a second made 10,000 routes take 3 s instead of 0.6 s)
            spy = subprocess.Popen([args.py_spy, "record", "-p", str(spid), "--threads",
                                    "--nonblocking", "-r", "250", "-f", "raw", "-o", str(raw),
                                    *(["--gil"] if args.gil else [])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: True, 1)
        walls: list[float] = []
        cpu: dict[str, list[float]] = collections.defaultdict(list)
        try:
            for k in range(args.repeat):
                name = f"prof{n}-{k}.ovpn"
                lab.write_file(f"client/{name}", scenario(n, args.v6))
                before = thread_cpu(spid)
                cp = svc.start_as(user, "--config", name)
                assert cp.returncode == 0, cp.stderr
                pid = int(cp.stdout.strip())
                out = user.home / f"{name}.result"
                wait_for(out.exists, 120, what=f"{n} routes")
                r = json.loads(out.read_text())
                assert r["acked"] == n and r["failed"] == 0, r
                after = thread_cpu(spid)
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not svc.journal()["sessions"], 30, what="undo")
                walls.append(r["seconds"])
                delta = {t: after[t] - before.get(t, 0.0) for t in after}
                loop = delta.pop(spid, 0.0)
                others = sorted(delta.values(), reverse=True)
                cpu["event loop thread"].append(loop)
                cpu["busiest other thread (the monitor)"].append(others[0] if others else 0)
                cpu["the rest"].append(sum(others[1:]))
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            svc.stop()
    med = statistics.median(walls)
    print(f"{n} routes, {args.repeat} runs: first request → last ack median "
          f"{med * 1000:.1f} ms ({n / med:,.0f} routes/s); runs "
          f"{', '.join(f'{x * 1000:.0f}' for x in walls)} ms")
    print("service CPU per run (schedstat, from the session's start to the last ack, "
          "medians):")
    for kind, xs in cpu.items():
        print(f"  {kind:<40} {statistics.median(xs) * 1000:7.1f} ms "
              f"({statistics.median(xs) / n * 1e6:.2f} µs/route)")
    if args.py_spy and raw.exists():
        by_kind, idle = attribute(raw)
        print(f"py-spy samples ({raw}; {idle} idle ones left out), by thread and step:")
        for kind, steps in sorted(by_kind.items()):
            total = sum(steps.values())
            print(f"  {kind}: {total} samples")
            for step, c in steps.most_common():
                print(f"    {step:<40} {c / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
