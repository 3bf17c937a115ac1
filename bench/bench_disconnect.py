"""Disconnect with N routes: SIGTERM of openvpn → everything undone (issue 16, item 1).

The real openvpn connects through the service to a lab server that pushes N IPv4
routes; once they are all in the kernel, the bench sends openvpn SIGTERM and times
until the session is undone: its journal entry is gone, which is undo's last step,
after the tun (and with it every route) was deleted; then it checks that no route and
no tun is left.  The peer is the same openvpn as root (SIGTERM → the process has
deleted its routes and exited).  Alternating, medians of ``--repeat``.

    PYTHONPATH=. python bench/bench_disconnect.py 10000 --repeat 5

Run as root after ``scripts/setup.sh`` (the service runs from ``$ISERVICE_VENV``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.campaign import route_pushes  # noqa: E402
from tests.isv import Service, wait_for  # noqa: E402
from tests.lab import Lab, Pki  # noqa: E402


def exited(pid: int) -> bool:
    """Gone, or a zombie the service has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def count_routes(lab: Lab, dev: str | None = None) -> int:
    argv = ["ip", "-4", "route", "show", *(["dev", dev] if dev else ["proto", "158"])]
    cp = subprocess.run(lab.ns_cmd(lab.client_ns, argv), capture_output=True, text=True,
                        check=False)
    return len(cp.stdout.splitlines())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("count", type=int, nargs="?", default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-"))
    try:
        with Lab(Pki.create(pki_dir)) as lab:
            return run(lab, args.count, args.repeat)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


def run(lab: Lab, n: int, repeat: int) -> int:
    timeout = 30 + n / 300
    server = lab.start_server(route_pushes(n), port=1230, name="many", network="10.45.0.0/24",
                              network6="fd00:45::/64", timeout=120)
    lab.write_client_config("many.ovpn", "verb 1\n", port=1230)
    cfg = lab.config_dir / "many.ovpn"
    svc = Service(lab, extra=f"max_routes = {n + 100}\n")
    svc.start()
    user = lab.add_user("isvd")
    isv: list[float] = []
    exits: list[float] = []  # SIGTERM → openvpn (as the user) has exited
    root: list[float] = []
    try:
        for rep in range(repeat):
            for who in (("isv", "root") if rep % 2 == 0 else ("root", "isv")):
                if who == "isv":
                    cp = svc.start_as(user, "--config", "many.ovpn")
                    assert cp.returncode == 0, cp.stderr
                    pid = int(cp.stdout.strip())
                    wait_for(lambda: count_routes(lab) >= n, timeout, interval=0.2,
                             what=f"{n} routes through iservice")
                    t0 = time.monotonic()
                    os.kill(pid, signal.SIGTERM)
                    t_exit = None
                    while svc.journal()["sessions"]:
                        if t_exit is None and exited(pid):
                            t_exit = time.monotonic()
                        if time.monotonic() - t0 > timeout:
                            raise RuntimeError(f"not undone\n{svc.log_tail(20)}")
                        time.sleep(0.002)
                    isv.append(time.monotonic() - t0)
                    exits.append((t_exit or time.monotonic()) - t0)
                    assert count_routes(lab) == 0 and not svc.tuns(), "left behind"
                else:
                    dev = f"bdisc{rep}"
                    h = lab.start_client(cfg, "--dev", dev, "--dev-type", "tun", wait=False,
                                         name=f"root-{rep}")
                    wait_for(lambda dev=dev: count_routes(lab, dev) >= n, timeout,
                             interval=0.2, what=f"{n} routes through root's openvpn")
                    t0 = time.monotonic()
                    h.proc.send_signal(signal.SIGTERM)
                    h.proc.wait(timeout)
                    root.append(time.monotonic() - t0)
            print(f"  run {rep + 1}: iservice {isv[-1] * 1000:.0f} ms (openvpn exited after "
                  f"{exits[-1] * 1000:.0f} ms), root {root[-1] * 1000:.0f} ms", flush=True)
    finally:
        svc.stop()
        server.stop()
    print(f"{n:>6} routes, SIGTERM → undone: iservice median "
          f"{statistics.median(isv) * 1000:.0f} ms (runs: "
          f"{', '.join(f'{x * 1000:.0f}' for x in isv)}); openvpn as root (SIGTERM → "
          f"exited) median {statistics.median(root) * 1000:.0f} ms (runs: "
          f"{', '.join(f'{x * 1000:.0f}' for x in root)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
