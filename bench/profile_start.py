#!/usr/bin/env python3
"""Where a start's time goes (P1), and a burst's (P3): the service's steps time-stamped.

    PYTHONPATH=. python bench/profile_start.py --starts 100 [--bursts 3]

Runs a service (``exe_path = /bin/true``, P1's; the static stand-in for bursts) under
``bench/start_probe.py``, which stamps every step of the start path with
``time.monotonic()``; a lab user's driver (``bench/user_driver.py``) stamps its connect
and the PID reply with the same clock.  For P1 (sequential starts, each waiting for the
session's end, as the bench does) it prints, per step, the median and p90 of its
duration and of its start since the client's connect, and the peer (the user's own
``Popen`` of ``/bin/true``) of the same run.  For bursts (10 users × 10 at once) it prints
the p99 and the monitor thread's time per start.  Run as root after ``scripts/setup.sh``
with ``ISERVICE_VENV`` naming its venv.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(REPO)

from tests.isv import PYTHON, Service, wait_for  # noqa: E402
from tests.lab import Lab, Pki  # noqa: E402

from bench.common import (  # noqa: E402
    BENCH_DIR,
    Driver,
    build_standin,
    thread_cpu,
    wait_sessions,
)
from bench.report import p99  # noqa: E402

Event = tuple[str, str, float, float]


class Probe:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.k = 0

    def events(self) -> list[Event]:
        (self.dir / f"req-{self.k}").touch()
        resp = self.dir / f"resp-{self.k}"
        wait_for(resp.exists, 30, 0.01, "the start probe")
        self.k += 1
        return [tuple(e) for e in json.loads(resp.read_text())]  # type: ignore[misc]


def start_service(lab: Lab, name: str, exe: str) -> tuple[Service, Probe]:
    svc = Service(lab, name=name, extra=f"exe_path = {exe}\nmax_sessions_per_user = 16\n"
                  "max_clients = 256\nmax_clients_per_user = 64\n")
    probe = Probe(lab.make_dir(f"{name}-probe", mode=0o700))
    script = lab.write_file("start_probe.py", (BENCH_DIR / "start_probe.py").read_text(),
                            mode=0o644)
    svc.proc = lab.popen_service([PYTHON, "-I", str(script), str(probe.dir), "serve",
                                  "--settings", str(svc.settings_path)], label=name)
    proc = svc.proc
    wait_for(lambda: "event=ready" in svc.log() or proc.poll() is not None, 60, 0.05, name)
    if proc.poll() is not None:
        raise RuntimeError(svc.log_tail(30))
    return svc, probe


def q(xs: list[float], f: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(f * len(xs)))]


def p1(lab: Lab, args: argparse.Namespace) -> None:
    svc, probe = start_service(lab, "psvtrue", "/bin/true")
    user = lab.add_user("isvp")
    d = Driver(lab, user, svc.socket_path)
    cfg = lab.config_dir / "approved.ovpn"
    argv = ["/bin/true", "--cd", str(lab.config_dir), "--config", str(cfg)]
    try:
        for _ in range(3):
            d.call("start", workdir=str(lab.config_dir), options=f"--config {cfg.name}",
                   wait_end=True)
        probe.events()
        windows = []
        spawn = []
        for _ in range(args.starts):
            r = d.call("start", workdir=str(lab.config_dir), options=f"--config {cfg.name}",
                       wait_end=True)
            assert r["pid"], r
            windows.append((r["t0"], r["t1"], r["t2"]))
            s = d.call("spawn", argv=argv)
            spawn.append((s["t1"] - s["t0"]) * 1000)
        events = probe.events()
    finally:
        d.close()
        svc.stop()
    total = [(t1 - t0) * 1000 for t0, t1, _ in windows]
    dur: dict[str, list[float]] = collections.defaultdict(list)
    at: dict[str, list[float]] = collections.defaultdict(list)
    threads: dict[str, set[str]] = collections.defaultdict(set)
    for t0, _t1, t2 in windows:
        seen: set[str] = set()
        for name, thread, b, e in events:
            if t0 <= b <= (t2 or b) and name not in seen:
                seen.add(name)
                dur[name].append((e - b) * 1000)
                at[name].append((b - t0) * 1000)
                threads[name].add("loop" if thread == "MainThread" else
                                  "monitor" if thread == "monitor" else
                                  "as-user" if thread.startswith("Dummy") else thread)
    print(f"P1: {args.starts} starts, exe_path=/bin/true; connect → PID reply median "
          f"{statistics.median(total):.3f} ms, p90 {q(total, .9):.3f}, p99 {p99(total):.3f}"
          f"; peer (Popen of /bin/true) median {statistics.median(spawn):.3f} ms")
    print(f"{'step':<44} {'thread':<10} {'begins at':>10} {'takes':>8} {'p90':>8}  (ms, medians)")
    for name in sorted(dur, key=lambda n: statistics.median(at[n])):
        print(f"{name:<44} {','.join(sorted(threads[name])):<10} "
              f"{statistics.median(at[name]):10.3f} {statistics.median(dur[name]):8.3f} "
              f"{q(dur[name], .9):8.3f}")


def machine_busy() -> tuple[float, float]:
    """(CPU seconds busy over all CPUs, seconds of CPU available) since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz  # idle, iowait


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """Every process's (name, CPU seconds so far of its live threads), from schedstat:
    exact, where /proc/PID/stat counts in ticks of 10 ms."""
    out: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            name = (entry / "comm").read_text().strip()
            ns = sum(int((task / "schedstat").read_text().split()[0])
                     for task in (entry / "task").iterdir())
            out[int(entry.name)] = (name, ns / 1e9)
    return out


def cpu_account(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                service: int, sessions: set[int], drivers: set[int]) -> dict[str, float]:
    """CPU ms in the window by who used it: the service, the sessions' processes
    (iservice-runas, then the stand-in: one pid), the users' drivers, kernel threads
    (no parent but kthreadd), the rest.  A process that started and ended inside the
    window is not seen (none of the burst's do)."""
    kernel = {pid for pid, (name, _) in after.items()
              if name.startswith(("kworker", "ksoftirqd", "rcu_", "kdamond", "migration"))}
    out: dict[str, float] = collections.defaultdict(float)
    for pid, (_name, cpu) in after.items():
        used = (cpu - before[pid][1] if pid in before else cpu) * 1000
        who = ("service" if pid == service else "sessions" if pid in sessions
               else "drivers" if pid in drivers else "kernel threads" if pid in kernel
               else "other")
        out[who] += used
    return out


def bursts(lab: Lab, args: argparse.Namespace) -> None:
    stay = build_standin(lab)
    svc, probe = start_service(lab, "psvstay", str(stay))
    users = [lab.add_user("isvq") for _ in range(10)]
    drivers = [Driver(lab, u, svc.socket_path) for u in users]
    lat: list[float] = []
    mon: list[float] = []
    try:
        for k in range(args.bursts):
            probe.events()
            cpu0 = thread_cpu(svc.service_pid())
            procs0, busy0 = cpu_by_process(), machine_busy()
            results = run_burst(lab, drivers)
            procs1, busy1 = cpu_by_process(), machine_busy()
            cpu1 = thread_cpu(svc.service_pid())
            got = [(x["t1"] - x["t0"]) * 1000 for r in results for x in r["results"]
                   if x["pid"]]
            pids = [x["pid"] for r in results for x in r["results"] if x["pid"]]
            events = probe.events()
            starts = [e for e in events if e[0] == "monitor: start (all)"]
            mon += [(e[3] - e[2]) * 1000 for e in starts]
            first = min(x["t0"] for r in results for x in r["results"])
            span = (max(e[3] for e in starts) - min(e[2] for e in starts)) * 1000
            print(f"burst {k}: {len(got)} served, p99 {p99(got):.0f} ms, median "
                  f"{statistics.median(got):.0f} ms; monitor starts {len(starts)}, first "
                  f"begins {(min(e[2] for e in starts) - first) * 1000:.1f} ms after the "
                  f"first connect, span {span:.0f} ms, each median "
                  f"{statistics.median((e[3] - e[2]) * 1000 for e in starts):.2f} ms")
            steps: dict[str, list[float]] = collections.defaultdict(list)
            threads: dict[str, str] = {}
            for name, th, b, e in events:
                steps[name].append((e - b) * 1000)
                threads.setdefault(name, th)
            # the monitor thread's steps (the queue every start waits in), then the others'
            shown = [n for n in steps if threads[n] == "monitor"] + [
                n for n in ("validate (all)", "as-user thread (loop's wait)",
                            "read startup message", "after reply (log file, start time)")
                if n in steps]
            for name in shown:
                print(f"    {name:<40} {threads[name]:<10} median "
                      f"{statistics.median(steps[name]):7.2f} p90 {q(steps[name], .9):7.2f} "
                      f"ms, total {sum(steps[name]):6.1f} ms")
            delta = sorted(((cpu1[t] - cpu0.get(t, 0.0)) * 1000, t) for t in cpu1)
            print("    service CPU by thread (ms): " + ", ".join(
                f"{'loop' if t == svc.service_pid() else t}: {ms:.0f}"
                for ms, t in reversed(delta) if ms >= 1))
            # Is the monitor thread the queue (busy most of the span), or the CPUs?
            account = cpu_account(procs0, procs1, svc.service_pid(), set(pids),
                                  {drv.proc.pid for drv in drivers})
            busy, avail = busy1[0] - busy0[0], busy1[1] - busy0[1]
            print(f"    monitor busy {sum(e[3] - e[2] for e in starts) * 1000 / span:.0%} of "
                  f"its span; all CPUs busy {busy / avail:.0%} of the window "
                  f"({busy * 1000:.0f} ms of {avail * 1000:.0f}); CPU by whom (ms): "
                  + ", ".join(f"{who} {ms:.0f}" for who, ms in
                              sorted(account.items(), key=lambda kv: -kv[1]) if ms >= 1))
            lat += got
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_sessions(svc, 0, 30)
            for drv in drivers:
                drv.call("close")
            time.sleep(0.5)
    finally:
        for drv in drivers:
            drv.close()
        svc.stop()
    print(f"bursts: p99 of all {len(lat)} {p99(lat):.0f} ms, median "
          f"{statistics.median(lat):.0f} ms; monitor time per start median "
          f"{statistics.median(mon):.2f} ms")


def run_burst(lab: Lab, drivers: list[Driver]) -> list[dict[str, Any]]:
    """Every driver sends its 10 requests at once (as bench/p3_concurrency.py)."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def go(drv: Driver) -> None:
        r = drv.call("burst", workdir=str(lab.config_dir), options="--config approved.ovpn",
                     n=10)
        with lock:
            results.append(r)
    ths = [threading.Thread(target=go, args=(drv,)) for drv in drivers]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return results




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starts", type=int, default=100, help="sequential starts (P1); 0: none")
    ap.add_argument("--bursts", type=int, default=0, help="bursts of 10 users × 10 (P3)")
    args = ap.parse_args()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-"))
    try:
        with Lab(Pki.create(pki_dir)) as lab:
            lab.write_client_config("approved.ovpn", "verb 1\n")
            if args.starts:
                p1(lab, args)
            if args.bursts:
                bursts(lab, args)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
