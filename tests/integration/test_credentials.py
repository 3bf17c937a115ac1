"""Saved credentials (issue 14 item 4) with a real Secret Service: Debian's
gnome-keyring-daemon on a private session bus (dbus-daemon), both run as the lab user.
`connect --save-credentials` keeps the username and password (never the OTP), later
connects use them without asking, `forget` removes them, and an askpass program answers
the prompts when there is no terminal."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, PtyClient, Service, wait_for
from tests.lab import Lab, LabProcess, Pki, User

pytestmark = [pytest.mark.root]

PASSWORD = "kr-Pa55-word-31337"
OTP = "424242"
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        creds = {"alice": PASSWORD}
        push = 'push "route 10.9.0.0 255.255.0.0"\n'
        lab.start_server(push + lab.auth_server_lines(creds, name="kr-auth"), port=1194,
                         name="kr")
        lab.start_server(push + lab.auth_server_lines(creds, otp=OTP, name="kr-otp"),
                         port=1195, name="krotp", network="10.8.1.0/24",
                         network6="fd00:8:1::/64")
        lab.write_client_config("userpass.ovpn", "auth-user-pass\n", port=1194)
        lab.write_client_config("otp.ovpn", 'auth-user-pass\nstatic-challenge '
                                '"Enter your OTP" 1\n', port=1195)
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="krsvc")
    s.start()
    yield s
    assert s.stop() == 0, s.log_tail()


class Keyring:
    """dbus-daemon + gnome-keyring-daemon (secrets component) as ``user``."""

    def __init__(self, lab: Lab, user: User) -> None:
        self.lab, self.user = lab, user
        run_dir = user.home / "run"
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, user.uid, user.gid)
        bus = run_dir / "bus"
        conf = lab.write_file(f"{user.name}-bus.conf", BUS_CONF.format(path=bus))
        self.env = {"DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}",
                    "XDG_RUNTIME_DIR": str(run_dir)}
        self.procs: list[LabProcess] = []
        self.procs.append(lab.popen_client(["dbus-daemon", f"--config-file={conf}", "--nofork"],
                                           user=user, env=self.env, label="session-bus"))
        wait_for(bus.exists, 10, what="the session bus")
        daemon = lab.popen_client(
            ["gnome-keyring-daemon", "--unlock", "--foreground", "--components=secrets"],
            user=user, env=self.env, label="gnome-keyring", stdin=subprocess.PIPE)
        assert daemon.stdin is not None
        daemon.stdin.write(b"keyring-unlock-pw")  # creates and unlocks the login keyring
        daemon.stdin.close()
        self.procs.append(daemon)
        wait_for(self.ready, 15, what="gnome-keyring on the session bus")

    def ready(self) -> bool:
        cp = self.lab.run_client([ISERVICE, "forget", "nothing"], user=self.user,
                                 env=self.env)
        return "no saved credentials" in cp.stderr

    def files(self) -> list[Path]:
        return [p for p in (self.user.home / ".local").rglob("*") if p.is_file()]

    def close(self) -> None:
        for p in reversed(self.procs):
            p.end()


def connect_cmd(lab: Lab, svc: Service, user: User, env: dict[str, str],
                *args: str) -> list[str]:
    return lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                           "--timeout", "30", *args], user=user, env=env)


def attempts(lab: Lab, name: str) -> list[str]:
    return (lab.base_dir / "servers" / f"{name}.attempts").read_text().split()


def detached(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run without a terminal (a new session: no controlling tty) and without input."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, start_new_session=True)


def disconnect_all(lab: Lab, svc: Service, user: User) -> None:
    for name in ("userpass", "otp"):
        lab.run_client([ISERVICE, "disconnect", "--socket", str(svc.socket_path), name],
                       user=user)
    wait_for(lambda: svc.tuns() == [], 10, what="sessions ended")


def test_save_use_forget_and_askpass(lab: Lab, svc: Service) -> None:
    user = lab.add_user("kr")
    keyring = Keyring(lab, user)
    askpass = lab.write_file("askpass.sh", (
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  *Username*) echo alice ;;\n'
        f'  *Password*) echo "{PASSWORD}" ;;\n'
        f'  *OTP*) echo {OTP} ;;\n'
        "  *) exit 1 ;;\n"
        "esac\n"), mode=0o755)
    try:
        # 1. typed in a terminal, saved once the server accepted them
        term = PtyClient(connect_cmd(lab, svc, user, keyring.env, "userpass",
                                     "--save-credentials"))
        try:
            term.expect("Username:")
            term.send("alice")
            term.expect("Password:")
            term.send(PASSWORD)
            term.expect("Saved the username and password", timeout=40)
            assert term.wait() == 0, term.transcript
        finally:
            term.close()
        disconnect_all(lab, svc, user)
        # the keyring's file is encrypted: the password is in no file of the user's
        assert all(PASSWORD.encode() not in p.read_bytes() for p in keyring.files())
        assert keyring.files()
        # 2. later: no terminal, nothing typed — the saved credentials are used
        n = len(attempts(lab, "kr-auth"))
        cp = detached(connect_cmd(lab, svc, user, keyring.env, "userpass"))
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "using the saved credentials" in cp.stdout and "Password" not in cp.stdout
        assert attempts(lab, "kr-auth")[n:] == ["alice", "ok"]
        disconnect_all(lab, svc, user)
        # 3. a static-challenge profile: the password is saved, the OTP never is; later the
        #    OTP comes from an askpass program (no terminal)
        term = PtyClient(connect_cmd(lab, svc, user, keyring.env, "otp",
                                     "--save-credentials"))
        try:
            term.expect("Username:")
            term.send("alice")
            term.expect("Password:")
            term.send(PASSWORD)
            term.expect("Enter your OTP:")
            term.send(OTP)
            term.expect("Saved the username", timeout=40)
            assert term.wait() == 0, term.transcript
        finally:
            term.close()
        disconnect_all(lab, svc, user)
        assert all(OTP.encode() not in p.read_bytes() for p in keyring.files())
        cp = detached(connect_cmd(lab, svc, user, keyring.env, "otp", "--askpass",
                                  str(askpass)))
        assert cp.returncode == 0, cp.stdout + cp.stderr  # saved password + askpass OTP
        disconnect_all(lab, svc, user)
        # 4. forget: gone; then nothing to answer with and no terminal → interrupted (130)
        assert lab.run_client([ISERVICE, "forget", "userpass"], user=user,
                              env=keyring.env).returncode == 0
        assert lab.run_client([ISERVICE, "forget", "userpass"], user=user,
                              env=keyring.env).returncode == 1
        cp = detached(connect_cmd(lab, svc, user, keyring.env, "userpass"))
        assert cp.returncode == 130, cp.stdout + cp.stderr
        # 5. SSH_ASKPASS with a desktop and no terminal answers every prompt
        env = {**keyring.env, "SSH_ASKPASS": str(askpass), "DISPLAY": ":99"}
        cp = detached(connect_cmd(lab, svc, user, env, "userpass"))
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "Password" not in cp.stdout
        disconnect_all(lab, svc, user)
    finally:
        keyring.close()
