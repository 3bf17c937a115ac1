"""Noisy neighbour (issue 13 item 4): one session floods the service; another user's
requests must still be served quickly.

The flooding session (a stand-in openvpn, the test double ``tests/hostile_openvpn.py``,
user A) floods in one of three ways, each after a quiet window of the same probes:

* ``wfp``: N identical ``add_wfp_block`` requests, pipelined;
* ``output``: N lines of openvpn output, each naming another VPN server
  (``UDPv4 link remote: [AF_INET]192.0.2.X:P``, what ``policy/redirect.py``'s
  ``PushWatcher`` takes the server list from), with the session's kill switch on (one
  ``add_wfp_block`` first: the server list is what every kill switch lets through),
  then one request whose ack says the service has read every line;
* ``routes``: N ``add_route`` requests (IPv4 /32s through its tun), pipelined.

Meanwhile user B measures, continuously: connect → PID reply of a new session (a
stand-in that waits to be killed; killed after the reply, the next probe once it is
undone), and in a stand-in session of its own one route request's send → ack (an
``add_route`` and a ``del_route`` of one /32 in turn, every 5 ms).  A probe counts for
the flood if it was under way between the flood's first request (or line) and the ack
of its last; the peer is the same probe's p99 in the quiet window just before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from tests.isv import Service

from bench.common import Bench, Driver, wait_for
from bench.report import Row, p99
from bench.scenario import ScenarioSession

TARGET_MS = 50.0

PROBER = '''
msgs = []
k = 0
samples = []
chan.settimeout(120)
ready_then_wait("{tag}")
deadline = time.monotonic() + {limit}
while not os.path.exists(f"{{HOME}}/{tag}.stop") and time.monotonic() < deadline:
    raw = m.with_message_id(m.encode_message(route(1 << 20, False, add=k % 2 == 0)), k + 1)
    t0 = time.monotonic()
    chan.send(raw)
    while True:
        a = chan.recv(64)
        if not a or struct.unpack_from("<i", a, 16)[0] == k + 1:
            break
    t1 = time.monotonic()
    samples.append([t0, (t1 - t0) * 1000, struct.unpack_from("<i", a, 24)[0] if a else -1])
    k += 1
    time.sleep(0.005)
done(samples=samples)
'''

FLOOD_WFP = '''
msgs = numbered([m.WfpBlockMsg(m.MsgType.ADD_WFP_BLOCK, 0, m.WFP_BLOCK_DNS, own)] * {n})
ready_then_wait("{tag}")
t0 = time.monotonic()
acked, failed = send_all(msgs)
done(t0=t0, t1=time.monotonic(), acked=acked, failed=failed)
'''

FLOOD_OUTPUT = '''
import sys
block = numbered([m.WfpBlockMsg(m.MsgType.ADD_WFP_BLOCK, 0, m.WFP_BLOCK_DNS, own)])
first = send_all(block)
lines = "".join(f"2026-01-01 00:00:00 UDPv4 link remote: [AF_INET]192.0.2.{{i % 200 + 1}}"
                f":{{1024 + i % 60000}}\\n" for i in range({n}))
last = numbered([route(0, False)], first=2)
ready_then_wait("{tag}")
t0 = time.monotonic()
out = sys.stdout.buffer
out.write(lines.encode())
out.flush()
t_written = time.monotonic()
acked, failed = send_all(last)  # answered once the service has read every line before it
done(t0=t0, t1=time.monotonic(), t_written=t_written, acked=acked + first[0],
     failed=failed + first[1])
'''

FLOOD_ROUTES = '''
msgs = numbered([route(i, False) for i in range({n})])
ready_then_wait("{tag}")
t0 = time.monotonic()
acked, failed = send_all(msgs)
done(t0=t0, t1=time.monotonic(), acked=acked, failed=failed)
'''


@dataclass
class PidProbe:
    """User B's connect → PID reply, in a thread, until stopped."""
    b: Bench
    svc: Service
    driver: Driver
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t0, ms)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        base = len(self.svc.journal()["sessions"])
        while not self._stop.is_set():
            r = self.driver.call("start", workdir=str(self.b.lab.config_dir),
                                 options="--config idle.ovpn", wait_end=False)
            if r["pid"] is None:
                self.errors.append(str(r["error"]))
            else:
                self.samples.append((r["t0"], (r["t1"] - r["t0"]) * 1000))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r["pid"], signal.SIGKILL)
            self.driver.call("close")
            # the next probe once this one is undone (not to pile up sessions)
            deadline = time.monotonic() + 60
            while len(self.svc.journal()["sessions"]) > base and \
                    time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.005)
            time.sleep(0.01)


def _within(samples: list[tuple[float, float]], t0: float, t1: float) -> list[float]:
    """Latencies of the probes under way at some time between t0 and t1."""
    return [ms for s, ms in samples if s <= t1 and s + ms / 1000 >= t0]


def noisy_neighbour(b: Bench) -> None:
    cfg = b.cfg
    flooder, victim = b.users[0], b.users[1]
    svc = Service(b.lab, name="bsvnoisy", extra=f"exe_path = {b.scenario_exe}\n"
                  f"max_routes = {max(200_000, cfg.noisy_routes + 10)}\n" + b.limits)
    b.lab.write_file("client/idle.ovpn", "# the PID-reply probes' stand-in waits to be killed\n")
    svc.start()
    kinds = [("wfp", f"{cfg.noisy_wfp:,} identical add_wfp_block requests", FLOOD_WFP,
              cfg.noisy_wfp),
             ("output", f"{cfg.noisy_lines:,} output lines changing the server list "
              "(kill switch on)", FLOOD_OUTPUT, cfg.noisy_lines),
             ("routes", f"{cfg.noisy_routes:,} routes", FLOOD_ROUTES, cfg.noisy_routes)]
    prober = ScenarioSession(b, svc, victim, "prober",
                             PROBER.format(tag="prober", limit=900))
    pid_probe = PidProbe(b, svc, Driver(b.lab, victim, svc.socket_path))
    windows: list[tuple[str, str, float, float, float, float, dict[str, float]]] = []
    try:
        prober.wait_ready()
        prober.touch("go")
        pid_probe.start()
        for kind, desc, text, n in kinds:
            flood = ScenarioSession(b, svc, flooder, f"flood{kind}",
                                    text.format(n=n, tag=f"flood{kind}"))
            try:
                flood.wait_ready(120)
                q0 = time.monotonic()
                time.sleep(cfg.noisy_quiet)
                q1 = time.monotonic()
                flood.touch("go")
                r = flood.result(600)
                if r.get("failed") or (kind != "output" and r.get("acked") != n):
                    raise RuntimeError(f"flood {kind}: {r.get('acked')} acked, "
                                       f"{r.get('failed')} refused\n{svc.log_tail(10)}")
                extra = {"written": r["t_written"] - r["t0"]} if "t_written" in r else {}
                windows.append((kind, desc, q0, q1, r["t0"], r["t1"], extra))
                print(f"  noisy {kind}: flood of {n:,} took {r['t1'] - r['t0']:.2f} s",
                      flush=True)
            finally:
                flood.end()
            wait_for(lambda: len(svc.journal()["sessions"]) <= 2, 120,
                     "the flooding session undone")
        pid_probe.stop()
        prober.touch("stop")
        route_samples = [(t, ms) for t, ms, _err in prober.result(60)["samples"]]
    finally:
        pid_probe.stop()
        pid_probe.driver.close()
        prober.end()
        with contextlib.suppress(Exception):
            wait_for(lambda: not svc.journal()["sessions"], 60, "every session undone")
        svc.stop()
    if pid_probe.errors:
        print(f"  noisy: PID-reply probes refused: {pid_probe.errors[:3]}", flush=True)
    for _kind, desc, q0, q1, f0, f1, extra in windows:
        took = f"flood {f1 - f0:.2f} s" + "".join(f", {k} {v:.2f} s" for k, v in extra.items())
        for what, samples in (("another user's connect → PID reply", pid_probe.samples),
                              ("another session's route request → ack", route_samples)):
            quiet, loud = _within(samples, q0, q1), _within(samples, f0, f1)
            fig = p99(loud) if loud else None
            peer = p99(quiet) if quiet else None
            b.add(Row(f"noisy neighbour, {desc}: {what}, p99 of {len(loud)}", fig, peer,
                      "ms", f"≤ {TARGET_MS:.0f} ms", None if fig is None else fig <= TARGET_MS,
                      note=f"peer: the same, no flood (p99 of {len(quiet)}); {took}; "
                      f"max {max(loud, default=0):.0f} ms",
                      samples={"flood": loud, "quiet": quiet}))
