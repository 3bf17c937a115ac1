"""P1 start latency, and the script hook's start-up (informational).

P1: connect → PID reply through the service (``exe_path = /bin/true``: validation,
journal, tun and spawn included), against the same user spawning the same executable
with the same argv (``Popen`` returned: the process exists, as when the service replies).
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.isv import VENV

from bench.common import Bench
from bench.report import Row, median, p99


def p1(b: Bench) -> None:
    user = b.users[0]
    cfg_path = b.lab.config_dir / "approved.ovpn"
    d = b.driver(b.svc_true, user)
    options = f"--config {cfg_path.name}"
    argv = ["/bin/true", "--cd", str(b.lab.config_dir), "--config", str(cfg_path),
            *["--dev", "istun1", "--dev-type", "tun", "--disable-dco", "--ifconfig-noexec",
              "--route-noexec", "--script-security", "2", "--up", "/x 4",
              "--route-up", "/x 4", "--route-pre-down", "/x 4", "--down", "/x 4",
              "--up-restart"]]
    svc_ms: list[float] = []
    spawn_ms: list[float] = []
    spawn_exit_ms: list[float] = []
    for _ in range(2):  # warm-up
        d.call("start", workdir=str(b.lab.config_dir), options=options, wait_end=True)
    for _ in range(b.cfg.p1_starts):
        r = d.call("start", workdir=str(b.lab.config_dir), options=options, wait_end=True)
        if r["error"]:
            raise RuntimeError(f"P1 start refused: {r['error']}")
        svc_ms.append((r["t1"] - r["t0"]) * 1000)
        s = d.call("spawn", argv=argv)
        spawn_ms.append((s["t1"] - s["t0"]) * 1000)
        spawn_exit_ms.append((s["t2"] - s["t0"]) * 1000)
    fig, peer = median(svc_ms), median(spawn_ms)
    b.add(Row(f"P1 start: connect → PID reply, median of {len(svc_ms)}", fig, peer,
              "ms", "≤ 1.5× peer", fig <= 1.5 * peer,
              note="peer: the user's own Popen of /bin/true, same argv",
              samples={"iservice": svc_ms, "spawn": spawn_ms, "spawn_exit": spawn_exit_ms}))
    b.add(Row("P1 start: connect → PID reply, p99", p99(svc_ms), p99(spawn_ms), "ms",
              "info", None))


def hook_startup(b: Bench) -> None:
    """The script hook's start-up (``hook = script``; explains P2 at small N there)."""
    def run_ms(argv: list[str], k: int = 20) -> float:
        xs = []
        for _ in range(k):
            t0 = time.perf_counter()
            subprocess.run(argv, env={"script_type": "none"}, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            xs.append((time.perf_counter() - t0) * 1000)
        return median(xs)
    hook = run_ms([str(VENV / "bin" / "iservice-hook"), "99"])
    bare = run_ms([sys.executable, "-I", "-S", "-c", "pass"])
    b.add(Row("hook start-up (`iservice-hook` with nothing to send)", hook, bare, "ms",
              "info", None, note="peer: `python -I -S -c pass`"))
