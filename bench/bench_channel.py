"""The service's side of N routes, alone: first message sent → last ack received.

A stand-in for openvpn (``tests/hostile_openvpn.py``, a test double run as
``exe_path`` with the user's rights) sends N pre-encoded ``add_route`` messages
through the session channel, pipelined like the hook, and times first send → last
ack.  No openvpn, no hook start-up: what is left is the service (decode, decide,
journal, rtnetlink, audit lines, acks).  ``--profile FILE`` runs the service under
cProfile and writes its profile there (``python -m pstats FILE``).

    PYTHONPATH=. python bench/bench_channel.py 1000 10000 --repeat 3 [--profile /tmp/p]

Run as root after ``scripts/setup.sh`` (the service runs from the installed venv).
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("counts", nargs="*", type=int, default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", help="run the service under cProfile, write the profile here")
    args = ap.parse_args()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-"))
    try:
        return run(args, pki_dir)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def run(args: argparse.Namespace, pki_dir: Path) -> int:
    hostile = (REPO / "tests" / "hostile_openvpn.py").read_text()
    with Lab(Pki.create(pki_dir)) as lab:
        exe = lab.write_file("bin/standin", f"#!{PYTHON} -I\n" + hostile, mode=0o755)
        svc = Service(lab, extra=f"exe_path = {exe}\nmax_routes = 100000\n")
        if args.profile:
            argv = [PYTHON, "-m", "cProfile", "-o", args.profile, ISERVICE, "serve",
                    "--settings", str(svc.settings_path)]
            svc.proc = lab.popen_service(argv, label="svc")
            wait_for(svc.connectable, 20, what="service")
        else:
            svc.start()
        user = lab.add_user("isvb")
        results: dict[int, list[float]] = {}
        for n in args.counts:
            for k in range(args.repeat):
                name = f"routes{n}-{k}.ovpn"
                lab.write_file(f"client/{name}", SCENARIO.format(n=n))
                cp = svc.start_as(user, "--config", name)
                assert cp.returncode == 0, cp.stderr
                pid = int(cp.stdout.strip())
                out = user.home / f"{name}.result"
                wait_for(out.exists, 120, what=f"{n} routes")
                r = json.loads(out.read_text())
                assert r["acked"] == n and r["failed"] == 0, r
                results.setdefault(n, []).append(r["seconds"])
                os.kill(pid, 9)
                wait_for(lambda: not svc.journal()["sessions"], 30, what="undo")
        svc.stop()
        for n, xs in results.items():
            med = statistics.median(xs)
            print(f"{n:>6} routes: median {med * 1000:8.1f} ms  ({n / med:,.0f} routes/s)  "
                  f"runs: {', '.join(f'{x * 1000:.1f}' for x in xs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
