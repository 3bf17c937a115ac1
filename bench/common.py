"""What every measurement shares: the run's sizes (``Config``), the lab with its services
and users (``Bench``), the user's request driver, and small helpers (logs, processes)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.isv import PYTHON, VENV, LogTail, Service
from tests.lab import Lab, User

from bench.cbuild import c_string, compile_c
from bench.events import Watcher
from bench.report import Row, table_line

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


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
    p2_repeat_large: int  # repeats from 30,000 routes on (each openvpn run takes ~26 s)
    mem_routes: int  # routes held in one session for the memory rows
    noisy_wfp: int  # the noisy neighbour's floods: identical add_wfp_block requests,
    noisy_lines: int  # output lines that change the server list,
    noisy_routes: int  # routes
    noisy_quiet: float  # seconds of probing without a flood before each flood
    noisy_cap: float  # seconds after a flood began at most, then the service is killed

    @classmethod
    def full(cls) -> Config:
        return cls(False, 50, [(100, False), (1000, False), (10_000, False), (30_000, False),
                               (1000, True)], 5, 10, 10, 3, 20, 20, 3,
                   100_000, 2000, 20_000, 100_000, 3.0, 30.0)

    @classmethod
    def quick_run(cls) -> Config:
        return cls(True, 5, [(100, False), (1000, False)], 1, 2, 3, 1, 0, 2, 1,
                   2000, 100, 200, 20_000, 0.5, 10.0)

    def repeats(self, n: int) -> int:
        return min(self.p2_repeat, self.p2_repeat_large) if n >= 30_000 else self.p2_repeat


# --------------------------------------------------------------------------- the user's side


class Driver:
    """A process of ``user`` in the client namespace that sends requests on command
    (``bench/user_driver.py``)."""

    def __init__(self, lab: Lab, user: User, socket_path: Path) -> None:
        script = lab.write_file(f"driver-{user.name}.py",
                                (BENCH_DIR / "user_driver.py").read_text())
        self.proc = lab.popen_client([PYTHON, "-I", str(script), str(socket_path)], user=user,
                                     label=f"driver-{user.name}", stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("driver exited: " + (self.proc.error_text()[-2000:] or "?"))
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.end(grace=2)


# --------------------------------------------------------------------------- helpers


def build_standin(lab: Lab) -> Path:
    """P3's stand-in openvpn: a static C program that waits to be killed (one exec of a
    small binary), or a shell script running ``sleep`` (two execs, ~1 ms more CPU per
    session, measured) where there is no C compiler."""
    exe = compile_c("standin", lab.make_dir("standin", mode=0o755) / "standin-stay",
                    static=True)
    if exe is not None:
        return exe
    return lab.write_file("standin-stay.sh", "#!/bin/sh\nexec /bin/sleep 3600\n", mode=0o755)


def build_scenario_standin(lab: Lab) -> Path:
    """The stand-in openvpn of the memory and noisy-neighbour rows: ``--config idle…``
    waits to be killed, any other config runs as a scenario of the test double
    ``tests/hostile_openvpn.py`` (``bench/c/dispatch.c``; a shell script without cc)."""
    d = lab.make_dir("scenario", mode=0o755)
    hostile = lab.write_file("scenario/hostile-openvpn",
                             f"#!{PYTHON} -I\n" + (REPO / "tests" / "hostile_openvpn.py")
                             .read_text(), mode=0o755)
    exe = compile_c("dispatch", d / "dispatch", f"-DSCENARIO={c_string(hostile)}",
                    static=True)
    if exe is not None:
        return exe
    return lab.write_file("scenario/dispatch.sh", f"""#!/bin/sh
prev=
for a in "$@"; do
  if [ "$prev" = --config ]; then case "${{a##*/}}" in idle*) exec /bin/sleep 100000;; esac; fi
  prev=$a
done
exec {hostile} "$@"
""", mode=0o755)


def build_hook_timer(lab: Lab) -> tuple[Path, Path] | None:
    d = lab.make_dir("hooktimer", mode=0o755)
    log_path = lab.make_dir("hooktimer/log", mode=0o1777) / "hooks.log"
    real = VENV / "bin" / "iservice-hook"
    exe = compile_c("hook_timer", d / "iservice-hook-timed", f"-DREAL={c_string(real)}",
                    f"-DLOG={c_string(log_path)}")
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


def wait_for(pred: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return got


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cpu_probe_ms(rounds: int = 5) -> float:
    """The fastest of ``rounds`` runs of one fixed pure-Python loop (~1 ms), in ms: how
    fast this machine's CPU was just then.  On the 2-vCPU KVM guest of
    docs/performance.md it moved between 0.63 and 1.07 ms within six seconds, with no
    other load and no steal time counted (a 1,000,000-step loop: 95-169 ms over 13 s):
    the host's speed moves a burst's p99 more than most changes do.  One probe before
    a burst tells the machine's state then, not through the burst (it changes within
    one: docs/performance.md, "Sixth look")."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        acc = 0
        for i in range(20_000):
            acc += i * i
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rss_mb(pid: int) -> float:
    return rss_kb(pid) / 1024


def count_routes(lab: Lab, ifindex: int, family: int, dst_len: int) -> int:
    from iservice.linux.netlink import rtnl_in_netns
    rt = rtnl_in_netns(f"/run/netns/{lab.client_ns}")
    try:
        fam = socket.AF_INET6 if family == 6 else socket.AF_INET
        return sum(1 for r in rt.route_list(fam)
                   if r.oif == ifindex and r.dst.prefixlen == dst_len)
    finally:
        rt.close()


def route_prefix(i: int, v6: bool) -> str:
    """The i-th pushed route: IPv4 ``/26``s from ``100.64.0.0``, IPv6 ``/56``s in fd10::/16."""
    if v6:
        return f"fd10:{i >> 8:x}:{(i & 0xFF) << 8:x}::/56"
    a = (100 << 24 | 64 << 16) + i * 64
    return f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/26"


def pushes(n: int, v6: bool) -> str:
    if v6:
        return "".join(f'push "route-ipv6 {route_prefix(i, True)}"\n' for i in range(n))
    return "".join(f'push "route {route_prefix(i, False)[:-3]} 255.255.255.192"\n'
                   for i in range(n))


def new_session_log(svc: Service, before: set[Path], timeout: float = 10) -> Path:
    found: list[Path] = wait_for(
        lambda: [p for p in svc.log_dir.glob("session-*.log") if p not in before],
        timeout, "a session log", interval=0.002)
    return found[0]


def session_logs(svc: Service) -> set[Path]:
    return set(svc.log_dir.glob("session-*.log")) if svc.log_dir.exists() else set()


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds per thread of ``pid`` so far (schedstat)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
    return out


def wait_sessions(svc: Service, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(svc.journal()["sessions"]) != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{svc.name}: {len(svc.journal()['sessions'])} sessions, "
                               f"expected {n}\n{svc.log_tail(20)}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- the bench


class Bench:
    """The lab of one run: the kernel-event watcher, users, and three services
    (``exe_path`` = ``/bin/true``, a stand-in that stays alive, the real openvpn)."""

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
        self.limits = limits
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
        self._scenario_exe: Path | None = None

    @property
    def scenario_exe(self) -> Path:
        if self._scenario_exe is None:
            self._scenario_exe = build_scenario_standin(self.lab)
        return self._scenario_exe

    def driver(self, svc: Service, user: User) -> Driver:
        by_user = self.drivers.setdefault(svc.name, {})
        if user.name not in by_user:
            by_user[user.name] = Driver(self.lab, user, svc.socket_path)
        return by_user[user.name]

    def close_drivers(self, svc: Service) -> None:
        for d in self.drivers.pop(svc.name, {}).values():
            d.close()

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
        print(table_line(row), flush=True)
