"""The fast path for the request openvpn sends by the thousand (``RequestPolicy.decide_fast``,
``msg.peek_ipv4_add_route``) against the full path (``decode_message`` + ``decide``).

Whenever the fast path answers, the full path must accept the same bytes and give the
same operation with the same message id; whatever else it meets it leaves to the full
path (None), so refusals and errors keep their one implementation.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_network

from hypothesis import event, given, settings
from hypothesis import strategies as st
from tests.unit.test_requests import DEFAULT_LIMITS, TUN, TUN_BY_NAME, policy

from iservice.errors import ChannelError
from iservice.policy.requests import (
    AddRoute,
    Limits,
    Refused,
    RequestPolicy,
    RouteKey,
    SessionRecords,
)
from iservice.wire import msg as m

ROUTE = struct.Struct("<I4xQi4xh2x16si16sI256si")  # the add/del_route layout, unchecked


def full_path(p: RequestPolicy, raw: bytes) -> tuple[int, object] | None:
    """What decode_message + decide make of ``raw`` (None: an error or a refusal)."""
    try:
        msg = m.decode_message(raw)
        return msg.message_id, p.decide(msg)
    except (ChannelError, Refused):
        return None


@st.composite
def raw_routes(draw: st.DrawFn) -> bytes:
    """Route-shaped messages: a valid IPv4 add_route through the tun with at most one
    field changed to something else (an invalid or a different value), or anything."""
    f: dict[str, object] = {
        "t": int(m.MsgType.ADD_ROUTE), "size": ROUTE.size, "fam": m.WIRE_AF_INET,
        "plen": draw(st.sampled_from([0, 1, 8, 24, 26, 31, 32])),
        "gw": draw(st.binary(min_size=16, max_size=16)),
        "idx": draw(st.sampled_from([7, m.IFACE_INDEX_INVALID])),
        "name": b"istun3".ljust(256, b"\0"),
        "metric": draw(st.sampled_from([-1, 0, 5, 2**31 - 1])),
        "mid": draw(st.integers(-(2**31), 2**31 - 1)),
    }
    bits = int(f["plen"])  # type: ignore[call-overload]
    value = draw(st.integers(0, 2**bits - 1)) << (32 - bits) if bits else 0
    f["prefix"] = value.to_bytes(4, "big") + draw(st.sampled_from([bytes(12), b"\1" * 12]))
    other = {
        "t": st.sampled_from([int(m.MsgType.DEL_ROUTE), int(m.MsgType.ADD_ADDRESS), 0xFFFF]),
        "size": st.sampled_from([ROUTE.size - 1, 0, ROUTE.size + 8]),
        "fam": st.sampled_from([m.WIRE_AF_INET6, 0, 99]),
        "plen": st.sampled_from([33, 64, -1, 2**31 - 1]),
        "prefix": st.binary(min_size=16, max_size=16),
        "idx": st.sampled_from([2, 0, 8]),
        "name": st.sampled_from([b"eth0", b"", b"istun3x", b"\xff\xfe", b"istun3\0junk",
                                 b"istun3".ljust(256, b"x")]).map(lambda b: b.ljust(256, b"\0")),
        "metric": st.sampled_from([-2, -(2**31)]),
    }
    changed = draw(st.sampled_from([None, None, *other]))
    if changed is not None:
        f[changed] = draw(other[changed])
    raw = ROUTE.pack(f["t"], f["size"], f["mid"], f["fam"], f["prefix"], f["plen"], f["gw"],
                     f["idx"], f["name"], f["metric"])
    cut = draw(st.sampled_from([None, None, None, None, -1, 1]))
    if cut == -1:
        raw = raw[:-1]
    elif cut == 1:
        raw += b"\0"
    return raw


@settings(max_examples=600)
@given(raw=raw_routes(), known=st.lists(st.integers(0, 3), max_size=3),
       max_routes=st.sampled_from([100, 1, 0]))
def test_when_the_fast_path_answers_the_full_path_agrees(raw: bytes, known: list[int],
                                                         max_routes: int) -> None:
    records = SessionRecords({}, {})
    # routes the session has already (some may be the one requested)
    for k in known:
        records.routes[RouteKey(ip_network(f"100.64.{k}.0/24"), False, -1)] = 40 + k
    p = policy(records, limits=Limits(max_routes, 4, 2))
    full_path(p, raw)  # the full path has seen the interface once (as on a channel)
    fast = p.decide_fast(raw)
    event("fast path" if fast is not None else "full path only")
    if fast is None:
        return
    assert full_path(p, raw) == fast
    assert isinstance(fast[1], AddRoute) and fast[1].existing is None


@given(value=st.integers(0, 2**24 - 1), metric=st.sampled_from([-1, 0, 7]),
       iface=st.sampled_from([TUN, TUN_BY_NAME]))
def test_a_new_route_through_the_tun_takes_the_fast_path(value: int, metric: int,
                                                         iface: m.Interface) -> None:
    p = policy()
    raw = m.encode_message(m.RouteMsg(m.MsgType.ADD_ROUTE, 9, IPv4Address(value << 8), 24,
                                      IPv4Address("10.8.0.1"), iface, metric))
    full = full_path(p, raw)
    fast = p.decide_fast(raw)
    assert fast is not None and fast == full


def test_what_the_fast_path_leaves_to_the_full_path() -> None:
    key = RouteKey(ip_network("100.64.1.0/24"), False, -1)
    p = policy(SessionRecords({key: 5}, {}), limits=DEFAULT_LIMITS)

    def raw(prefix: str, plen: int, iface: m.Interface = TUN, metric: int = -1,
            kind: m.MsgType = m.MsgType.ADD_ROUTE) -> bytes:
        return m.encode_message(m.RouteMsg(kind, 1, IPv4Address(prefix), plen,
                                           IPv4Address("0.0.0.0"), iface, metric))
    assert p.decide_fast(raw("100.64.2.0", 24)) is not None
    assert p.decide_fast(raw("100.64.1.0", 24)) is None  # already the session's: a re-add
    assert p.decide_fast(raw("100.64.2.1", 24)) is None  # host bits: a refusal
    assert p.decide_fast(raw("100.64.2.0", 24, metric=-2)) is None  # a refusal
    assert p.decide_fast(raw("198.51.100.7", 32, iface=m.Interface(2, "eth0"))) is None
    assert p.decide_fast(raw("100.64.2.0", 24, kind=m.MsgType.DEL_ROUTE)) is None
    m._IFACE_CACHE.clear()  # an interface never decoded: the full path checks its name
    assert p.decide_fast(raw("100.64.2.0", 24)) is None
    full_path(p, raw("100.64.2.0", 24))
    assert p.decide_fast(raw("100.64.2.0", 24)) is not None
    full = policy(limits=Limits(0, 4, 2))  # the session's route limit: a refusal
    assert full.decide_fast(raw("100.64.2.0", 24)) is None


# -- the same shortcut for decoded messages and those made from openvpn's environment ------

@settings(max_examples=600)
@given(raw=raw_routes(), known=st.lists(st.integers(0, 3), max_size=3),
       max_routes=st.sampled_from([100, 1, 0]))
def test_when_the_message_shortcut_answers_decide_agrees(raw: bytes, known: list[int],
                                                         max_routes: int) -> None:
    records = SessionRecords({}, {})
    for k in known:
        records.routes[RouteKey(ip_network(f"100.64.{k}.0/24"), False, -1)] = 40 + k
    p = policy(records, limits=Limits(max_routes, 4, 2))
    try:
        msg = m.decode_message(raw)
    except ChannelError:
        return
    fast = p.decide_route_fast(msg)
    event("shortcut" if fast is not None else "full path only")
    try:
        full = p.decide(msg)
    except Refused:
        assert fast is None
        return
    if fast is not None:
        assert fast == full and fast.existing is None
        # and the bytes' shortcut, where it answers, agrees with this one
        by_bytes = p.decide_fast(raw)
        assert by_bytes is None or by_bytes == (msg.message_id, fast)


def test_the_message_shortcut_takes_only_new_ipv4_routes_through_the_tun() -> None:
    p = policy()
    route = m.RouteMsg(m.MsgType.ADD_ROUTE, 3, IPv4Address("100.64.9.0"), 24,
                       IPv4Address("0.0.0.0"), TUN, -1)
    assert p.decide_route_fast(route) == p.decide(route)
    for other in (m.RouteMsg(m.MsgType.DEL_ROUTE, 3, IPv4Address("100.64.9.0"), 24,
                             IPv4Address("0.0.0.0"), TUN, -1),
                  m.RegisterDnsMsg(m.MsgType.REGISTER_DNS, 1),
                  m.RouteMsg(m.MsgType.ADD_ROUTE, 3, IPv6Address("fd00::"), 64,
                             IPv6Address("::"), TUN, -1)):
        assert p.decide_route_fast(other) is None
