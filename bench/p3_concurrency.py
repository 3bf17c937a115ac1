"""P3 many sessions: 10 users × 10 requests sent at once, three bursts, the first one
cold (a stand-in openvpn that waits to be killed), then 20 real openvpn sessions to one
server: all served, p99 connect → PID reply, the service's RSS."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from typing import Any

from tests.isv import Service
from tests.lab import INIT_DONE, User

from bench.common import Bench, Driver, cpu_probe_ms, rss_mb, session_logs, wait_sessions
from bench.report import Row, median, p99


def p3(b: Bench) -> None:
    svc = b.svc_stay
    spid = svc.service_pid()
    users = b.users[: b.cfg.p3_users]
    drivers = [b.driver(svc, u) for u in users]
    cfgname = "approved.ovpn"
    # warm up: one session, ended, so "idle" is the service after its first session
    w = drivers[0].call("start", workdir=str(b.lab.config_dir),
                        options=f"--config {cfgname}", wait_end=False)
    os.kill(w["pid"], signal.SIGKILL)
    wait_sessions(svc, 0, 10)
    drivers[0].call("close")
    # the service gives memory back 2 s after its last session (IDLE_TRIM_DELAY)
    time.sleep(3.0)
    idle = rss_mb(spid)
    total = b.cfg.p3_users * b.cfg.p3_per_user
    lat: list[float] = []
    burst_p99: list[float] = []
    errors: list[str] = []
    missing = 0
    live = 0.0
    # Several bursts, the first one cold: a single burst's p99 is its one or two
    # slowest starts, which move by ±50 ms between runs on this 2-core VM.
    probes: list[float] = []  # the machine's speed right before each burst
    for _ in range(b.cfg.p3_bursts):
        probes.append(cpu_probe_ms())
        results = _burst(b, svc, drivers, cfgname)
        got = [(x["t1"] - x["t0"]) * 1000 for r in results for x in r["results"] if x["pid"]]
        lat += got
        burst_p99.append(p99(got) if got else math.inf)
        errors += [x["error"] for r in results for x in r["results"] if not x["pid"]]
        missing += sum(r["missing"] for r in results)
        pids = [x["pid"] for r in results for x in r["results"] if x["pid"]]
        wait_sessions(svc, len(pids), 10)
        live = max(live, rss_mb(spid))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_sessions(svc, 0, 30)
        for d in drivers:
            d.call("close")
    time.sleep(3.0)  # as for the idle figure
    after = rss_mb(spid)
    bursts = b.cfg.p3_bursts
    served = len(lat)
    b.add(Row(f"P3 {total} concurrent sessions ({b.cfg.p3_users} users × "
              f"{b.cfg.p3_per_user}, stand-in), {bursts} bursts: served", served,
              total * bursts, "sessions", "all",
              served == total * bursts and not errors and not missing,
              note=f"errors: {errors[:2]}" if errors else ""))
    per_burst = ", ".join(f"{x:.0f}" for x in burst_p99)
    b.add(Row(f"P3 {total} concurrent sessions: connect → PID reply, p99 of all "
              f"{served}", p99(lat), None, "ms", "≤ 250 ms", p99(lat) <= 250,
              note=f"median {median(lat):.0f} ms; p99 per burst {per_burst} ms; the CPU "
                   f"probe before each burst {', '.join(f'{x:.2f}' for x in probes)} ms",
              samples={"iservice": lat, "burst_p99": burst_p99, "cpu_probe": probes}))
    b.add(Row(f"P3 service RSS with {total} live sessions (highest of the bursts)", live,
              idle, "MB", "≤ 80 MB", live <= 80, note="peer: idle"))
    b.add(Row("P3 service RSS after they ended", after, idle, "MB", "≤ 1.1× idle",
              after <= 1.1 * idle, note="peer: idle"))
    if b.cfg.p3_real:
        p3_real(b)


def _burst(b: Bench, svc: Service, drivers: list[Driver],
           cfgname: str) -> list[dict[str, Any]]:
    """Every driver sends its requests at once; their results."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def go(d: Driver) -> None:
        r = d.call("burst", workdir=str(b.lab.config_dir), options=f"--config {cfgname}",
                   n=b.cfg.p3_per_user)
        with lock:
            results.append(r)
    threads = [threading.Thread(target=go, args=(d,)) for d in drivers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def p3_real(b: Bench) -> None:
    svc = b.svc_real
    spid = svc.service_pid()
    n = b.cfg.p3_real
    server = b.lab.start_server("", port=1300, name="p3", network="10.60.0.0/22",
                                network6="fd00:60::/64")
    cfg = b.lab.write_client_config("p3.ovpn", "verb 1\n", port=1300)
    before = session_logs(svc)
    users = b.users[:2]
    per = [n // 2, n - n // 2]
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def go(u: User, k: int) -> None:
        r = b.driver(svc, u).call("burst", workdir=str(b.lab.config_dir),
                                  options=f"--config {cfg.name}", n=k)
        with lock:
            results.append(r)
    threads = [threading.Thread(target=go, args=(u, k))
               for u, k in zip(users, per, strict=True)]
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
        wait_sessions(svc, 0, 30)
        for u in users:
            b.driver(svc, u).call("close")
        server.stop()
    b.add(Row(f"P3 {n} real openvpn sessions to one server: connected", done, n,
              "sessions", "all", done == n and len(lat) == n,
              note=f"all connected {t_all:.1f} s after the requests"))
    b.add(Row(f"P3 {n} real openvpn sessions: connect → PID reply, p99", p99(lat), None,
              "ms", "≤ 250 ms", p99(lat) <= 250, samples={"iservice": lat}))
    b.add(Row(f"P3 service RSS with {n} live real sessions", live, None, "MB",
              "≤ 80 MB", live <= 80))
