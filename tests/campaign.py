"""The crash campaign (issue 17 item 1): ``kill -9`` of the service at random moments of
every phase of a session, a restart, and a check that nothing of the session is left.

One command, as root, from the checkout (``../shared`` beside it is not needed)::

    PYTHONPATH=. /opt/iservice/bin/python -m tests.campaign --trials 100 --seconds 1800

(~9 s a trial on 2 busy cores: openvpn alone takes ~4 s to take in 10,000 pushed
routes.)

It builds its own lab (``tests/lab``): the real openvpn 2.6 as server, pushing
``--routes`` routes (10,000 by default), ``dhcp-option DNS``/``DOMAIN``; the service
with ``dns_backend = file``, once on a resolv.conf in a lab directory (replaced by
rename) and once on a resolv.conf bind-mounted over ``/etc/resolv.conf`` in the
service's mount namespace (a mount point: written in place), trials alternating; the
user asks for the kill switch (``--setenv ISERVICE_KILL_SWITCH 1``).  Each trial starts
one session as an unprivileged lab user and sends ``SIGKILL`` to the service's own PID
at a random moment of one *phase*:

=====================  ============================================================
``start-before-reply``  the service's log shows the request (``event=request``),
                        then 0-4 ms: validation, journal, tun, spawn
``start-after-reply``   the log shows ``event=started`` (written just before the PID
                        reply), then 0-2 ms: the reply, openvpn's start time
``dns-firewall``        openvpn prints ``TUN/TAP device … opened`` (right before its
                        ``up`` call), then 0-25 ms: address, MTU, DNS, ``nft``
``routes``              the ``up`` batch is applied (``set_block`` in the log), then
                        0-300 ms: the route-up batch of all routes
``connected``           ``Initialization Sequence Completed``, then 0-1 s
``undo-disconnect``     ``iservice disconnect`` by the user: from the control
                        request 0-60 ms (route-pre-down, down) or from
                        ``event=exited`` 0-40 ms (the undo itself)
``undo-sigterm``        ``SIGTERM`` to openvpn: the same two windows
=====================  ============================================================

Where the kill really landed is read from the journal left behind (a copy, before the
restart): its *stage* (``before-journal``, ``tun``, ``pid-without-start-time``,
``spawned``, ``address``, ``dns``, ``firewall``, ``routes``, ``connected``,
``down-hooks``, ``undo``, ``undone``).  Then the service is started again and, for up to
5 s, the namespace is compared with its state before the campaign: tun devices,
addresses, routes in every table (``ip [-6] route show table all``), ip rules,
nftables tables, the resolv.conf (byte for byte, and no temporary file beside it), the
journal (no session, no change), and every process of the lab user (the session's
openvpn and anything it forked): one still running 0.3 s after the restarted service
is ready (its recovery done) outlived recovery and counts, even if it ends by itself
later (an openvpn whose tun is gone exits when it gets to open it).  In the two start
phases the session's openvpn talks to a port where no server answers, so it lives
until something ends it and a leftover cannot hide by exiting on its own first.  A
trial records its phase, trigger, delay, stage, the leftovers by category and the
restart-to-clean time; leftovers are then removed (by PID, by name) so the next trial
starts clean.

The run stops after ``--trials`` trials or ``--seconds`` seconds, prints the figures,
and exits 0 when no trial left anything, 1 when one did, 2 when a trial could not be
run (an error) or fewer trials than asked fitted in the time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.isv import ISERVICE, LogTail, Service
from tests.lab import INIT_DONE, Lab, LabProcess, Pki, User
from tests.lab.procs import kill_pids, pid_alive, pids_of_uids

# The phases and the random delay after each trigger (seconds).  The windows are the
# lengths measured here (2 cores, 10,000 routes): start → reply ~2.5 ms, the up batch
# (address, DNS, nft) ~8 ms, the route-up batch ~200 ms, SIGTERM → undone ~300 ms,
# exited → undone ~30 ms.  Where the kill really landed is the trial's *stage*.
PHASES = ("start-before-reply", "start-after-reply", "dns-firewall", "routes", "connected",
          "undo-disconnect", "undo-sigterm")
WINDOW = {"request": 0.004, "started": 0.002, "tun-opened": 0.025, "up-applied": 0.300,
          "connected": 1.0, "ending": 0.060, "exited": 0.040}
DNS_MODES = ("plain", "mount")
CLEAN_WITHIN = 5.0  # seconds after the restart
RECOVERY_GRACE = 0.3  # a process SIGKILLed by recovery is gone well within this
CATEGORIES = ("tun", "addresses", "routes", "rules", "nft", "dns", "journal", "processes")

ORIGINAL_RESOLV_CONF = (b"# the administrator's resolver\n"
                        b"nameserver 198.18.0.1\n"
                        b"search example.com corp.example.com\n"
                        b"options ndots:2 timeout:1\n")
DNS_PUSH = ('push "dhcp-option DNS 10.9.0.1"\n'
            'push "dhcp-option DOMAIN corp.example"\n')
# The lab server's keepalive 2 10 pushes ping-restart 10: on a loaded machine openvpn can
# spend longer than that on 10,000 pushed routes and restart right after it connected,
# which is not the phase a trial aims at.
KEEPALIVE = "keepalive 10 120\n"
IDLE_PORT = 1199  # on the VPN remote's address, where nothing listens
STARTED = re.compile(r"event=started .*?session=(\d+) pid=(\d+)")


class TrialError(RuntimeError):
    """A trial could not be run as planned (no trigger, openvpn failed): not a finding."""


def route_pushes(n: int) -> str:
    """``n`` pushed /26 routes from 100.64.0.0 (inside the lab only)."""
    base = 100 << 24 | 64 << 16
    out = []
    for i in range(n):
        a = base + i * 64
        out.append(f'push "route {a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255} '
                   '255.255.255.192"\n')
    return "".join(out)


# --------------------------------------------------------------------------- watching


class LogWatch(LogTail):
    """``LogTail`` from the file's size at creation on, with a wait that fails the trial."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, from_end=True)

    def wait(self, needle: str | re.Pattern[str], *, timeout: float,
             alive: Callable[[], bool] = lambda: True, what: str = "") -> re.Match[str] | str:
        """Spin until ``needle`` is in the text (~0.1 ms between reads); returns the match."""
        deadline = time.monotonic() + timeout
        scanned = 0
        while True:
            text = self.poll()
            start = max(0, scanned - 400)  # a needle may straddle two reads
            if isinstance(needle, str):
                if needle in text[start:]:
                    return needle
            else:
                found = needle.search(text, start)
                if found:
                    return found
            scanned = len(text)
            if time.monotonic() > deadline:
                raise TrialError(f"no {what or needle!r} within {timeout:g} s")
            if not alive():
                raise TrialError(f"gone before {what or needle!r}")
            time.sleep(0.0001)


def sleep_until(t: float) -> None:
    """Sleep until ``time.perf_counter()`` reaches ``t`` (spinning for the last ms)."""
    while True:
        left = t - time.perf_counter()
        if left <= 0:
            return
        if left > 0.002:
            time.sleep(left - 0.001)


# --------------------------------------------------------------------------- records


@dataclass
class Trial:
    number: int
    phase: str
    dns_mode: str
    trigger: str = ""
    delay_ms: float = 0.0
    stage: str = ""
    journal_at_kill: dict[str, int] = field(default_factory=dict)  # changes by kind
    dns_at_kill: str = ""
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    restart_to_clean_s: float | None = None
    error: str | None = None
    seconds: float = 0.0
    openvpn_tail: list[str] = field(default_factory=list)  # its last lines at the kill

    def line(self) -> str:
        left = ", ".join(f"{k}: {len(v)}" for k, v in self.leftovers.items()) or "none"
        clean = "-" if self.restart_to_clean_s is None else f"{self.restart_to_clean_s:.2f} s"
        head = (f"#{self.number:3d} {self.phase:<18} {self.dns_mode:<5} "
                f"{self.trigger:<10} +{self.delay_ms:7.2f} ms  stage={self.stage:<22} "
                f"dns@kill={self.dns_at_kill:<9} clean after {clean:<7} leftovers: {left}")
        return head + (f"  ERROR {self.error}" if self.error else "")


@dataclass
class JournalView:
    """The journal as the killed service left it (read from a copy)."""

    sessions: list[dict[str, Any]]
    kinds: Counter[str]

    @classmethod
    def read(cls, state_dir: Path) -> JournalView:
        src = state_dir / "journal.sqlite3"
        if not src.exists():
            return cls([], Counter())
        with tempfile.TemporaryDirectory(prefix="isv-campaign-") as tmp:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    shutil.copyfile(f"{src}{suffix}", f"{tmp}/j{suffix}")
            db = sqlite3.connect(f"{tmp}/j")
            try:
                sessions = [{"id": r[0], "info": json.loads(r[1])}
                            for r in db.execute("SELECT id, info FROM sessions ORDER BY id")]
                kinds = Counter({r[0]: r[1] for r in db.execute(
                    "SELECT kind, COUNT(*) FROM changes GROUP BY kind")})
            finally:
                db.close()
        return cls(sessions, kinds)

    def stage(self, *, routes: int, ending: bool, exited: bool) -> str:
        """Where the session was when the service died."""
        if not self.sessions:
            return "undone" if exited else "before-journal"
        info = self.sessions[-1]["info"]
        if info.get("pid") is None:
            return "tun"
        if info.get("start_time") is None:
            return "pid-without-start-time"
        if exited:
            return "undo"
        if ending:
            return "down-hooks"
        if self.kinds["route"] >= routes:
            return "connected"
        if self.kinds["route"]:
            return "routes"
        for kind, name in (("nft", "firewall"), ("dns", "dns"), ("addr", "address")):
            if self.kinds[kind]:
                return name
        return "spawned"


# --------------------------------------------------------------------------- the campaign


class Campaign:
    """The lab, the services and the trials; ``with Campaign(lab, ...) as c: c.run(...)``."""

    def __init__(self, lab: Lab, *, routes: int = 10_000, seed: int | None = None,
                 report: Callable[[str], None] = print) -> None:
        self.lab = lab
        self.routes = routes
        self.seed = seed if seed is not None else random.randrange(1 << 32)
        self.rng = random.Random(self.seed)
        self.report = report
        self.trials: list[Trial] = []
        self.services: dict[str, Service] = {}
        self.conf: dict[str, Path] = {}
        self.baseline: dict[str, set[str]] = {}
        self.user: User | None = None
        self.config_name = "campaign.ovpn"
        self.idle_config_name = "campaign-idle.ovpn"  # no server answers there
        self._tools: list[LabProcess] = []
        self.broken: str | None = None  # the lab could not be put back: no more trials

    # -- set-up -------------------------------------------------------------------------

    def __enter__(self) -> Campaign:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        lab = self.lab
        t = time.monotonic()
        lab.start_server(route_pushes(self.routes) + DNS_PUSH + KEEPALIVE,
                         timeout=60 + self.routes / 200)
        lab.write_client_config(self.config_name)
        lab.write_client_config(self.idle_config_name, port=IDLE_PORT)
        self.user = lab.add_user("isvcamp")
        for mode in DNS_MODES:
            conf = lab.write_file(f"dns-{mode}/resolv.conf", "")
            conf.write_bytes(ORIGINAL_RESOLV_CONF)
            self.conf[mode] = conf
        # plain: the service's resolv_conf is a file in a lab directory (rename works);
        # mount: the file is bind-mounted over /etc/resolv.conf in the service's mount
        # namespace, the default resolv_conf (a mount point: written in place).
        self.services["plain"] = Service(lab, name="campplain", extra=(
            f"dns_backend = file\nresolv_conf = {self.conf['plain']}\n"))
        self.services["mount"] = Service(lab, name="campmount", extra="dns_backend = file\n")
        for mode in DNS_MODES:
            self._start(mode)
        self.baseline = self._settled()
        self.report(f"campaign: lab {lab.tag}, {self.routes:,} routes, seed {self.seed}, "
                    f"set up in {time.monotonic() - t:.1f} s")

    def _start(self, mode: str) -> None:
        """Start (or restart) the service of ``mode`` (with its bind mount, if any)."""
        if mode == "mount":
            self.lab.service_binds = [(self.conf["mount"], "/etc/resolv.conf")]
        try:
            self.services[mode].start(timeout=15)
        finally:
            self.lab.service_binds = []

    def close(self) -> None:
        if self.user is not None and (pids := self._user_pids()):
            self.report("campaign: processes of the lab user at the end: "
                        + "; ".join(f"{p} {_cmdline(p)}" for p in pids))
        for svc in self.services.values():
            if svc.proc is not None and svc.proc.poll() is None:
                with contextlib.suppress(Exception):
                    svc.stop()

    # -- the state of the namespace -----------------------------------------------------

    def _ip_json(self, *argv: str) -> list[dict[str, Any]]:
        out = self.lab.ns_run(self.lab.client_ns, ["ip", "-j", *argv])
        result: list[dict[str, Any]] = json.loads(out) if out.strip() else []
        return result

    def snapshot(self) -> dict[str, set[str]]:
        """What can be compared with the state before the campaign, as sets of text."""
        snap: dict[str, set[str]] = {}
        snap["tun"] = {x["ifname"] for x in self._ip_json("link", "show")
                       if x["ifname"].startswith("istun")}
        snap["addresses"] = {f"{x['ifname']} {a['local']}/{a['prefixlen']}"
                             for x in self._ip_json("addr", "show")
                             for a in x.get("addr_info", [])}
        routes: set[str] = set()
        for fam in ("-4", "-6"):
            for r in self._ip_json(fam, "route", "show", "table", "all"):
                r.pop("expires", None)
                routes.add(json.dumps(r, sort_keys=True))
        snap["routes"] = routes
        snap["rules"] = {json.dumps(r, sort_keys=True) for fam in ("-4", "-6")
                         for r in self._ip_json(fam, "rule", "show")}
        tables = self.lab.ns_run(self.lab.client_ns, ["nft", "list", "tables"])
        snap["nft"] = {line.strip() for line in tables.splitlines() if line.strip()}
        return snap

    def _settled(self, timeout: float = 20.0) -> dict[str, set[str]]:
        """The snapshot once it stays the same for 1.5 s (IPv6 link-local addresses and
        their routes come a moment after the links are up)."""
        deadline = time.monotonic() + timeout
        snap, same = self.snapshot(), 0
        while same < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the lab's network does not settle")
            time.sleep(0.5)
            again = self.snapshot()
            same = same + 1 if again == snap else 0
            snap = again
        return snap

    def leftovers(self) -> dict[str, list[str]]:
        """Everything that differs from the state before the campaign, by category."""
        found: dict[str, list[str]] = {}
        now = self.snapshot()
        for cat, before in self.baseline.items():
            diff = sorted(f"+{x}" for x in now[cat] - before) + \
                sorted(f"-{x}" for x in before - now[cat])
            if diff:
                found[cat] = diff
        dns: list[str] = []
        for m, conf in self.conf.items():
            data = conf.read_bytes()
            if data != ORIGINAL_RESOLV_CONF:
                dns.append(f"{m}: {data[:120]!r}")
            dns += [f"{m}: temporary file {p.name}" for p in conf.parent.iterdir()
                    if p.name != conf.name]
        if dns:
            found["dns"] = dns
        journal = [f"{m}: {len(j['sessions'])} session(s), {j['changes']} change(s)"
                   for m, svc in self.services.items()
                   if (j := svc.journal())["sessions"] or j["changes"]]
        if journal:
            found["journal"] = journal
        assert self.user is not None
        procs = [f"{pid} {_cmdline(pid)}" for pid in self._user_pids()]
        if procs:
            found["processes"] = procs
        return found

    def _user_pids(self) -> list[int]:
        assert self.user is not None
        tools = {p.pid for p in self._tools}
        return [p for p in pids_of_uids([self.user.uid]) if p not in tools and pid_alive(p)]

    def dns_state(self, mode: str) -> str:
        from iservice.linux.dns import MARKER
        data = self.conf[mode].read_bytes()
        if data == ORIGINAL_RESOLV_CONF:
            state = "original"
        elif data.startswith(MARKER) and data.count(MARKER) == 1:
            state = "iservice"
        else:
            state = "torn"
        temps = [p for p in self.conf[mode].parent.iterdir() if p.name != "resolv.conf"]
        return state + ("+tmp" if temps else "")

    # -- one trial ----------------------------------------------------------------------

    def run(self, trials: int, seconds: float, phases: Sequence[str] = PHASES) -> list[Trial]:
        deadline = time.monotonic() + seconds
        order: list[str] = []
        for i in range(trials):
            if time.monotonic() >= deadline:
                self.report(f"campaign: time is up after {i} of {trials} trials")
                break
            if not order:
                order = list(phases)
                self.rng.shuffle(order)
            trial = self.trial(i + 1, order.pop(), DNS_MODES[i % len(DNS_MODES)])
            self.trials.append(trial)
            self.report(trial.line())
            for cat, items in trial.leftovers.items():
                self.report(f"      {cat}: " + "; ".join(items[:3])
                            + (f" (+{len(items) - 3} more)" if len(items) > 3 else ""))
            if self.broken:
                self.report(f"campaign: stopped: {self.broken}")
                break
        return self.trials

    def trial(self, number: int, phase: str, mode: str) -> Trial:
        trial = Trial(number, phase, mode)
        t0 = time.monotonic()
        svc = self.services[mode]
        try:
            self._drive(trial, svc)
        except TrialError as exc:
            trial.error = str(exc)
            if svc.proc is not None and svc.proc.poll() is None:
                self._kill(svc)  # the restart below must still find everything clean
        self._end_tools()
        # Restart, then poll until nothing is left (or CLEAN_WITHIN is over).  Recovery
        # is over when the service is ready: a process of the session still running
        # RECOVERY_GRACE later outlived it, even if it ends by itself afterwards (an
        # openvpn whose tun is gone exits once it gets to open it, seconds later).
        t_restart = time.monotonic()
        try:
            self._start(mode)
        except AssertionError as exc:
            trial.error = (trial.error or "") + f" restart failed: {str(exc)[:300]}"
        t_ready = time.monotonic()
        at_ready = {p: _cmdline(p) for p in self._user_pids()}
        survivors: dict[int, str] | None = None
        first_clean: float | None = None
        while True:
            t_check = time.monotonic()
            if survivors is None and t_check >= t_ready + RECOVERY_GRACE:
                survivors = {p: c for p, c in at_ready.items() if pid_alive(p)}
            left = self.leftovers()
            if not left and first_clean is None:
                first_clean = t_check - t_restart
            if survivors and set(left) == {"processes"}:
                break  # everything else is clean; the survivors are leftovers anyway
            if not left and survivors is not None:
                if not survivors:
                    trial.restart_to_clean_s = first_clean
                break
            if t_check - t_restart > CLEAN_WITHIN:
                trial.leftovers = left
                break
            time.sleep(0.05)
        if survivors:
            gone = time.monotonic() - t_ready
            trial.leftovers = {k: v for k, v in left.items() if k != "processes"}
            trial.leftovers["processes"] = [
                f"{p} {c} outlived recovery; "
                + (f"still running {gone:.1f} s after it" if pid_alive(p)
                   else f"exited by itself within {gone:.1f} s")
                for p, c in survivors.items()] + [
                x for x in left.get("processes", []) if int(x.split()[0]) not in survivors]
        trial.seconds = time.monotonic() - t0
        if trial.leftovers:
            try:
                self.repair(trial.leftovers)
            except RuntimeError as exc:
                self.broken = str(exc)
        return trial

    def _drive(self, trial: Trial, svc: Service) -> None:
        """Start a session and kill the service in ``trial.phase``."""
        assert self.user is not None and svc.proc is not None
        log = LogWatch(Path(str(svc.proc.stderr_path)))

        def service_alive() -> bool:
            return svc.proc is not None and svc.proc.poll() is None

        phase = trial.phase
        session_log: LogWatch | None = None
        config = self.idle_config_name if phase.startswith("start-") else self.config_name
        start = self.lab.popen_client(
            svc.start_cmd("--config", config, "--setenv", "ISERVICE_KILL_SWITCH", "1"),
            user=self.user, label="campaign-start")
        self._tools.append(start)
        ending = False
        if phase == "start-before-reply":
            self._kill_after(trial, svc, log, "request", "event=request ")
        elif phase == "start-after-reply":
            self._kill_after(trial, svc, log, "started", "event=started ")
        else:
            found = log.wait(STARTED, timeout=15, alive=service_alive, what="event=started")
            assert isinstance(found, re.Match)
            session, pid = int(found.group(1)), int(found.group(2))
            session_log = LogWatch(svc.log_dir / f"session-{session}.log")
            session_log.pos = 0

            def openvpn_alive() -> bool:
                return pid_alive(pid)

            timeout = 30 + self.routes / 500
            if phase == "dns-firewall":
                session_log.wait("TUN/TAP device", timeout=timeout, alive=openvpn_alive)
                self._kill_at(trial, svc, "tun-opened")
            elif phase == "routes":
                log.wait('what="set_block', timeout=timeout, alive=service_alive)
                self._kill_at(trial, svc, "up-applied")
            else:
                session_log.wait(INIT_DONE, timeout=timeout, alive=openvpn_alive)
                if phase == "connected":
                    self._kill_at(trial, svc, "connected")
                else:
                    time.sleep(0.1)
                    ending = True
                    by_exit = self.rng.random() < 0.5
                    if phase == "undo-disconnect":
                        tool = self.lab.popen_client(
                            [ISERVICE, "disconnect", "--settings", str(svc.settings_path),
                             str(session)], user=self.user, label="campaign-disconnect")
                        self._tools.append(tool)
                        if not by_exit:
                            log.wait("what=disconnect", timeout=10,
                                     alive=service_alive)
                    else:
                        os.kill(pid, signal.SIGTERM)  # what the user may do to its openvpn
                    if by_exit:
                        log.wait("event=exited ", timeout=10, alive=service_alive)
                        self._kill_at(trial, svc, "exited")
                    else:
                        self._kill_at(trial, svc, "ending")
        if service_alive():
            raise TrialError("the service was not killed")  # cannot happen: _kill_at kills
        view = JournalView.read(svc.state_dir)
        trial.stage = view.stage(routes=self.routes, ending=ending,
                                 exited="event=exited " in log.poll())
        trial.journal_at_kill = {"sessions": len(view.sessions), **view.kinds}
        if session_log is not None:
            trial.openvpn_tail = [line[:300] for line in session_log.poll().splitlines()[-8:]]
        trial.dns_at_kill = self.dns_state(trial.dns_mode)

    def _kill_after(self, trial: Trial, svc: Service, log: LogWatch, trigger: str,
                    needle: str) -> None:
        log.wait(needle, timeout=15, what=needle)
        self._kill_at(trial, svc, trigger)

    def _kill_at(self, trial: Trial, svc: Service, trigger: str) -> None:
        """Kill the service a random moment within ``trigger``'s window from now."""
        now = time.perf_counter()
        delay = self.rng.uniform(0, WINDOW[trigger])
        sleep_until(now + delay)
        self._kill(svc)
        trial.trigger = trigger
        trial.delay_ms = delay * 1000

    @staticmethod
    def _kill(svc: Service) -> None:
        assert svc.proc is not None
        os.kill(svc.service_pid(), signal.SIGKILL)
        svc.proc.wait(timeout=10)

    def _end_tools(self) -> None:
        """The campaign's own client commands (``iservice start``/``disconnect``) end when
        the service's socket closes; wait for them, end them by PID if they do not."""
        for tool in self._tools:
            with contextlib.suppress(Exception):
                tool.wait(timeout=5)
            if tool.poll() is None:
                tool.end(grace=1)
            tool.close_files()
        self._tools.clear()

    # -- putting the lab back -----------------------------------------------------------

    def repair(self, left: dict[str, list[str]]) -> None:
        """Remove what a trial left, so that the next one starts from the same state."""
        lab, ns = self.lab, self.lab.client_ns
        if pids := self._user_pids():
            kill_pids(pids, why="left behind by a crash-campaign trial", grace=0.2)
        for name in self.snapshot()["tun"] - self.baseline["tun"]:
            lab.ns_run(ns, ["ip", "link", "delete", name], check=False)
        for table in self.snapshot()["nft"] - self.baseline["nft"]:
            lab.ns_run(ns, ["nft", "delete", *table.split()[1:]], check=False)
        for route in self.snapshot()["routes"] - self.baseline["routes"]:
            r = json.loads(route)
            fam = "-6" if ":" in r.get("dst", "") else "-4"
            lab.ns_run(ns, ["ip", fam, "route", "delete", r.get("dst", "default"),
                            "table", str(r.get("table", "main"))], check=False)
        for conf in self.conf.values():
            for p in conf.parent.iterdir():
                if p.name != conf.name:
                    p.unlink()
            if conf.read_bytes() != ORIGINAL_RESOLV_CONF:
                with open(conf, "r+b") as f:  # in place: the mount point stays bound
                    f.write(ORIGINAL_RESOLV_CONF)
                    f.truncate()
        if "journal" in left:
            for m, svc in self.services.items():
                if svc.journal()["sessions"]:
                    svc.stop()
                    path = svc.state_dir / "journal.sqlite3"
                    for suffix in ("", "-wal", "-shm"):
                        with contextlib.suppress(FileNotFoundError):
                            Path(f"{path}{suffix}").rename(f"{path}{suffix}.leftover")
                    self._start(m)
        if still := self.leftovers():
            raise RuntimeError(f"the lab could not be put back after a trial: {still}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()[:200]
    except OSError:
        return "?"


# --------------------------------------------------------------------------- figures


def figures(trials: Sequence[Trial]) -> dict[str, Any]:
    """The campaign's figures: counts by phase, stage and leftover category, and the
    restart-to-clean times."""
    done = [t for t in trials if t.error is None]
    times = sorted(t.restart_to_clean_s for t in done if t.restart_to_clean_s is not None)
    by_cat: Counter[str] = Counter(c for t in done for c in t.leftovers)
    left_by_phase: Counter[str] = Counter(t.phase for t in done if t.leftovers)
    left_by_stage: Counter[str] = Counter(t.stage for t in done if t.leftovers)
    return {
        "trials": len(trials),
        "errors": len(trials) - len(done),
        "with_leftovers": sum(1 for t in done if t.leftovers),
        "phases": dict(Counter(t.phase for t in done)),
        "stages": dict(Counter(t.stage for t in done)),
        "dns_modes": dict(Counter(t.dns_mode for t in done)),
        "dns_at_kill": dict(Counter(t.dns_at_kill for t in done)),
        "leftovers_by_category": {c: by_cat.get(c, 0) for c in CATEGORIES},
        "leftovers_by_phase": dict(left_by_phase),
        "leftovers_by_stage": dict(left_by_stage),
        "restart_to_clean_s": {
            "n": len(times),
            "median": statistics.median(times) if times else None,
            "p90": times[int(0.9 * (len(times) - 1))] if times else None,
            "max": times[-1] if times else None,
        },
    }


def format_figures(fig: dict[str, Any]) -> str:
    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "-"

    rt = fig["restart_to_clean_s"]
    clean = "-" if rt["median"] is None else \
        f"median {rt['median']:.2f} s, p90 {rt['p90']:.2f} s, max {rt['max']:.2f} s (n={rt['n']})"
    return "\n".join([
        f"trials: {fig['trials']} ({fig['errors']} errors), with leftovers: "
        f"{fig['with_leftovers']}",
        f"phases: {counts(fig['phases'])}",
        f"stages hit: {counts(fig['stages'])}",
        f"resolv.conf: {counts(fig['dns_modes'])}; at the kill: {counts(fig['dns_at_kill'])}",
        "leftovers by category (trials): " + ", ".join(
            f"{k} {v}" for k, v in fig["leftovers_by_category"].items()),
        f"leftovers by phase: {counts(fig['leftovers_by_phase'])}",
        f"leftovers by stage: {counts(fig['leftovers_by_stage'])}",
        f"restart → clean: {clean}",
    ])


@contextlib.contextmanager
def campaign_lab(routes: int, seed: int | None,
                 report: Callable[[str], None] = print) -> Iterator[Campaign]:
    """A fresh PKI, lab and campaign, all removed at exit."""
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-pki-", dir="/tmp"))
    try:
        Lab.sweep_stale()
        with Lab(Pki.create(pki_dir)) as lab, Campaign(lab, routes=routes, seed=seed,
                                                       report=report) as campaign:
            yield campaign
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.campaign", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=100, help="trials to run (default 100)")
    p.add_argument("--seconds", type=float, default=900,
                   help="stop starting trials after this long (default 900)")
    p.add_argument("--routes", type=int, default=10_000, help="routes the server pushes")
    p.add_argument("--seed", type=int, help="random seed (printed; to repeat a run)")
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES),
                   metavar="PHASE", help=f"phases to cover (default all: {' '.join(PHASES)})")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every trial and the "
                   "figures to FILE")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the campaign needs root (namespaces, users, the service)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with campaign_lab(args.routes, args.seed) as campaign:
        trials = campaign.run(args.trials, args.seconds, args.phases)
        seed = campaign.seed
    fig = figures(trials)
    print(f"\n== crash campaign: {len(trials)} trials in {time.monotonic() - t0:.0f} s, "
          f"{args.routes:,} routes, seed {seed}")
    print(format_figures(fig))
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": seed, "routes": args.routes, "figures": fig,
                                         "trials": [dataclasses.asdict(t) for t in trials]},
                                        indent=1))
    if fig["with_leftovers"]:
        return 1
    if fig["errors"] or len(trials) < args.trials:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
