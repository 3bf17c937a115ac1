"""The control socket codec (iservice.wire.control): requests and replies round-trip, every
malformed input gives the typed error of whoever is at fault, and nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.wire import control as wc

names = st.text(min_size=1, max_size=wc.MAX_NAME)
opt_names = st.none() | names


@st.composite
def requests(draw: st.DrawFn) -> wc.Request:
    op = draw(st.sampled_from(wc.OPS))
    name = draw(names if op in ("status", "log", "remove") else opt_names)
    everyone = draw(st.booleans())
    if op == "disconnect" and name is None:
        everyone = True
    path = None
    if op == "import":
        path = "/" + draw(st.text(st.characters(blacklist_characters="\0"), min_size=1,
                                  max_size=wc.MAX_PATH - 1))
    return wc.Request(op, name, all=everyone, follow=draw(st.booleans()),
                      lines=draw(st.integers(0, wc.MAX_LINES)), path=path,
                      replace=draw(st.booleans()))


text = st.text(max_size=40)
opt_num = st.none() | st.integers(0, 2**40) | st.floats(0, 2e9, allow_nan=False)
opt_int = st.none() | st.integers(0, 2**63)

sessions = st.builds(
    wc.SessionInfo, name=text, id=st.integers(0, 2**31), user=text, uid=st.integers(0, 2**32),
    profile=text, config=st.none() | text, state=text, detail=text, state_since=opt_num,
    started=opt_num, tun=st.none() | text, addresses=st.lists(text, max_size=4).map(tuple),
    bytes_in=opt_int, bytes_out=opt_int, pid=st.none() | st.integers(1, 2**22))
profiles = st.builds(wc.Profile, name=text, path=text)
codes = st.sampled_from(wc.CODES)
own_profiles = st.builds(wc.Profile, name=text, path=text, own=st.booleans())
replies = st.one_of(
    st.builds(wc.ImportReply, own_profiles),
    st.builds(wc.RemoveReply, text),
    st.builds(wc.ErrorReply, code=codes, error=text),
    st.builds(wc.SessionsReply, st.lists(sessions, max_size=3).map(tuple)),
    st.builds(wc.StatusReply, sessions),
    st.builds(wc.ProfilesReply, text, st.lists(own_profiles, max_size=3).map(tuple)),
    st.builds(wc.DisconnectReply, st.lists(text, max_size=3).map(tuple)),
)
OP_OF = {wc.SessionsReply: "sessions", wc.StatusReply: "status", wc.ProfilesReply: "profiles",
         wc.DisconnectReply: "disconnect", wc.ErrorReply: "sessions",
         wc.ImportReply: "import", wc.RemoveReply: "remove"}


@given(requests())
def test_requests_round_trip(req: wc.Request) -> None:
    raw = wc.encode_request(req)
    assert len(raw) <= wc.MAX_REQUEST
    assert wc.decode_request(raw) == req


@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_bad_request(raw: bytes) -> None:
    try:
        req = wc.decode_request(raw)
    except wc.ControlError as exc:
        assert exc.code == "bad-request" and exc.message
    else:
        assert isinstance(req, wc.Request)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)


@given(st.dictionaries(st.sampled_from(["op", "name", "all", "follow", "lines", "path",
                                        "replace", "extra"]),
                       json_values | st.sampled_from(wc.OPS)))
def test_any_json_object_gives_a_request_or_bad_request(obj: dict[str, Any]) -> None:
    try:
        req = wc.decode_request(json.dumps(obj).encode())
    except wc.ControlError as exc:
        assert exc.code == "bad-request"
    else:
        assert req.to_json() == {k: v for k, v in obj.items()
                                 if v != {"all": False, "follow": False, "lines": 200,
                                          "name": None, "path": None,
                                          "replace": False}.get(k, object())}


@pytest.mark.parametrize(("fields", "why"), [
    ({"op": "reboot"}, "op must be"),
    ({"op": "status"}, "needs a session name"),
    ({"op": "log", "name": ""}, "non-empty"),
    ({"op": "log", "name": "x" * (wc.MAX_NAME + 1)}, "at most"),
    ({"op": "sessions", "all": 1}, "true or false"),
    ({"op": "log", "name": "a", "lines": True}, "integer"),
    ({"op": "log", "name": "a", "lines": wc.MAX_LINES + 1}, "integer"),
    ({"op": "disconnect"}, "name or all"),
])
def test_constructor_validates(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(wc.ControlError, match=why) as e:
        wc.Request(**fields)
    assert e.value.code == "bad-request"


def test_oversize_and_unknown_fields() -> None:
    with pytest.raises(wc.ControlError, match="at most 4096"):
        wc.decode_request(b" " * 4097)
    with pytest.raises(wc.ControlError, match="unknown field"):
        wc.decode_request(b'{"op":"sessions","uid":0}')
    with pytest.raises(wc.ControlError, match="not JSON"):
        wc.decode_request(b"[" * 4000)


@given(replies)
def test_replies_round_trip(reply: wc.Reply) -> None:
    op = OP_OF[type(reply)]
    assert wc.decode_reply(wc.encode_reply(reply), op) == reply


@given(st.lists(st.text(max_size=200), max_size=50), st.booleans())
def test_log_lines_round_trip_and_stay_below_the_limit(lines: list[str], first: bool) -> None:
    groups = list(wc.chunk_lines(lines, limit=2000))
    assert [x for g in groups for x in g] == lines
    for i, g in enumerate(groups):
        raw = wc.encode_reply(wc.LogLines(g, first and i == 0))
        assert len(raw) < 2000 or len(g) == 1
        assert wc.decode_reply(raw, "log", first=first and i == 0) == \
            wc.LogLines(g, first and i == 0)
    assert wc.decode_reply(wc.encode_reply(wc.LogEnd()), "log", first=False) == wc.LogEnd()


@settings(max_examples=300)
@given(st.sampled_from(wc.OPS), st.booleans(), st.binary(max_size=200) | json_values.map(
    lambda v: json.dumps(v).encode()) | st.dictionaries(
    st.sampled_from(["ok", "sessions", "session", "profiles", "config_dir", "lines", "end",
                     "disconnected", "code", "error", "profile", "removed"]),
    json_values | st.just(True)).map(
    lambda v: json.dumps(v).encode()))
def test_any_reply_bytes_give_a_reply_or_reply_error(op: str, first: bool, raw: bytes) -> None:
    try:
        reply = wc.decode_reply(raw, op, first=first)
    except wc.ReplyError as exc:
        assert str(exc)
    else:
        assert isinstance(reply, wc.ErrorReply | wc.SessionsReply | wc.StatusReply
                          | wc.ProfilesReply | wc.DisconnectReply | wc.ImportReply
                          | wc.RemoveReply | wc.LogLines | wc.LogEnd | wc.Done)


def test_reply_errors_name_the_problem() -> None:
    with pytest.raises(wc.ReplyError, match="no \"ok\""):
        wc.decode_reply(b'{"sessions":[]}', "sessions")
    with pytest.raises(wc.ReplyError, match="lacks"):
        wc.decode_reply(b'{"ok":true,"session":{"name":"a"}}', "status")
    with pytest.raises(wc.ReplyError, match="wrong type"):
        wc.decode_reply(json.dumps({"ok": True, "session": {
            "name": "a", "id": "1", "user": "u", "uid": 1, "profile": "p",
            "state": "X"}}).encode(), "status")
    # a newer service's extra keys are ignored
    obj = {"ok": True, "sessions": [], "new": 1}
    assert wc.decode_reply(json.dumps(obj).encode(), "sessions") == wc.SessionsReply(())


def test_error_reply_raises_the_typed_error() -> None:
    with pytest.raises(wc.ControlError) as e:
        wc.ErrorReply("forbidden", "no").raise_()
    assert (e.value.code, e.value.message) == ("forbidden", "no")


def test_names() -> None:
    assert wc.profile_name("/etc/openvpn/client/work.ovpn") == "work"
    assert wc.profile_name("sub/home.conf") == "home"
    assert wc.profile_name("/x/.ovpn") == ".ovpn"
    assert wc.profile_name(None) == "-"
    assert wc.session_name("-", 4) == "session-4"
