"""P4 undo latency: ``kill -9`` of the user's openvpn → its tun gone (the tun is the
oldest journal record, undone last), against the kernel removing a root openvpn's tun
after its ``kill -9``."""

from __future__ import annotations

import os
import signal
import time

from tests.isv import LogTail
from tests.lab import INIT_DONE

from bench.common import (
    Bench,
    new_session_log,
    pid_alive,
    session_logs,
    wait_log,
    wait_sessions,
)
from bench.events import RTM_NEWLINK, link_gone
from bench.report import Row, median


def p4(b: Bench) -> None:
    lab = b.lab
    svc = b.svc_real
    cfg = lab.config_dir / "approved.ovpn"
    drv = b.driver(svc, b.users[0])
    undo: list[float] = []
    kern: list[float] = []
    for rep in range(b.cfg.p4_repeat):
        # iservice: kill -9 of the user's openvpn → its tun (the oldest change, undone
        # last) gone, with its routes, addresses and journal records
        before = session_logs(svc)
        mark = b.watcher.mark()
        r = drv.call("start", workdir=str(lab.config_dir), options=f"--config {cfg.name}",
                     wait_end=False)
        if r["error"]:
            raise RuntimeError(r["error"])
        pid = r["pid"]
        log = new_session_log(svc, before)
        wait_log(LogTail(log), INIT_DONE, 20, lambda: pid_alive(pid))  # noqa: B023
        dev = b.watcher.first(
            lambda e: e.type == RTM_NEWLINK and e.name.startswith("istun"), mark,
            "the tun").name
        mark = b.watcher.mark()
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        ev = b.watcher.wait(link_gone(dev), mark, 10, f"{dev} gone")
        undo.append((ev.t - t0) * 1000)
        wait_sessions(svc, 0, 10)
        drv.call("close")
        # peer: openvpn as root, kill -9: the kernel removes its tun and routes
        rdev = f"bnchk{rep}"
        h = lab.start_client(cfg, "--dev", rdev, "--dev-type", "tun", wait=False,
                             name="root-kill")
        wait_log(LogTail(h.log_path), INIT_DONE, 20, lambda: h.proc.poll() is None)  # noqa: B023
        mark = b.watcher.mark()
        t0 = time.monotonic()
        h.proc.send_signal(signal.SIGKILL)
        ev = b.watcher.wait(link_gone(rdev), mark, 10, f"{rdev} gone")
        kern.append((ev.t - t0) * 1000)
        h.proc.wait(5)
    fig, peer = median(undo), median(kern)
    b.add(Row(f"P4 undo: kill -9 of openvpn → every change undone, median of "
              f"{len(undo)}", fig, peer, "ms", "≤ 200 ms", fig <= 200,
              note="peer: the kernel cleaning up after kill -9 of a root openvpn",
              samples={"iservice": undo, "root_kill": kern}))
