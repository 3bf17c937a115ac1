"""The client people use (issue 7): `iservice connect` in a real pseudo-terminal against real
openvpn servers that ask for a username/password (and a static-challenge OTP), and the
control commands `sessions`, `status`, `log`, `disconnect`, `profiles` for two users."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, PYTHON, PtyClient, Service, wait_for
from tests.lab import Lab, Pki, User, run

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

PUSH = 'push "route 10.9.0.0 255.255.0.0"\n'
PASSWORD = "s3cret-Pa55-xyzzy"
OTP = "424242"
TOKEN = "918273"
KEYPASS = "key-Pass-phrase-77"


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        creds = {"alice": PASSWORD, "bob": PASSWORD}
        lab.start_server(PUSH + lab.auth_server_lines(creds))
        lab.start_server(PUSH + lab.auth_server_lines(creds, otp=OTP, name="auth-otp"),
                         port=1195, name="otp", network="10.8.1.0/24",
                         network6="fd00:8:1::/64")
        lab.write_client_config("userpass.ovpn", "auth-user-pass\n")
        lab.write_client_config("otp.ovpn", 'auth-user-pass\nstatic-challenge '
                                '"Enter your OTP" 1\n', port=1195)
        lab.start_server(PUSH, port=1196, name="plain", network="10.8.2.0/24",
                         network6="fd00:8:2::/64")
        lab.write_client_config("plain.ovpn", port=1196)
        # the same client key, encrypted: openvpn asks for its passphrase
        enc = lab.base_dir / "servers" / "client-enc.key"
        run(["openssl", "pkey", "-in", str(lab.pki.client_key), "-aes256", "-passout",
             "stdin", "-out", str(enc)], input=KEYPASS + "\n")
        lab.write_file("client/pkey.ovpn", lab.client_config_text(port=1196).replace(
            lab.pki.inline_client_block(), lab.pki.inline_client_block(key=enc)))
        lab.start_server(PUSH + lab.auth_server_lines(creds, challenge=TOKEN, name="crv1"),
                         port=1197, name="crv1", network="10.8.3.0/24",
                         network6="fd00:8:3::/64")
        lab.write_client_config("crv1.ovpn", "auth-user-pass\n", port=1197)
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="clientsvc")
    s.start()
    yield s
    assert s.stop() == 0, s.log_tail()
    assert s.tuns() == [] and s.journal()["sessions"] == []


def cli(lab: Lab, svc: Service, user: User | None, *args: str, timeout: float = 60
        ) -> tuple[int, str, str]:
    cp = lab.run_client([ISERVICE, *args[:1], "--socket", str(svc.socket_path), *args[1:]],
                        user=user, timeout=timeout)
    return cp.returncode, cp.stdout, cp.stderr


def connect_pty(lab: Lab, svc: Service, user: User, profile: str, *extra: str) -> PtyClient:
    cmd = lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                          "--timeout", "30", profile, *extra], user=user)
    return PtyClient(cmd)


def sessions(lab: Lab, svc: Service, user: User | None, *flags: str) -> list[dict[str, object]]:
    code, out, err = cli(lab, svc, user, "sessions", "--json", *flags)
    assert code == 0, err
    result: list[dict[str, object]] = json.loads(out)
    return result


def nothing_left(lab: Lab, svc: Service) -> bool:
    ours = [r for fam in (4, 6) for r in lab.routes(fam) if r.get("protocol") == "158"]
    return not svc.tuns() and not ours and svc.journal() == {"sessions": [], "changes": 0}


def files_under(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob("*") if p.is_file()]


def all_cmdlines() -> bytes:
    out = b""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                out += (d / "cmdline").read_bytes() + b"\n"
    return out


def test_connect_with_password_prompt_then_disconnect(lab: Lab, svc: Service) -> None:
    alice = lab.add_user("alice")
    term = connect_pty(lab, svc, alice, "userpass")
    try:
        term.expect("Username:")
        term.send("alice")
        term.expect("Password:")
        # While the client waits with the secret in hand: never on any command line.
        term.send(PASSWORD)
        term.expect("Connected", timeout=40)
        assert PASSWORD.encode() not in all_cmdlines()
        assert term.wait() == 0, term.transcript
    finally:
        term.close()
    assert PASSWORD not in term.transcript  # getpass: no echo
    assert "Disconnect with: iservice disconnect userpass-" in term.transcript
    assert lab.ping(Lab.pushed_host)
    mine = sessions(lab, svc, alice)
    assert len(mine) == 1 and mine[0]["state"] == "CONNECTED" and mine[0]["profile"] == "userpass"
    name = str(mine[0]["name"])
    assert mine[0]["tun"] in svc.tuns() and mine[0]["addresses"]
    code, out, _ = cli(lab, svc, alice, "status", name)
    assert code == 0 and "CONNECTED" in out and str(mine[0]["tun"]) in out
    code, out, _ = cli(lab, svc, alice, "status", "--json", "userpass")
    assert code == 0 and json.loads(out)["pid"] == mine[0]["pid"]
    code, out, _ = cli(lab, svc, alice, "log", name)
    assert code == 0 and "Initialization Sequence Completed" in out
    # the secret is nowhere: service log, session logs, openvpn's output, the client's files
    texts = [svc.log(), out] + [p.read_text(errors="replace")
                                 for p in files_under(svc.log_dir, alice.home)]
    assert all(PASSWORD not in t for t in texts)
    code, out, err = cli(lab, svc, alice, "disconnect", name)
    assert code == 0 and name in out, err
    assert nothing_left(lab, svc), svc.log_tail()
    assert files_under(alice.home) == []  # the management socket is gone too
    assert sessions(lab, svc, alice) == []


def test_wrong_password_exits_with_auth_status(lab: Lab, svc: Service) -> None:
    bob = lab.add_user("bob")
    term = connect_pty(lab, svc, bob, "userpass", "--username", "bob")
    try:
        term.expect("Password:")
        term.send("not-the-password")
        code = term.wait(60)
    finally:
        term.close()
    assert code == 4, term.transcript
    assert "authentication failed" in term.transcript
    wait_for(lambda: nothing_left(lab, svc), 10, what="session undone after auth failure")
    assert sessions(lab, svc, bob) == []


def test_client_killed_at_the_prompt_ends_the_session(lab: Lab, svc: Service) -> None:
    """A closed terminal (SIGHUP) or SIGTERM at a prompt must not leave an openvpn waiting
    forever for an answer nobody will give."""
    frank = lab.add_user("frank")
    term = connect_pty(lab, svc, frank, "userpass")
    try:
        term.expect("Username:")
        assert len(sessions(lab, svc, frank)) == 1
        os.kill(term.pid, signal.SIGTERM)  # exec chain: term.pid is iservice itself
        assert term.wait(30) == 130, term.transcript
    finally:
        term.close()
    wait_for(lambda: nothing_left(lab, svc), 10, what="nothing left")
    assert sessions(lab, svc, frank) == []


def test_static_challenge_otp(lab: Lab, svc: Service) -> None:
    carol = lab.add_user("carol")
    term = connect_pty(lab, svc, carol, "otp", "--username", "alice")
    try:
        term.expect("Password:")
        term.send(PASSWORD)
        term.expect("Enter your OTP:")
        term.send(OTP)
        term.expect("Connected", timeout=40)
        assert term.wait() == 0
    finally:
        term.close()
    assert OTP in term.transcript  # echo was asked for (static-challenge ... 1)
    assert PASSWORD not in term.transcript
    code, _out, err = cli(lab, svc, carol, "disconnect", "otp")
    assert code == 0, err
    assert nothing_left(lab, svc)


def test_dynamic_challenge_crv1(lab: Lab, svc: Service) -> None:
    dave = lab.add_user("dave")
    term = connect_pty(lab, svc, dave, "crv1", "--username", "bob")
    try:
        term.expect("Password:")
        term.send(PASSWORD)
        # the server answers the right password with a CRV1 challenge; connect asks it
        term.expect("Enter the code from your token:", timeout=40)
        term.send(TOKEN)
        term.expect("Connected", timeout=40)
        assert term.wait() == 0
    finally:
        term.close()
    assert TOKEN not in term.transcript and PASSWORD not in term.transcript  # no echo
    attempts = (lab.base_dir / "servers" / "crv1.attempts").read_text().split("\n")
    assert attempts[:2] == ["bob challenged", "bob ok"]
    code, _, err = cli(lab, svc, dave, "disconnect", "crv1")
    assert code == 0, err
    assert nothing_left(lab, svc)


@pytest.mark.parametrize(("answer", "status"), [(KEYPASS, 0), ("wrong-pass", 4)])
def test_private_key_passphrase(lab: Lab, svc: Service, answer: str, status: int) -> None:
    erin = lab.add_user("erin")
    term = connect_pty(lab, svc, erin, "pkey")
    try:
        term.expect("Private key passphrase:")
        term.send(answer)
        code = term.wait(60)
    finally:
        term.close()
    assert code == status, term.transcript
    assert answer not in term.transcript
    if status == 0:
        assert "Connected" in term.transcript
        assert cli(lab, svc, erin, "disconnect", "pkey")[0] == 0
    else:
        assert "wrong private key passphrase" in term.transcript
    wait_for(lambda: nothing_left(lab, svc), 10, what="nothing left")


def test_two_users_see_only_their_own(lab: Lab, svc: Service) -> None:
    admin_user = lab.add_user("adm", groups=[svc.admin_group])
    u1, u2 = lab.add_user("one"), lab.add_user("two")
    for u in (u1, u2):
        code, out, err = cli(lab, svc, u, "connect", "--timeout", "30", "plain")
        assert code == 0, out + err
    s1, s2 = sessions(lab, svc, u1), sessions(lab, svc, u2)
    assert len(s1) == 1 and len(s2) == 1 and s1[0]["name"] != s2[0]["name"]
    assert s1[0]["uid"] == u1.uid and s2[0]["uid"] == u2.uid
    other = str(s2[0]["name"])
    # u1 can neither see nor end u2's session, by name, id or profile
    for target in (other, str(s2[0]["id"])):
        code, _, err = cli(lab, svc, u1, "disconnect", target)
        assert code == 1 and "no session" in err
        code, _, err = cli(lab, svc, u1, "status", target)
        assert code == 1
    code, _, err = cli(lab, svc, u1, "sessions", "--all")
    assert code == 1 and "--all" in err
    code, _, err = cli(lab, svc, u1, "disconnect", "--all")
    assert code == 1
    assert len(sessions(lab, svc, u2)) == 1
    # profiles: what u1 may use
    code, out, _ = cli(lab, svc, u1, "profiles", "--json")
    assert code == 0 and {p["name"] for p in json.loads(out)} >= {"plain", "userpass", "otp"}
    # an admin sees both and may end them all
    everyone = sessions(lab, svc, admin_user, "--all")
    assert {s["uid"] for s in everyone} == {u1.uid, u2.uid}
    code, out, _ = cli(lab, svc, admin_user, "sessions", "--all")
    assert code == 0 and u1.name in out and u2.name in out
    code, out, err = cli(lab, svc, admin_user, "disconnect", "--all")
    assert code == 0, err
    assert nothing_left(lab, svc), svc.log_tail()


def test_refused_profile_and_unknown_profile(lab: Lab, svc: Service) -> None:
    u = lab.add_user("ref")
    outside = lab.write_file("elsewhere.ovpn", lab.client_config_text())
    code, _, err = cli(lab, svc, u, "connect", str(outside))
    assert code == 1 and "admin approval" in err
    code, _, err = cli(lab, svc, u, "connect", "nosuchprofile")
    assert code == 2 and "no profile" in err


def test_openvpn_failing_before_connecting(lab: Lab, svc: Service) -> None:
    u = lab.add_user("brk")
    lab.write_client_config("broken.ovpn", "no-such-option-at-all yes")
    code, _, err = cli(lab, svc, u, "connect", "broken")
    assert code == 6, err
    assert "openvpn exited before connecting" in err or "management interface" in err
    wait_for(lambda: nothing_left(lab, svc), 10, what="nothing left")


def test_foreground_log_follow_and_ctrl_c(lab: Lab, svc: Service) -> None:
    u = lab.add_user("fg")
    term = PtyClient(lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                                     "--foreground", "plain"], user=u))
    follow = None
    try:
        term.expect("Ctrl-C disconnects", timeout=40)
        (s,) = sessions(lab, svc, u)
        follow = lab.popen_client([ISERVICE, "log", "--socket", str(svc.socket_path),
                                   "--follow", "-n", "1", str(s["name"])], user=u,
                                  label="log-follow")
        wait_for(lambda: follow is not None and follow.output().strip(), 10,
                 what="the last log line")
        before = follow.output()
        os.write(term.fd, b"\x03")  # Ctrl-C on the terminal
        assert term.wait(30) == 0, term.transcript
        assert "Disconnected." in term.transcript
        # the follower saw openvpn's last words and ended with the session
        assert follow.wait(15) == 0
        assert "SIGTERM" in follow.output()[len(before):]
    finally:
        term.close()
        if follow is not None:
            follow.end()
    wait_for(lambda: nothing_left(lab, svc), 10, what="nothing left after Ctrl-C")


def test_unreachable_server_times_out(lab: Lab, svc: Service) -> None:
    u = lab.add_user("unr")
    lab.write_client_config("nowhere.ovpn", port=1999)  # nobody listens there
    code, out, err = cli(lab, svc, u, "connect", "--timeout", "3", "nowhere")
    assert code == 5, out + err
    assert "no answer from the server" in err
    wait_for(lambda: nothing_left(lab, svc), 10, what="session ended after the timeout")


def test_demo_runs() -> None:
    """The quick start's demo, exactly as README tells (scripts/demo.sh minus the install)."""
    root = Path(__file__).resolve().parents[2]
    cp = subprocess.run([PYTHON, str(root / "scripts" / "demo.py")], capture_output=True,
                        text=True, timeout=300, cwd=root)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    for text in ("iservice connect demo", "Password:", "Connected: demo", "ping 10.9.0.1: ok",
                 "CONNECTED", "Disconnected demo-", "No sessions.", "Demo complete."):
        assert text in cp.stdout, cp.stdout
