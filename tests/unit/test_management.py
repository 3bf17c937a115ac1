"""The sans-IO management codec: every notification type, replies, quoting, secrets."""

from __future__ import annotations

import base64

import pytest

from iservice import management as mg


def events(data: bytes, *expect: bool) -> list[mg.Event]:
    p = mg.Parser()
    for multi in expect:
        p.expect(multi)
    p.feed(data)
    return list(p.events())


@pytest.mark.parametrize(("line", "event"), [
    (">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
     mg.Info("OpenVPN Management Interface Version 5 -- type 'help' for more info")),
    (">HOLD:Waiting for hold release:0", mg.Hold("Waiting for hold release:0", 0)),
    (">HOLD:Waiting for hold release:10", mg.Hold("Waiting for hold release:10", 10)),
    (">STATE:1700000000,CONNECTED,SUCCESS,10.8.0.2,192.0.2.1,1194,,,fd00:8::1000",
     mg.State(1700000000, "CONNECTED", "SUCCESS", "10.8.0.2", "192.0.2.1", "1194", "", "",
              "fd00:8::1000")),
    (">STATE:1700000000,WAIT,,,,,,", mg.State(1700000000, "WAIT")),
    (">STATE:1700000000,RECONNECTING,auth-failure,,,,,",
     mg.State(1700000000, "RECONNECTING", "auth-failure")),
    (">PASSWORD:Need 'Auth' username/password",
     mg.PasswordRequest("Auth", need_username=True, need_password=True)),
    (">PASSWORD:Need 'Auth' username",
     mg.PasswordRequest("Auth", need_username=True, need_password=False)),
    (">PASSWORD:Need 'Private Key' password",
     mg.PasswordRequest("Private Key", need_username=False, need_password=True)),
    (">PASSWORD:Need 'Auth' username/password SC:1,Enter your OTP",
     mg.PasswordRequest("Auth", True, True, mg.StaticChallenge("Enter your OTP", echo=True))),
    (">PASSWORD:Need 'Auth' username/password SC:0,PIN, please",
     mg.PasswordRequest("Auth", True, True, mg.StaticChallenge("PIN, please", echo=False))),
    (">PASSWORD:Need 'Auth' username/password SC:3,OTP",
     mg.PasswordRequest("Auth", True, True, mg.StaticChallenge("OTP", echo=True, concat=True))),
    (">PASSWORD:Verification Failed: 'Auth'", mg.VerificationFailed("Auth")),
    (">PASSWORD:Verification Failed: 'Private Key'", mg.VerificationFailed("Private Key")),
    (">PASSWORD:Verification Failed: 'Auth' ['CRV1:R,E:Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l:"
     "Y3Ix:Please enter token PIN']",
     mg.VerificationFailed("Auth", mg.DynamicChallenge(
         "R,E", "Om01u7Fh4LrGBS7uh0SWmzwabUiGiW6l", "cr1", "Please enter token PIN"))),
    (">PASSWORD:Auth-Token:SECRETTOKEN", mg.AuthToken()),
    (">INFOMSG:WEB_AUTH::https://vpn.example/login?x=1",
     mg.WebAuth("https://vpn.example/login?x=1", "")),
    (">INFOMSG:WEB_AUTH:external:https://a.example/", mg.WebAuth("https://a.example/",
                                                                 "external")),
    (">INFOMSG:OPEN_URL:https://b.example/", mg.WebAuth("https://b.example/")),
    (">INFOMSG:CR_TEXT:E,R:Your code: ", mg.CrText("E,R", "Your code: ")),
    (">INFOMSG:something else", mg.InfoMsg("something else")),
    (">BYTECOUNT:1234,5678", mg.ByteCount(1234, 5678)),
    (">LOG:1700000000,I,Initialization Sequence Completed",
     mg.Log(1700000000, "I", "Initialization Sequence Completed")),
    (">LOG:1700000000,W,a, message, with commas",
     mg.Log(1700000000, "W", "a, message, with commas")),
    (">ECHO:1700000000,forget-passwords", mg.Echo(1700000000, "forget-passwords")),
    (">FATAL:Cannot open TUN/TAP dev", mg.Fatal("Cannot open TUN/TAP dev")),
    (">NEED-OK:Need 'token-insertion-request' confirmation MSG:Please insert your token",
     mg.NeedOk("token-insertion-request", "Please insert your token")),
    (">NEED-STR:Need 'name' input MSG:Please specify your name",
     mg.NeedStr("name", "Please specify your name")),
    (">CLIENT:CONNECT,0,1", mg.Notification("CLIENT", "CONNECT,0,1")),
    (">PASSWORD:something new", mg.Notification("PASSWORD", "something new")),
    (">WEIRD", mg.Notification("WEIRD", "")),
])
def test_notifications(line: str, event: mg.Event) -> None:
    assert events(line.encode() + b"\r\n") == [event]


def test_auth_token_value_is_not_kept() -> None:
    (ev,) = events(b">PASSWORD:Auth-Token:SECRETTOKEN\n")
    assert "SECRETTOKEN" not in repr(ev)


def test_malformed_crv1_is_no_challenge() -> None:
    assert events(b">PASSWORD:Verification Failed: 'Auth' ['CRV1:R:id:!!notb64:text']\n") == \
        [mg.VerificationFailed("Auth", None)]
    assert mg.parse_crv1("CRV1:only:two") is None


def test_single_and_multi_line_replies_with_interleaved_notifications() -> None:
    data = (b"SUCCESS: real-time state notification set to ON\n"
            b"1700000000,CONNECTING,,,,,,\n"
            b">BYTECOUNT:1,2\n"
            b"1700000001,CONNECTED,SUCCESS,10.8.0.2,,,,\n"
            b"END\n"
            b"ERROR: unknown command\n")
    assert events(data, False, True, False) == [
        mg.Response(True, "real-time state notification set to ON"),
        mg.ByteCount(1, 2),
        mg.Response(True, "", ("1700000000,CONNECTING,,,,,,",
                               "1700000001,CONNECTED,SUCCESS,10.8.0.2,,,,")),
        mg.Response(False, "unknown command"),
    ]


def test_multi_line_error_and_unexpected_lines() -> None:
    assert events(b"ERROR: no such thing\n", True) == [mg.Response(False, "no such thing")]
    assert events(b"stray line\n\n") == [mg.Unexpected("stray line")]
    assert events(b"ENTER PASSWORD:x\n", False) == [mg.Unexpected("ENTER PASSWORD:x")]


def test_split_reads_and_long_lines() -> None:
    p = mg.Parser()
    line = b">STATE:1,CONNECTED,SUCCESS,10.8.0.2,,,,\n"
    for i in range(len(line)):
        p.feed(line[i:i + 1])
    assert list(p.events()) == [mg.State(1, "CONNECTED", "SUCCESS", "10.8.0.2")]
    p.feed(b">LOG:" + b"x" * (mg.MAX_LINE * 2))
    (ev,) = list(p.events())
    assert isinstance(ev, mg.Log) and len(ev.text) < mg.MAX_LINE
    p.feed(b"\xff\xfe>INFO:bad utf8\n")
    assert len(list(p.events())) == 1


def test_commands_and_quoting() -> None:
    assert mg.command("hold", "release") == b"hold release\n"
    assert mg.command("state", "on") == b"state on\n"
    assert mg.command("username", "Auth", "bob") == b"username Auth bob\n"
    assert mg.command("password", "Private Key", 'a "b" \\c') == \
        b'password "Private Key" "a \\"b\\" \\\\c"\n'
    assert mg.command("needok", "token-insertion-request", "ok") == \
        b"needok token-insertion-request ok\n"
    assert mg.command("password", "Auth", "") == b'password Auth ""\n'
    for bad in ("a\nsignal SIGTERM", "a\rb", "a\0b"):
        with pytest.raises(ValueError):
            mg.command("password", "Auth", bad)
    with pytest.raises(ValueError):
        mg.command("bad command", "x")


def test_multi_line_commands() -> None:
    assert mg.is_multi_line(b"state\n") and mg.is_multi_line(b"status 2\n")
    assert mg.is_multi_line(b"log 20\n") and mg.is_multi_line(b"state all\n")
    assert not mg.is_multi_line(b"state on\n") and not mg.is_multi_line(b"log off\n")
    assert not mg.is_multi_line(b"hold release\n") and not mg.is_multi_line(b"")


def test_challenge_answers() -> None:
    sc = mg.StaticChallenge("OTP", echo=True)
    b64 = base64.b64encode
    assert mg.static_challenge_password("pw", "123", sc) == \
        f"SCRV1:{b64(b'pw').decode()}:{b64(b'123').decode()}"
    assert mg.static_challenge_password("pw", "123", mg.StaticChallenge("OTP", True, True)) \
        == "pw123"
    ch = mg.DynamicChallenge("R,E", "sid", "cr1", "PIN")
    assert ch.echo and ch.response_required
    assert mg.dynamic_challenge_password(ch, "9876") == "CRV1::sid::9876"
    assert mg.cr_response_command("ok") == bytearray(b"cr-response b2s=\n")
    assert mg.CrText("R", "x").echo is False


def test_password_commands_are_wipeable() -> None:
    cmds = mg.password_commands("Auth", username="bob", password="hunter2")
    assert [bytes(c) for c in cmds] == [b"username Auth bob\n", b"password Auth hunter2\n"]
    for c in cmds:
        mg.wipe(c)
    assert all(set(c) == {0} for c in cmds)
    assert mg.password_commands("Private Key", username=None, password="x") == \
        [bytearray(b'password "Private Key" x\n')]
