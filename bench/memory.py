"""Memory per route held (issue 16 item 4): what the service keeps per route of a session.

One session of a stand-in openvpn (the test double ``tests/hostile_openvpn.py``: openvpn
itself cannot hand its hooks more than ~52,000 routes) sends N ``add_route`` requests
(IPv4 /32s or IPv6 /56s through its tun, pipelined as the plugin sends them); the
service is measured with the session up and 0 routes, and again with all N acknowledged:

* **RSS**: VmRSS of the service process (every thread: Python's heap, SQLite's page
  cache of the journal, the allocator's arenas), difference / N.  A fresh service per
  family, so the figure is not helped by memory an earlier session left behind.
* **Python objects**: a second fresh service run under ``-X tracemalloc``
  (``bench/service_probe.py``): the live Python allocations after a full garbage
  collection, difference / N (the session's records, the journal's Python side, caches;
  not SQLite's C memory, not the allocator's free lists).

The kernel's own memory for the routes is not counted (it is the same for openvpn as root).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.isv import PYTHON, Service

from bench.common import BENCH_DIR, Bench, rss_kb, wait_for, wait_sessions
from bench.report import Row
from bench.scenario import ScenarioSession

SCENARIO = '''
msgs = numbered([route(i, {v6}) for i in range({n})])
ready_then_wait("{tag}")
t0 = time.monotonic()
acked, failed = send_all(msgs)
done(seconds=time.monotonic() - t0, acked=acked, failed=failed)
'''

TARGET = 200  # bytes per route


class Probe:
    """The probe thread of a service run by ``bench/service_probe.py``."""

    def __init__(self, svc: Service) -> None:
        self.dir = svc.lab.make_dir(f"{svc.name}-probe", mode=0o700)
        self.k = 0

    def read(self) -> dict[str, Any]:
        (self.dir / f"req-{self.k}").touch()
        resp = self.dir / f"resp-{self.k}"
        wait_for(resp.exists, 60, "the service's memory probe", interval=0.01)
        self.k += 1
        got: dict[str, Any] = json.loads(resp.read_text())
        return got


def start_service(b: Bench, name: str, n: int, traced: bool) -> tuple[Service, Probe | None]:
    svc = Service(b.lab, name=name, extra=f"exe_path = {b.scenario_exe}\n"
                  f"max_routes = {max(200_000, n)}\n" + b.limits)
    if not traced:
        svc.start()
        return svc, None
    probe = Probe(svc)
    script = b.lab.write_file("service_probe.py",
                              (BENCH_DIR / "service_probe.py").read_text(), mode=0o644)
    svc.proc = b.lab.popen_service([PYTHON, "-I", "-X", "tracemalloc=1", str(script),
                                    str(probe.dir), "serve", "--settings",
                                    str(svc.settings_path)], label=name)
    proc = svc.proc
    wait_for(lambda: "event=ready" in svc.log() or proc.poll() is not None, 60,
             f"{name} ready")
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited: {svc.log_tail(20)}")
    return svc, probe


def measure(b: Bench, n: int, v6: bool, traced: bool) -> tuple[float, float, float]:
    """(bytes per route, figure before, after) of one fresh service."""
    fam = "v6" if v6 else "v4"
    tag = f"mem{fam}{'t' if traced else ''}"
    svc, probe = start_service(b, f"bsv{tag}", n, traced)
    try:
        spid = svc.service_pid()
        s = ScenarioSession(b, svc, b.users[0], tag, SCENARIO.format(n=n, v6=v6, tag=tag))
        try:
            s.wait_ready()
            wait_sessions(svc, 1, 10)
            time.sleep(0.5)  # the session's start settles (its log, the executor's jobs)

            top: list[list[Any]] = []

            def now() -> float:
                if probe is None:
                    return rss_kb(spid) * 1024.0
                got = probe.read()
                top[:] = got["top"]
                return float(got["traced"])
            before = now()
            s.touch("go")
            r = s.result(300 if traced else 120)
            if r.get("acked") != n or r.get("failed"):
                raise RuntimeError(f"{tag}: {r.get('acked')} of {n} acked, "
                                   f"{r.get('failed')} refused\n{svc.log_tail(10)}")
            time.sleep(0.5)
            after = now()
            for where, size, count in top[:8]:  # where the Python objects are
                print(f"  {tag}: {size / n:7.1f} B/route in {count / n:5.2f} blocks/route "
                      f"at {where}", flush=True)
        finally:
            s.end()
        wait_sessions(svc, 0, 60)
    finally:
        svc.stop()
    return (after - before) / n, before, after


def memory_per_route(b: Bench) -> None:
    n = b.cfg.mem_routes
    for v6 in (False, True):
        fam = f"IPv{6 if v6 else 4}"
        for traced, what, how in (
                (False, "service RSS", "VmRSS with the session up and 0 routes → all acked"),
                (True, "Python objects (tracemalloc)",
                 "live Python allocations after gc, 0 routes → all acked")):
            name = f"memory per route held: {n:,} {fam} routes in one session, {what}"
            try:
                per, before, after = measure(b, n, v6, traced=traced)
            except Exception as exc:  # one failing must not hide the others
                print(f"  {name} failed: {exc}", flush=True)
                b.add(Row(name, None, None, "B/route", "works", False,
                          note=f"error: {str(exc).splitlines()[0][:120]}"))
                continue
            b.add(Row(name, per, None, "B/route", f"≤ {TARGET} B/route", per <= TARGET,
                      note=f"{how}: {before / 2**20:.1f} → {after / 2**20:.1f} MB",
                      samples={"before": [before], "after": [after]}))
