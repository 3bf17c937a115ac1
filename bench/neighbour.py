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
stand-in that waits to be killed; killed after the reply; 10 a second, and one as the
flood starts), and in a stand-in session of its own one route request's send → ack (an
``add_route`` and a ``del_route`` of one /32 in turn, every 5 ms).  A probe counts for
the flood if it was under way at some time between the flood's first request (or line)
and the service catching up: the answer to the first route probe sent after the flood's
last ack (work the flood queued may still be running then).  The peer is the same
probe's p99 in the quiet window just before.  Each flood kind gets a fresh service; one
that has not caught up ``noisy_cap`` seconds after the flood began is killed (``kill
-9``: the probes under way count with their time so far, a lower bound) and then
started again once so that its recovery undoes what the sessions left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.isv import Service
from tests.lab import User

from bench.common import Bench, Driver, wait_for
from bench.report import Row, p99
from bench.scenario import ScenarioSession

TARGET_MS = 50.0
PACE = 0.1  # seconds from one PID-reply probe to the next, at least

PROBER = '''
k = 0
chan.settimeout(None)
log = open(f"{{HOME}}/{tag}.samples", "w", buffering=1)
ready_then_wait("{tag}")
deadline = time.monotonic() + {limit}
while not os.path.exists(f"{{HOME}}/{tag}.stop") and time.monotonic() < deadline:
    raw = m.with_message_id(m.encode_message(route(1 << 20, False, add=k % 2 == 0)), k + 1)
    t0 = time.monotonic()
    try:
        chan.send(raw)
        while True:
            a = chan.recv(64)
            if not a or struct.unpack_from("<i", a, 16)[0] == k + 1:
                break
    except OSError:
        a = b""
    t1 = time.monotonic()
    log.write(f"{{t0}} {{(t1 - t0) * 1000}} {{struct.unpack_from('<i', a, 24)[0] if a else -1}}\\n")
    if not a:
        break  # the service is gone
    k += 1
    time.sleep(0.005)
done(probes=k)
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
    user: User
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t0, ms)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _kick: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.driver = Driver(self.b.lab, self.user, self.svc.socket_path)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops after the probe under way (returns at once: ``join`` waits)."""
        self._stop.set()
        self._kick.set()

    def kick(self) -> None:
        """The next probe now, not after the pace: one starts with the flood, however
        short the flood is."""
        self._kick.set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.driver.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            t_call = time.monotonic()
            try:
                r = self.driver.call("start", workdir=str(self.b.lab.config_dir),
                                     options="--config idle.ovpn", wait_end=False)
            except (RuntimeError, OSError, ValueError) as exc:  # the service was killed
                self.samples.append((t_call, (time.monotonic() - t_call) * 1000))
                self.errors.append(f"no reply: {str(exc)[:80]}")
                return
            if r["pid"] is None:
                self.errors.append(str(r["error"]))
            else:
                self.samples.append((r["t0"], (r["t1"] - r["t0"]) * 1000))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r["pid"], signal.SIGKILL)
            self.driver.call("close")
            # Not waiting for the undo: behind a flood's backlog it would stop the probes
            # (the service's session limits are raised for this); at most one every
            # PACE s: each start and undo holds the monitor thread ~25 ms, which the route
            # probes of the quiet window would otherwise keep meeting.
            self._kick.wait(max(0.0, t_call + PACE - time.monotonic()))
            self._kick.clear()


def _within(samples: list[tuple[float, float]], t0: float, t1: float) -> list[float]:
    """Latencies of the probes under way at some time between t0 and t1."""
    return [ms for s, ms in samples if s <= t1 and s + ms / 1000 >= t0]


def _route_samples(path: Path) -> list[tuple[float, float]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((float(parts[0]), float(parts[1])))
    return out


@dataclass
class Window:
    quiet: tuple[float, float]
    flood: tuple[float, float]  # first request → the service caught up (or the cap)
    note: str


def noisy_neighbour(b: Bench) -> None:
    cfg = b.cfg
    b.lab.write_file("client/idle.ovpn", "# the PID-reply probes' stand-in waits to be killed\n")
    kinds = [("wfp", f"{cfg.noisy_wfp:,} identical add_wfp_block requests", FLOOD_WFP,
              cfg.noisy_wfp),
             ("output", f"{cfg.noisy_lines:,} output lines changing the server list "
              "(kill switch on)", FLOOD_OUTPUT, cfg.noisy_lines),
             ("routes", f"{cfg.noisy_routes:,} routes", FLOOD_ROUTES, cfg.noisy_routes)]
    for kind, desc, text, n in kinds:
        try:
            pid_samples, route_samples, w = one_flood(b, kind, text, n)
        except Exception as exc:  # one flood failing must not hide the others
            print(f"  noisy {kind} failed: {exc}", flush=True)
            b.add(Row(f"noisy neighbour, {desc}", None, None, "ms", "works", False,
                      note=f"error: {str(exc).splitlines()[0][:120]}"))
            continue
        for what, samples in (("another user's connect → PID reply", pid_samples),
                              ("another session's route request → ack", route_samples)):
            quiet, loud = _within(samples, *w.quiet), _within(samples, *w.flood)
            fig = p99(loud) if loud else None
            peer = p99(quiet) if quiet else None
            b.add(Row(f"noisy neighbour, {desc}: {what}, p99 of {len(loud)}", fig, peer,
                      "ms", f"≤ {TARGET_MS:.0f} ms", None if fig is None else fig <= TARGET_MS,
                      note=f"peer: the same, no flood (p99 of {len(quiet)}); {w.note}; "
                      + (f"max {max(loud):.0f} ms" if loud else
                         "no probe was under way during the flood"),
                      samples={"flood": loud, "quiet": quiet}))


def one_flood(b: Bench, kind: str, text: str,
              n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]], Window]:
    """One flood with its quiet window before, on a fresh service; the probes' samples."""
    cfg = b.cfg
    flooder, victim = b.users[0], b.users[1]
    # limits raised: the PID-reply probes do not wait for their sessions' undo
    svc = Service(b.lab, name=f"bsvnoisy{kind}", extra=f"exe_path = {b.scenario_exe}\n"
                  f"max_routes = {max(200_000, n + 10)}\nmax_sessions_per_user = 1000\n"
                  "max_clients = 1000\nmax_clients_per_user = 1000\n")
    svc.start()
    killed = False
    prober = ScenarioSession(b, svc, victim, "prober", PROBER.format(tag="prober", limit=900))
    samples_path = victim.home / "prober.samples"
    pid_probe = PidProbe(b, svc, victim)
    flood: ScenarioSession | None = None
    try:
        prober.wait_ready()
        prober.touch("go")
        pid_probe.start()
        tag = f"flood{kind}"
        flood = ScenarioSession(b, svc, flooder, tag, text.format(n=n, tag=tag))
        flood.wait_ready(120)
        q0 = time.monotonic()
        time.sleep(cfg.noisy_quiet)
        q1 = time.monotonic()
        flood.touch("go")
        f0 = time.monotonic()
        # a PID-reply probe as the flood begins, however short the flood is
        wait_for(lambda: (flooder.home / f"{tag}.started").exists(), 30, f"{tag} started",
                 interval=0.0005)
        pid_probe.kick()
        cap = f0 + cfg.noisy_cap
        result = flood.result_path()

        def caught_up() -> float | None:
            """When the first route probe sent after the flood's last ack was answered."""
            if not result.exists():
                return None
            r = json.loads(result.read_text())
            later = [t + ms / 1000 for t, ms in _route_samples(samples_path) if t >= r["t1"]]
            return min(later) if later else None
        while (end := caught_up()) is None and time.monotonic() < cap:
            time.sleep(0.02)
        answered = result.exists()  # the flood's last ack (before any kill below)
        if end is None:
            # not caught up: the probes under way count with their time so far
            killed = True
            end = time.monotonic()
            prober.touch("stop")
            pid_probe.stop()
            svc.kill9()
            note = (f"the service had not caught up {cfg.noisy_cap:.0f} s after the flood "
                    "began: killed, the probes under way count with their time so far")
            if answered:
                r = json.loads(result.read_text())
                note += f"; flood's last ack {r['t1'] - r['t0']:.2f} s"
            else:
                note += "; the flood was not yet answered"
        else:
            r = json.loads(result.read_text())
            if r.get("failed") or (kind != "output" and r.get("acked") != n):
                raise RuntimeError(f"flood {kind}: {r.get('acked')} acked, "
                                   f"{r.get('failed')} refused\n{svc.log_tail(10)}")
            note = (f"flood's last ack {r['t1'] - r['t0']:.2f} s, caught up "
                    f"{end - r['t0']:.2f} s after its start")
            f0 = r["t0"]
        print(f"  noisy {kind}: {note}", flush=True)
        pid_probe.stop()
        prober.touch("stop")
        pid_probe.join()
        if not killed:
            prober.result(60)
    finally:
        pid_probe.stop()
        pid_probe.join()
        if flood is not None:
            flood.end()
        prober.end()
        if killed:  # start it again once: its recovery undoes what the sessions left
            svc.start(timeout=60)
        with contextlib.suppress(Exception):
            wait_for(lambda: not svc.journal()["sessions"], 60, "every session undone")
        svc.stop(timeout=60)
    if pid_probe.errors:
        print(f"  noisy {kind}: PID-reply probes without a PID: {pid_probe.errors[:3]}",
              flush=True)
    return pid_probe.samples, _route_samples(samples_path), Window((q0, q1), (f0, end), note)
