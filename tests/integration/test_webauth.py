"""Web login and re-auth (issue 14 item 5) against real openvpn servers.

* Web login: the server's management client (this test, playing the identity provider)
  answers each connecting client with `client-pending-auth … WEB_AUTH::URL 60`; `connect`
  opens the URL with `xdg-open` (a desktop session is there: DISPLAY) — here a test double
  that records the URL, the "browser" — and waits by the server's AUTH_PENDING timeout, not
  its own `--timeout 3`: the provider completes the login (`client-auth-nt`) only after 6 s.
* Re-auth: a session whose server asks for a static-challenge OTP is made to reconnect
  (SIGUSR1); it waits, `iservice sessions` says so, and `iservice auth NAME` answers."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, PtyClient, Service, wait_for
from tests.lab import USER_PATH, Lab, Pki, User

pytestmark = [pytest.mark.root]

PASSWORD = "wa-Pa55-word-4242"
OTP = "135790"
URL = "https://idp.invalid/login?state=8f3a"
LOGIN_DELAY = 6.0  # the provider completes the login after this; connect has --timeout 3


class IdentityProvider(threading.Thread):
    """The VPN server's management client (`management-client-auth`): every connecting
    client gets a web login; once the browser has opened the URL, the login completes
    after ``LOGIN_DELAY`` seconds.  Bounded: it stops by itself after ``limit`` seconds."""

    def __init__(self, sock_path: Path, browser_log: Path, limit: float = 120) -> None:
        super().__init__(daemon=True)
        self.sock_path, self.browser_log, self.limit = sock_path, browser_log, limit
        self.stop = threading.Event()
        self.pending_sent: float | None = None
        self.completed: float | None = None
        self.errors: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            while True:
                try:
                    sock.connect(str(self.sock_path))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.errors.append("no management socket")
                        return
                    time.sleep(0.05)
            buf = b""
            client: tuple[str, str] | None = None
            waiting: tuple[str, str] | None = None
            opened_at: float | None = None
            while not self.stop.is_set() and time.monotonic() < deadline:
                ready, _, _ = select.select([sock], [], [], 0.1)
                if ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace").strip()
                        if line.startswith((">CLIENT:CONNECT,", ">CLIENT:REAUTH,")):
                            cid, kid = line.split(":", 1)[1].split(",")[1:3]
                            client = (cid, kid)
                        elif line == ">CLIENT:ENV,END" and client is not None:
                            cid, kid = client
                            sock.sendall(f'client-pending-auth {cid} {kid} '
                                         f'"WEB_AUTH::{URL}" 60\n'.encode())
                            self.pending_sent = time.monotonic()
                            waiting, client = client, None
                if waiting is not None and opened_at is None and self.browser_log.exists():
                    opened_at = time.monotonic()  # the user is "logging in" from now on
                if waiting is not None and opened_at is not None and \
                        time.monotonic() - opened_at >= LOGIN_DELAY:
                    sock.sendall(f"client-auth-nt {waiting[0]} {waiting[1]}\n".encode())
                    self.completed = time.monotonic()
                    waiting = None
        except OSError as exc:
            self.errors.append(str(exc))
        finally:
            sock.close()


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="wasvc")
    s.start()
    yield s
    assert s.stop() == 0, s.log_tail()
    assert s.tuns() == [] and s.journal()["sessions"] == []


def cli(lab: Lab, svc: Service, user: User, *args: str) -> tuple[int, str, str]:
    cp = lab.run_client([ISERVICE, args[0], "--socket", str(svc.socket_path), *args[1:]],
                        user=user, timeout=60)
    return cp.returncode, cp.stdout, cp.stderr


def test_web_login_waits_by_the_servers_timeout(lab: Lab, svc: Service) -> None:
    mgmt = lab.base_dir / "servers" / "wa-mgmt.sock"
    server = lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                              f"management {mgmt} unix\nmanagement-client-auth\n"
                              "auth-user-pass-optional\n",
                              port=1194, name="wa")
    lab.write_client_config("web.ovpn", port=1194)
    user = lab.add_user("wa")
    bin_dir = lab.make_dir("wa-bin")
    opened = lab.make_dir("wa-opened", mode=0o777) / "url"
    # the "browser": a test double of the desktop's URL opener that records the URL
    lab.write_file("wa-bin/xdg-open", f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n', mode=0o755)
    idp = IdentityProvider(mgmt, opened)
    idp.start()
    env = {"PATH": f"{bin_dir}:{USER_PATH}", "DISPLAY": ":99"}
    term = PtyClient(lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                                     "--timeout", "3", "web"], user=user, env=env))
    started = time.monotonic()
    try:
        try:
            term.expect("Opened the login page in your browser", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nidentity provider: {idp.errors}\n"
                                 f"server:\n{server.log()[-3000:]}") from None
        assert term.wait(60) == 0, term.transcript
    finally:
        term.close()
        idp.stop.set()
        idp.join(10)
    elapsed = time.monotonic() - started
    assert not idp.errors, idp.errors
    assert opened.read_text() == URL
    assert idp.completed is not None and elapsed > LOGIN_DELAY > 3
    assert "Connected: web" in term.transcript and URL in term.transcript
    code, _, err = cli(lab, svc, user, "disconnect", "web")
    assert code == 0, err


def test_otp_at_a_reconnect_is_answered_with_iservice_auth(lab: Lab, svc: Service) -> None:
    lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                     + lab.auth_server_lines({"alice": PASSWORD}, otp=OTP, name="wa-otp"),
                     port=1195, name="waotp", network="10.8.1.0/24", network6="fd00:8:1::/64")
    lab.write_client_config("reotp.ovpn", 'auth-user-pass\nauth-nocache\n'
                            'static-challenge "Enter your OTP" 1\n', port=1195)
    user = lab.add_user("wb")
    term = PtyClient(lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                                     "--timeout", "30", "--username", "alice", "reotp"],
                                    user=user))
    try:
        term.expect("Password:")
        term.send(PASSWORD)
        term.expect("Enter your OTP:")
        term.send(OTP)
        assert term.wait(60) == 0, term.transcript
    finally:
        term.close()
    code, out, _ = cli(lab, svc, user, "sessions", "--json")
    (session,) = json.loads(out)
    name, pid = session["name"], session["pid"]
    assert session["management"] and session["state"] == "CONNECTED"
    code, _, err = cli(lab, svc, user, "auth", name)
    assert code == 1 and "does not wait for credentials" in err
    os.kill(pid, signal.SIGUSR1)  # a reconnect: the server asks for a fresh OTP
    wait_for(lambda: "waits for credentials" in cli(lab, svc, user, "sessions")[1], 30,
             what=lambda: cli(lab, svc, user, "sessions")[1] + svc.log_tail(10))
    code, out, _ = cli(lab, svc, user, "status", name, "--json")
    assert json.loads(out)["detail"] == "waiting for credentials"
    auth = PtyClient(lab.client_cmd([ISERVICE, "auth", "--socket", str(svc.socket_path),
                                     "--username", "alice", name], user=user))
    try:
        auth.expect("Password:", timeout=30)
        auth.send(PASSWORD)
        auth.expect("Enter your OTP:")
        auth.send(OTP)
        assert auth.wait(60) == 0, auth.transcript
    finally:
        auth.close()
    assert f"Connected again: {name}" in auth.transcript
    attempts = (lab.base_dir / "servers" / "wa-otp.attempts").read_text().split()
    assert attempts == ["alice", "ok", "alice", "ok"]
    wait_for(lambda: json.loads(cli(lab, svc, user, "status", name, "--json")[1])["state"]
             == "CONNECTED", 10, what="connected again")
    assert cli(lab, svc, user, "disconnect", name)[0] == 0
