"""The control socket's pure parts (requests, authorization, names, state from openvpn's
output) and the connect dialog's decisions, with a fake terminal."""

from __future__ import annotations

import io
import json

import pytest

from iservice import connect as c
from iservice import control as ctl
from iservice import management as mg

# -- requests ----------------------------------------------------------------


def req(**kw: object) -> ctl.Request:
    return ctl.decode_request(json.dumps(kw).encode())


def test_valid_requests() -> None:
    assert req(op="sessions") == ctl.Request("sessions")
    assert req(op="sessions", all=True) == ctl.Request("sessions", all=True)
    assert req(op="log", name="a-1", follow=True, lines=5) == \
        ctl.Request("log", "a-1", follow=True, lines=5)
    assert req(op="disconnect", all=True).all
    assert req(op="disconnect", name="x", all=True) == ctl.Request("disconnect", "x", all=True)


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"\xff", b"[]", b'"sessions"', b'{"op":"rm -rf"}',
    b'{"op":"sessions","extra":1}', b'{"op":"status"}', b'{"op":"log"}',
    b'{"op":"disconnect"}', b'{"op":"status","name":""}', b'{"op":"status","name":5}',
    b'{"op":"sessions","all":"yes"}', b'{"op":"log","name":"a","lines":-1}',
    b'{"op":"log","name":"a","lines":true}', b'{"op":"log","name":"a","lines":1e9}',
])
def test_bad_requests(raw: bytes) -> None:
    with pytest.raises(ctl.ControlError) as e:
        ctl.decode_request(raw)
    assert e.value.code == "bad-request"


def test_all_is_for_admins_only() -> None:
    ctl.authorize(ctl.Request("sessions", all=True), True, "adm")
    ctl.authorize(ctl.Request("sessions"), False, "adm")
    with pytest.raises(ctl.ControlError) as e:
        ctl.authorize(ctl.Request("disconnect", all=True), False, "adm")
    assert e.value.code == "forbidden" and '"adm"' in e.value.message


# -- names ---------------------------------------------------------------------


def test_profile_and_session_names() -> None:
    assert ctl.profile_name("/etc/openvpn/client/work.ovpn") == "work"
    assert ctl.profile_name("/etc/openvpn/client/home.conf") == "home"
    assert ctl.profile_name("/x/.ovpn") == ".ovpn"
    assert ctl.profile_name("/x/plain") == "plain"
    assert ctl.profile_name(None) == "-"
    assert ctl.session_name("work", 3) == "work-3"
    assert ctl.session_name("-", 4) == "session-4"


def test_select() -> None:
    mine = [ctl.Named(1, "work-1", "work", 1000), ctl.Named(2, "home-2", "home", 1000),
            ctl.Named(3, "home-3", "home", 1000)]
    assert ctl.select("work-1", mine).id == 1
    assert ctl.select("2", mine).id == 2
    assert ctl.select("work", mine).id == 1
    with pytest.raises(ctl.ControlError) as e:
        ctl.select("home", mine)
    assert e.value.code == "ambiguous" and "home-2" in e.value.message
    for missing in ("nope", "4", "work-2"):
        with pytest.raises(ctl.ControlError) as e:
            ctl.select(missing, mine)
        assert e.value.code == "not-found"
    with pytest.raises(ctl.ControlError):
        ctl.select("work-1", [])


# -- state from openvpn's output ---------------------------------------------------


def test_vpn_state_follows_the_log() -> None:
    t = iter(range(100))
    s = ctl.VpnState(clock=lambda: float(next(t)))
    assert (s.name, s.since) == ("STARTING", 0.0)
    lines = [
        ("2026-01-01 MANAGEMENT: unix domain socket listening on /x", "STARTING"),
        ("Need hold release from management interface, waiting...", "HOLD"),
        ("UDPv4 link remote: [AF_INET]192.0.2.1:1194", "CONNECTING"),
        ("TLS: Initial packet from [AF_INET]192.0.2.1:1194, sid=1", "WAIT"),
        ("[server] Peer Connection Initiated with [AF_INET]192.0.2.1:1194", "AUTH"),
        ("PUSH: Received control message: 'PUSH_REPLY,route 10.9.0.0'", "GET_CONFIG"),
        ("Initialization Sequence Completed", "CONNECTED"),
        ("SIGUSR1[soft,ping-restart] received, process restarting", "RECONNECTING"),
        ("Initialization Sequence Completed With Errors", "CONNECTED"),
        ("SIGTERM received, sending exit notification to peer", "EXITING"),
        ("SIGTERM[hard,] received, process exiting", "EXITING"),
    ]
    for line, state in lines:
        s.feed(line)
        assert s.name == state, line
    assert s.detail == "SIGTERM[hard,]"
    since = s.since
    s.feed("some other line")
    assert s.since == since


# -- the connect dialog -----------------------------------------------------------


class FakeTerm(c.Terminal):
    def __init__(self, answers: list[str]) -> None:
        super().__init__(io.StringIO(), tty=False)
        self.answers = answers
        self.asked: list[tuple[str, bool]] = []

    def ask(self, prompt: str, *, secret: bool) -> str:
        self.asked.append((prompt, secret))
        if not self.answers:
            raise c.Cancelled()
        return self.answers.pop(0)


def dialog(answers: list[str], **kw: object) -> tuple[c.Dialog, FakeTerm, list[bytes]]:
    term = FakeTerm(answers)
    sent: list[bytes] = []
    seen: list[bytearray | bytes] = []

    def send(cmd: bytes | bytearray) -> None:
        sent.append(bytes(cmd))
        seen.append(cmd)

    kw.setdefault("open_url", lambda url: False)  # no browser in unit tests
    d = c.Dialog(term, send, **kw)  # type: ignore[arg-type]
    d.seen = seen  # type: ignore[attr-defined]
    return d, term, sent


def ev(line: str) -> mg.Event:
    return mg.parse_notification(line)


def test_dialog_releases_hold_and_answers_password() -> None:
    d, term, sent = dialog(["bob", "hunter2"])
    assert d.handle(ev(">INFO:OpenVPN Management Interface Version 5")) is None
    assert d.handle(ev(">HOLD:Waiting for hold release:0")) is None
    assert d.handle(ev(">PASSWORD:Need 'Auth' username/password")) is None
    assert sent == [b"state on\n", b"log on\n", b"hold off\n",
                    b"hold release\n", b"username Auth bob\n",
                    b"password Auth hunter2\n"]
    assert term.asked == [("Username: ", False), ("Password: ", True)]
    # the buffers that carried the secret were wiped after sending
    assert all(set(x) == {0} for x in d.seen if isinstance(x, bytearray))  # type: ignore
    out = d.handle(ev(">STATE:1,CONNECTED,SUCCESS,10.8.0.2,192.0.2.1,1194,,"))
    assert out == c.Outcome(c.EXIT_OK, "connected") and d.local_ip == "10.8.0.2"


def test_dialog_static_challenge_and_preset_username() -> None:
    d, term, sent = dialog(["pw", "123456"], username="alice")
    d.handle(ev(">PASSWORD:Need 'Auth' username/password SC:1,Enter OTP"))
    assert term.asked == [("Password: ", True), ("Enter OTP: ", False)]
    assert sent == [b"username Auth alice\n",
                    b'password Auth "SCRV1:cHc=:MTIzNDU2"\n']


def test_dialog_dynamic_challenge() -> None:
    d, term, sent = dialog(["u", "p", "777"])
    d.handle(ev(">PASSWORD:Need 'Auth' username/password"))
    out = d.handle(ev(">PASSWORD:Verification Failed: 'Auth' ['CRV1:R:sid42:Y3Ix:Token']"))
    assert out is None and d.challenge is not None
    d.handle(ev(">PASSWORD:Need 'Auth' username/password"))
    assert term.asked[-1] == ("Token: ", True)
    assert sent[-2:] == [b"username Auth cr1\n", b"password Auth CRV1::sid42::777\n"]


def test_dialog_private_key_and_failures() -> None:
    d, term, sent = dialog(["pass phrase"])
    d.handle(ev(">PASSWORD:Need 'Private Key' password"))
    assert term.asked == [("Private key passphrase: ", True)]
    assert sent == [b'password "Private Key" "pass phrase"\n']
    out = d.handle(ev(">PASSWORD:Verification Failed: 'Private Key'"))
    assert out is not None and out.code == c.EXIT_AUTH and "passphrase" in out.message


def test_dialog_auth_failure_and_retries() -> None:
    d, _, _ = dialog([])
    out = d.handle(ev(">PASSWORD:Verification Failed: 'Auth'"))
    assert out is not None and out.code == c.EXIT_AUTH
    d, _, _ = dialog([], auth_retries=1)
    assert d.handle(ev(">PASSWORD:Verification Failed: 'Auth'")) is None
    assert d.handle(ev(">PASSWORD:Verification Failed: 'Auth'")) is not None
    d, _, _ = dialog([])
    out = d.handle(ev(">STATE:1,RECONNECTING,auth-failure,,,,,"))
    assert out is not None and out.code == c.EXIT_AUTH


def test_dialog_progress_web_auth_and_cancel() -> None:
    d, term, _sent = dialog([])
    d.handle(ev(">STATE:1,WAIT,,,192.0.2.1,1194,,"))
    d.handle(ev(">INFOMSG:WEB_AUTH::https://login.example/x"))
    d.handle(ev(">LOG:1,I,PUSH: Received control message: 'PUSH_REPLY,route 10.9.0.0'"))
    d.handle(ev(">LOG:1,I,something unrelated"))
    out = d.handle(ev(">STATE:1,CONNECTED,ERROR,10.8.0.2,,,,"))
    assert out is not None and out.code == c.EXIT_PARTIAL
    text = term.out.getvalue()  # type: ignore[attr-defined]
    assert "waiting for the server to 192.0.2.1:1194" in text
    assert "https://login.example/x" in text
    assert "getting the configuration" in text and "unrelated" not in text
    with pytest.raises(c.Cancelled):
        d.handle(ev(">PASSWORD:Need 'Auth' username/password"))


def test_options_string_is_whitelisted_only() -> None:
    from iservice.policy.argv import split_command_line
    from iservice.policy.options import WHITELIST
    argv = split_command_line(c.openvpn_options("/etc/openvpn/client/a b.ovpn",
                                                "/run/user/1000/iservice/a-1.sock", verb=4))
    assert argv[:2] == ["--config", "/etc/openvpn/client/a b.ovpn"]
    assert {a[2:] for a in argv if a.startswith("--")} <= WHITELIST
    assert "--management-hold" in argv and "--management-query-passwords" in argv


# -- saved credentials and askpass (connect --save-credentials, --askpass) ---------------


def test_dialog_uses_saved_credentials_once_then_asks() -> None:
    from iservice.keyring import Credentials
    looked: list[int] = []

    def saved() -> Credentials:
        looked.append(1)
        return Credentials("alice", "stored-pw")

    d, term, sent = dialog(["bob", "typed-pw"], saved=saved)
    d.handle(ev(">PASSWORD:Need 'Auth' username/password"))
    assert term.asked == [] and sent == [b"username Auth alice\n", b"password Auth stored-pw\n"]
    # refused: asked once more, without using up a retry, and only what was typed is kept
    assert d.handle(ev(">PASSWORD:Verification Failed: 'Auth'")) is None
    assert d.handle(ev(">STATE:1,RECONNECTING,auth-failure,,,,,")) is None
    d.handle(ev(">PASSWORD:Need 'Auth' username/password"))
    assert term.asked == [("Username: ", False), ("Password: ", True)] and looked == [1]
    assert d.typed == Credentials("bob", "typed-pw")
    out = d.handle(ev(">PASSWORD:Verification Failed: 'Auth'"))
    assert out is not None and out.code == c.EXIT_AUTH


def test_saved_password_with_a_static_challenge_asks_the_otp_and_keeps_no_otp() -> None:
    from iservice.keyring import Credentials
    d, term, sent = dialog(["123456"], saved=lambda: Credentials("alice", "pw"))
    d.handle(ev(">PASSWORD:Need 'Auth' username/password SC:1,Enter OTP"))
    assert term.asked == [("Enter OTP: ", False)]
    assert sent[-1] == b'password Auth "SCRV1:cHc=:MTIzNDU2"\n'
    d, term, _ = dialog(["carol", "pw", "654321"])
    d.handle(ev(">PASSWORD:Need 'Auth' username/password SC:1,Enter OTP"))
    assert d.typed == Credentials("carol", "pw")  # the password alone, never the OTP


def test_no_saved_credentials_means_asking() -> None:
    d, term, _ = dialog(["u", "p"], saved=lambda: None)
    d.handle(ev(">PASSWORD:Need 'Auth' username/password"))
    assert [p for p, _ in term.asked] == ["Username: ", "Password: "]
    d, term, _ = dialog(["kp"], saved=lambda: None)  # a key passphrase is never looked up
    d.handle(ev(">PASSWORD:Need 'Private Key' password"))
    assert d.typed is None


@pytest.mark.parametrize(("env", "tty", "expected"), [
    ({"SSH_ASKPASS": "/x"}, False, None),  # no desktop
    ({"SSH_ASKPASS": "/x", "DISPLAY": ":0"}, False, "/x"),
    ({"SSH_ASKPASS": "/x", "WAYLAND_DISPLAY": "w"}, True, None),  # a terminal is there
    ({"SSH_ASKPASS": "/x", "SSH_ASKPASS_REQUIRE": "force"}, True, "/x"),
    ({"SSH_ASKPASS": "/x", "SSH_ASKPASS_REQUIRE": "prefer"}, True, "/x"),
    ({"SSH_ASKPASS": "/x", "SSH_ASKPASS_REQUIRE": "never", "DISPLAY": ":0"}, False, None),
    ({"DISPLAY": ":0"}, False, None),
])
def test_askpass_follows_openssh_rules(env: dict[str, str], tty: bool,
                                       expected: str | None) -> None:
    assert c.askpass_from_env(env, have_terminal=tty) == expected


def test_run_askpass(tmp_path: object) -> None:
    from pathlib import Path
    prog = Path(str(tmp_path)) / "askpass"
    prog.write_text('#!/bin/sh\ncase "$1" in *Password*) printf "s3cret\\nignored";; '
                    '*) exit 1;; esac\n')
    prog.chmod(0o755)
    assert c.run_askpass(str(prog), "Password: ", secret=True) == "s3cret"
    with pytest.raises(c.Cancelled):
        c.run_askpass(str(prog), "Username: ", secret=False)  # Cancel = non-zero exit
    term = c.Terminal(io.StringIO(), tty=False, askpass=str(prog))
    assert term.ask("Password: ", secret=True) == "s3cret"


def test_credentials_never_show_the_password() -> None:
    from iservice.keyring import Credentials
    assert "pw-xyz" not in repr(Credentials("u", "pw-xyz"))


def test_web_auth_opens_the_browser_and_auth_pending_sets_the_deadline() -> None:
    opened: list[str] = []
    d, term, _ = dialog([], open_url=lambda url: opened.append(url) is None)
    d.handle(ev(">INFOMSG:WEB_AUTH::https://idp.example/login?x=1"))
    assert opened == ["https://idp.example/login?x=1"]
    assert "Opened the login page in your browser" in term.out.getvalue()  # type: ignore
    d.handle(ev(">STATE:1,AUTH_PENDING,timeout 300,,,,,"))
    assert d.pending_timeout == 300
    d, _, _ = dialog([])
    d.handle(ev(">STATE:1,AUTH_PENDING,,,,,,"))
    assert d.pending_timeout == 60  # openvpn's hand-window when the server gives none


@pytest.mark.parametrize(("url", "env", "opened"), [
    ("https://idp.example/x", {"DISPLAY": ":0"}, True),
    ("http://idp.example/x", {"WAYLAND_DISPLAY": "wayland-0"}, True),
    ("https://idp.example/x", {}, False),  # no desktop: printed instead
    ("file:///etc/passwd", {"DISPLAY": ":0"}, False),  # only http(s)
    ("javascript:alert(1)", {"DISPLAY": ":0"}, False),
    ("https://a b", {"DISPLAY": ":0"}, False),
])
def test_open_in_browser(tmp_path: object, url: str, env: dict[str, str], opened: bool) -> None:
    from pathlib import Path
    bin_dir = Path(str(tmp_path))
    log = bin_dir / "opened"
    fake = bin_dir / "xdg-open"  # a test double for the desktop's URL opener
    fake.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {log}\n')
    fake.chmod(0o755)
    assert c.open_in_browser(url, {**env, "PATH": str(bin_dir)}) is opened
    if opened:
        import time
        deadline = time.monotonic() + 10
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.read_text() == url
