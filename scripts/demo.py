"""The quick-start demo: a real tunnel through iservice, on a local lab, then nothing left.

It builds a lab (a VPN server in its own network namespace, the service in
another, an unprivileged demo user), lets that user start openvpn through the
service, shows the tunnel, pings through it, ends the session and shows that the
service removed everything it had added.  Run it through scripts/demo.sh.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.isv import Service, pid_user, wait_for
from tests.lab import Lab, Pki

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def step(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def say(text: str) -> None:
    print(f"    {text}", flush=True)


def our_state(lab: Lab, svc: Service) -> tuple[list[str], list[str]]:
    tuns = svc.tuns()
    routes = [f"{r['dst']} dev {r.get('dev')}" for fam in (4, 6) for r in lab.routes(fam)
              if r.get("protocol") == "158"]
    return tuns, routes


def main() -> int:
    if os.geteuid() != 0:
        print("the demo builds network namespaces and users: run it as root", file=sys.stderr)
        return 2
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-demo-pki-", dir="/tmp"))
    try:
        step("Building a lab: a VPN server and a client machine as network namespaces")
        pki = Pki.create(pki_dir)
        with Lab(pki) as lab:
            server = lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                                      'push "route-ipv6 fd00:9::/64"\n')
            say(f"openvpn server (root) in namespace {lab.server_ns}, "
                f"tunnel address {server.tunnel_addr}")
            say(f"the network behind it: {Lab.pushed_net} (host {Lab.pushed_host}) "
                f"and {Lab.pushed_net6}")
            cfg = lab.write_client_config("demo.ovpn")
            say(f"the administrator approved one profile: {cfg}")

            step("Starting iservice (root) in the client namespace")
            svc = Service(lab, name="demo")
            svc.start()
            say(f"listening on {svc.socket_path}")

            user = lab.add_user("demo")
            step(f"As the unprivileged user '{user.name}' (uid {user.uid}): "
                 "iservice start -- --config demo.ovpn")
            before = our_state(lab, svc)
            cp = svc.start_as(user, "--config", "demo.ovpn")
            print("    $ iservice start -- --config demo.ovpn")
            print(f"    {cp.stdout.strip() or cp.stderr.strip()}")
            if cp.returncode != 0:
                say("the service refused: see above")
                return 1
            pid = int(cp.stdout.strip())
            say(f"openvpn runs as pid {pid}, as uid {pid_user(pid)} (not root)")

            step("The service applies what openvpn asks for, on the session's own tun")
            wait_for(lambda: len(our_state(lab, svc)[1]) >= 2, 20,
                     what=lambda: svc.log_tail(20))
            tuns, routes = our_state(lab, svc)
            tun = tuns[0]
            for a in lab.addrs(tun):
                if a.get("scope") == "global":
                    say(f"address {a['local']}/{a['prefixlen']} on {tun}")
            for r in routes:
                say(f"route {r}")

            step("Ping through the tunnel")
            for addr in (server.tunnel_addr, Lab.pushed_host, Lab.pushed_host6):
                ok = lab.ping(addr, count=2)
                say(f"ping {addr}: {'ok' if ok else 'FAILED'}")
                if not ok:
                    return 1

            step("What the administrator sees in the service log")
            for line in svc.log().splitlines():
                if "event=" in line and "event=applied" not in line:
                    say(line.split(": ", 1)[-1][:150])

            step("The user's openvpn is killed (kill -9): the service undoes everything")
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            wait_for(lambda: our_state(lab, svc) == before, 5, what="undo")
            say(f"undone in {1000 * (time.monotonic() - t0):.0f} ms: tun devices "
                f"{our_state(lab, svc)[0]}, routes of iservice {our_state(lab, svc)[1]}, "
                f"journal {svc.journal()}")

            step("Stopping the service")
            say(f"exit status {svc.stop()}")
        step("Lab removed: namespaces, users and processes are gone. Demo complete.")
        return 0
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
