"""The quick-start demo: a real VPN connection through iservice, on a local lab, then nothing left.

It builds a lab (a VPN server that asks for a username and password, in its own
network namespace; the service in another; an unprivileged demo user), and then, as
that user, runs the commands a user types:

    iservice profiles                 which profiles the administrator approved
    iservice connect demo             prompts for username/password, shows progress
    ping                              through the tunnel
    iservice sessions                 the session, its tun, addresses and traffic
    iservice disconnect demo          ends it; the service undoes every change

and shows that nothing was left behind before removing the lab.  The prompts are
answered by the demo through a real pseudo-terminal, as a person would type them.
Run it through scripts/demo.sh.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.isv import ISERVICE, PtyClient, Service
from tests.lab import Lab, Pki, User

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def step(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def say(text: str) -> None:
    print(f"    {text}", flush=True)


def shown(text: str) -> list[str]:
    """Terminal output as plain lines (the one-line progress display becomes one line each)."""
    text = re.sub(r"\r\x1b\[K|\r\n|\r", "\n", text)
    return [line.rstrip() for line in text.split("\n") if line.strip()]


def our_state(lab: Lab, svc: Service) -> tuple[list[str], list[str]]:
    tuns = svc.tuns()
    routes = [f"{r['dst']} dev {r.get('dev')}" for fam in (4, 6) for r in lab.routes(fam)
              if r.get("protocol") == "158"]
    return tuns, routes


def as_user(lab: Lab, svc: Service, user: User, *args: str) -> int:
    """Run `iservice ARGS` as the demo user and show it like a terminal would."""
    print(f"    {user.name}$ iservice {' '.join(args)}")
    cp = lab.run_client([ISERVICE, args[0], "--socket", str(svc.socket_path), *args[1:]],
                        user=user)
    for line in shown(cp.stdout + cp.stderr):
        print(f"      {line}")
    return cp.returncode


def connect(lab: Lab, svc: Service, user: User, password: str) -> int:
    """`iservice connect demo` in a real pseudo-terminal; the demo types the answers."""
    print(f"    {user.name}$ iservice connect demo")
    term = PtyClient(lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                                     "demo"], user=user))
    printed = 0

    def echo() -> None:
        nonlocal printed
        lines = shown(term.transcript)
        for line in lines[printed:]:
            print(f"      {line}", flush=True)
        printed = len(lines)

    try:
        term.expect("Username:")
        term.send(user.name)  # typed, and echoed by the terminal
        term.expect("Password:")
        echo()
        term.send(password)  # getpass turned the echo off
        say("(the demo typed the password; the terminal did not echo it)")
        code = term.wait(90)
        echo()
        return code
    finally:
        term.close()


def main() -> int:
    if os.geteuid() != 0:
        print("the demo builds network namespaces and users: run it as root", file=sys.stderr)
        return 2
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-demo-pki-", dir="/tmp"))
    password = secrets.token_urlsafe(12)
    try:
        step("Building a lab: a VPN server and a client machine, as network namespaces")
        pki = Pki.create(pki_dir)
        with Lab(pki) as lab:
            user = lab.add_user("demo")
            server = lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                                      'push "route-ipv6 fd00:9::/64"\n'
                                      + lab.auth_server_lines({user.name: password}))
            say(f"openvpn server in namespace {lab.server_ns}; it asks every client for a "
                "username and password")
            say(f"the network behind it: {Lab.pushed_net} (host {Lab.pushed_host}) "
                f"and {Lab.pushed_net6}")
            cfg = lab.write_client_config("demo.ovpn", "auth-user-pass\n")
            say(f"the administrator approved one profile: {cfg}")

            step("Starting the service iservice (root) on the client machine")
            svc = Service(lab, name="demo")
            svc.start()
            say(f"listening on {svc.socket_path}")
            say(f"an unprivileged user: '{user.name}' (uid {user.uid}), no sudo, no root")

            step("Which profiles may this user connect?")
            as_user(lab, svc, user, "profiles")

            step("Connecting: the user answers the prompts; iservice shows the progress")
            before = our_state(lab, svc)
            code = connect(lab, svc, user, password)
            if code != 0:
                say(f"connect failed with exit status {code}; service log:")
                print(svc.log_tail(20))
                return 1

            step("Ping through the tunnel")
            for addr in (server.tunnel_addr, Lab.pushed_host, Lab.pushed_host6):
                ok = lab.ping(addr, count=2, user=user)
                say(f"ping {addr}: {'ok' if ok else 'FAILED'}")
                if not ok:
                    return 1

            step("The user lists their sessions (from any terminal)")
            as_user(lab, svc, user, "sessions")

            step("Disconnecting: the service ends openvpn and undoes every change")
            if as_user(lab, svc, user, "disconnect", "demo") != 0:
                return 1
            tuns, routes = our_state(lab, svc)
            say(f"tun devices of iservice: {tuns or 'none'}; routes of iservice: "
                f"{routes or 'none'}; sessions in the undo journal: "
                f"{len(svc.journal()['sessions'])}")
            as_user(lab, svc, user, "sessions")
            if (tuns, routes) != before or svc.journal()["sessions"]:
                say("something was left behind!")
                return 1

            step("Stopping the service")
            say(f"exit status {svc.stop()}")
        step("Lab removed: namespaces, users and processes are gone. Demo complete.")
        return 0
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
