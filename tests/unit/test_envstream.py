"""Forwarded environments on a session's channel (``envstream.py``): pieces put together,
requests handed out in order, exactly one answer per environment, bounds."""

from __future__ import annotations

import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iservice import errors
from iservice.envstream import EnvStream, Reply
from iservice.policy.requests import RouteRun
from iservice.produce import Context
from iservice.wire import msg as m

CTX = Context("istun7", 7)
ENV = (b"dev=istun7\0ifconfig_local=10.8.0.2\0ifconfig_netmask=255.255.255.0\0tun_mtu=1500\0"
       b"foreign_option_1=dhcp-option DNS 10.8.0.53\0foreign_option_2=dhcp-option DNS ::1\0")


def chunk(mid: int, flags: int, data: bytes = b"", event: int = m.EVENT_UP) -> m.EnvChunkMsg:
    return m.EnvChunkMsg(m.MsgType.ISERVICE_ENV, mid, event, flags, data)


def pieces(env: bytes, mid: int, event: int = m.EVENT_UP) -> list[m.EnvChunkMsg]:
    out = []
    for raw in m.env_chunks(env, event, mid):
        c = m.decode_message(raw)
        assert isinstance(c, m.EnvChunkMsg)
        out.append(c)
    return out


class Logged(list[tuple[Any, ...]]):
    def __call__(self, level: int, event: str, **kv: object) -> None:
        self.append((event, kv))


def drain(stream: EnvStream) -> list[tuple[int, m.Message | None, Reply]]:
    """Every request handed out, one at a time (a run's routes as their messages)."""
    out: list[tuple[int, m.Message | None, Reply]] = []
    while (item := stream.next(1)) is not None:
        mid, msg, reply = item
        out.append((mid, msg.message(0) if isinstance(msg, RouteRun) else msg, reply))
    return out


def settle(items: list[tuple[int, m.Message | None, Reply]],
           error_of: dict[int, int] | None = None) -> m.EnvResultMsg:
    """Settle every request (the i-th with ``error_of[i]``), return the decoded answer."""
    answers = [reply((error_of or {}).get(i, 0)) for i, (_, _, reply) in enumerate(items)]
    assert all(a == b"" for a in answers[:-1]) and answers[-1]
    return m.decode_env_result(answers[-1])


def test_pieces_make_the_requests_then_one_answer() -> None:
    log = Logged()
    stream = EnvStream(lambda: CTX, log)
    for c in pieces(ENV * 30, 77):  # several pieces
        assert stream.take(c) == []
    items = drain(stream)
    msgs = [x for _, x, _ in items if x is not None]
    assert [x.type for x in msgs] == [m.MsgType.SET_MTU, m.MsgType.ADD_ADDRESS,
                                      m.MsgType.ADD_DNS_CFG, m.MsgType.REGISTER_DNS]
    assert items[-1][1] is None and {mid for mid, _, _ in items} == {77}
    res = settle(items, {1: 5, 2: 87})
    assert (res.message_id, res.error_number, res.requests, res.refused, res.refused_type) == \
        (77, 5, 4, 2, m.MsgType.ADD_ADDRESS)
    assert stream.next() is None
    assert log[0][0] == "environment" and log[0][1]["requests"] == 4
    assert ("ignored", {"what": "up", "mid": 77,
                        "reason": "ignoring the DNS server '::1'"}) in log


def test_an_exiting_openvpn_gets_its_answer_at_once() -> None:
    stream = EnvStream(lambda: CTX, Logged())
    for c in pieces(ENV + b"signal=sigterm\0route_network_1=10.9.0.0\0", 5,
                    m.EVENT_ROUTE_PREDOWN):
        stream.take(c)
    items = drain(stream)
    assert [x for _, x, _ in items] == [None]
    res = settle(items)
    assert (res.error_number, res.requests) == (0, 0)


def test_the_facts_are_read_when_the_environment_is_complete() -> None:
    calls: list[int] = []

    def context() -> Context:
        calls.append(1)
        return CTX
    stream = EnvStream(context, Logged())
    cs = pieces(ENV * 30, 1)
    for c in cs[:-1]:
        stream.take(c)
    assert calls == []  # not before the last piece: a PUSH_REPLY may still be on its way
    stream.take(cs[-1])
    assert calls == [1]


def test_a_malformed_environment_is_answered_data_error() -> None:
    stream = EnvStream(lambda: CTX, log := Logged())
    [(mid, error, reply)] = stream.take(chunk(9, m.ENV_FIRST | m.ENV_LAST, b"tun_mtu=15x0\0"))
    assert (mid, error) == (9, errors.ERROR_MESSAGE_DATA) and reply is not None
    res = m.decode_env_result(reply(error))
    assert (res.message_id, res.error_number, res.requests) == (9, errors.ERROR_MESSAGE_DATA, 0)
    assert log[0][0] == "bad-environment" and "not a decimal number" in str(log[0][1]["reason"])
    assert stream.next() is None


def test_stray_and_interleaved_pieces() -> None:
    stream = EnvStream(lambda: CTX, Logged())
    # a piece of no environment: an ack of its own
    assert stream.take(chunk(3, 0, b"x")) == [(3, errors.ERROR_MESSAGE_DATA, None)]
    assert stream.take(chunk(3, m.ENV_LAST, b"x")) == [(3, errors.ERROR_MESSAGE_DATA, None)]
    # an environment begun, then a piece with another id or event
    assert stream.take(chunk(4, m.ENV_FIRST, b"dev=istun7\0")) == []
    assert stream.take(chunk(5, 0, b"x")) == [(5, errors.ERROR_MESSAGE_DATA, None)]
    assert stream.take(chunk(4, 0, b"x", m.EVENT_DOWN)) == \
        [(4, errors.ERROR_MESSAGE_DATA, None)]
    # a new environment before the end of the first: the first is answered and dropped
    [(mid, error, reply)] = stream.take(chunk(6, m.ENV_FIRST, b"dev=istun7\0"))
    assert (mid, error) == (4, errors.ERROR_MESSAGE_DATA) and reply is not None
    assert m.decode_env_result(reply(error)).message_id == 4
    assert stream.take(chunk(6, m.ENV_LAST, b"tun_mtu=1500\0")) == []
    [(_, msg, _), (_, end, _)] = drain(stream)
    assert isinstance(msg, m.SetMtuMsg) and msg.iface == m.Interface(7, "istun7")
    assert end is None


def test_the_bound() -> None:
    stream = EnvStream(lambda: CTX, log := Logged(), max_bytes=3000)
    cs = pieces(b"x=" + b"y" * 5000 + b"\0", 8)
    assert stream.take(cs[0]) == []
    [(mid, error, reply)] = stream.take(cs[1])  # 3,320 bytes > 3,000
    assert (mid, error) == (8, errors.ERROR_NOT_ENOUGH_QUOTA) and reply is not None
    assert m.decode_env_result(reply(error)).error_number == errors.ERROR_NOT_ENOUGH_QUOTA
    assert log[-1][0] == "denied"
    assert stream.take(cs[2]) == [] and stream.take(cs[3]) == []  # dropped, no answers
    assert stream.next() is None
    # then the next environment is served again
    for c in pieces(b"dev=istun7\0tun_mtu=1500\0", 9):
        assert stream.take(c) == []
    assert [x.type for _, x, _ in drain(stream) if x is not None] == [m.MsgType.SET_MTU]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 1, 2, 3]),
                          st.sampled_from(list(m.ENV_EVENTS)),
                          st.sampled_from([b"", b"dev=istun7\0", b"tun_mtu=1500\0",
                                           b"tun_mtu=x\0", b"ifconfig_local=10.8.0.2\0",
                                           b"y" * 700])), max_size=30))
def test_arbitrary_piece_sequences(seq: list[tuple[int, int, int, bytes]]) -> None:
    """Nothing but answers: every environment begun is answered at most once, a request
    made is answered through its reply, and memory stays within the bound."""
    stream = EnvStream(lambda: CTX, Logged(), max_bytes=2000)
    answered: list[int] = []
    for mid, flags, event, data in seq:
        for _, error, reply in stream.take(chunk(mid, flags, data, event)):
            if reply is not None:
                answered.append(m.decode_env_result(reply(error)).message_id)
        for amid, msg, reply in drain(stream):
            out = reply(0)
            if msg is None:
                answered.append(m.decode_env_result(out).message_id)
            else:
                assert out == b"" and msg.message_id == amid
    firsts = sum(1 for _, flags, _, _ in seq if flags & m.ENV_FIRST)
    assert len(answered) <= firsts


def test_the_sessions_tun_is_known_to_the_producer() -> None:
    ctx = Context("istun7", socket.if_nametoindex("lo"))
    stream = EnvStream(lambda: ctx, Logged())
    stream.take(chunk(1, m.ENV_FIRST | m.ENV_LAST, b"dev=istun7\0tun_mtu=1400\0"))
    msg = drain(stream)[0][1]
    assert isinstance(msg, m.SetMtuMsg) and msg.iface.index == ctx.tun_ifindex


def test_routes_beyond_the_sessions_limit_are_refused_unmade() -> None:
    ctx = Context("istun7", 7, max_routes=2)
    stream = EnvStream(lambda: ctx, log := Logged())
    env = b"dev=istun7\0" + b"".join(f"route_network_{i}=10.9.{i}.0\0".encode()
                                     for i in range(1, 6))
    for c in pieces(env, 4, m.EVENT_ROUTE_UP):
        stream.take(c)
    items = drain(stream)
    assert len(items) == 3  # two routes and the end
    res = settle(items)
    assert (res.error_number, res.requests, res.refused, res.refused_type) == \
        (errors.ERROR_NOT_ENOUGH_QUOTA, 5, 3, m.MsgType.ADD_ROUTE)
    assert any(event == "denied" and "3 routes" in str(kv["reason"]) for event, kv in log)
