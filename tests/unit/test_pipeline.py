"""The channel pipeline without I/O (pipeline.py): no sockets, no threads, no kernel.

Bytes go in with ``feed``, decisions come out of ``next_batch``, the monitor's results
go in with ``settle`` and acks come out — every step is checked here with plain values,
the way h11's tests drive a ``Connection``.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given
from hypothesis import strategies as st

from iservice import errors
from iservice.pipeline import CHANNEL_BATCH, Pipeline
from iservice.policy.ownership import MACHINE, Owners, scope_for
from iservice.policy.requests import (
    AddAddress,
    AddRoute,
    DefaultRoute,
    DelRoute,
    Limits,
    Nothing,
    RequestPolicy,
    SessionRecords,
)
from iservice.wire import msg as m

TUN = m.Interface(7, "istun3")
GW = IPv4Address("198.18.0.1")
LIMITS = Limits(100, 4, 2)


@dataclass(frozen=True)
class Done:
    """What the monitor answers for an operation (``monitor.Applied``'s shape)."""
    error: int = 0
    change_id: int | None = None


def pipeline(owners: Owners | None = None, *, session: int = 1, uid: int = 1000,
             admin: bool = False, limits: Limits = LIMITS,
             default: bool = False) -> Pipeline:
    owners = owners if owners is not None else Owners()
    scope = scope_for(uid, admin, "machine")
    policy = RequestPolicy(
        tun_ifindex=TUN.index, tun_name=TUN.name, limits=limits,
        records=SessionRecords({}, {}), owners=owners, scope=scope, session_id=session,
        uid=uid, admin=admin,
        default_route=(lambda fam: DefaultRoute(GW, 2)) if default else None)
    return Pipeline(policy, owners=owners, scope=scope, session_id=session, uid=uid)


def route(net: str, mid: int, *, t: m.MsgType = m.MsgType.ADD_ROUTE,
          iface: m.Interface = TUN, gw: str = "0.0.0.0") -> tuple[int, bytes]:
    n = IPv4Network(net)
    raw = m.encode_message(m.RouteMsg(t, mid, n.network_address, n.prefixlen,
                                      IPv4Address(gw), iface, -1))
    return len(raw), raw


def acks(data: bytes) -> list[tuple[int, int]]:
    return [struct.unpack_from("<i4xi", data, i + 16) for i in range(0, len(data), m.ACK_SIZE)]


def run(p: Pipeline, msgs: list[tuple[int, bytes]], results: list[Done] | None = None,
        ) -> list[tuple[int, int]]:
    """Feed, decide one batch, settle it with ``results`` (default: all done with ids)."""
    p.feed(msgs)
    step = p.next_batch(0.0)
    ops = step.batch.ops
    res = results if results is not None else [Done(0, 100 + i) for i in range(len(ops))]
    return acks(p.settle(step.batch, res, "who").acks)


def test_a_batch_goes_in_and_every_message_is_acked_in_order() -> None:
    p = pipeline()
    out = run(p, [route("10.1.0.0/16", 1), route("10.2.0.0/16", 2), route("10.3.0.0/16", 3)])
    assert out == [(1, 0), (2, 0), (3, 0)]
    assert sorted(p.records.routes.values()) == [100, 101, 102]


def test_malformed_and_refused_messages_are_acked_without_an_operation() -> None:
    p = pipeline()
    _, good = route("10.1.0.0/16", 1)
    p.feed([(len(good) - 1, good[:-1]), route("10.2.0.0/16", 2, iface=m.Interface(1, "lo"))])
    step = p.next_batch(0.0)
    assert step.batch.ops == []
    settled = p.settle(step.batch, [], "who")
    assert [e for _, e in acks(settled.acks)] == [errors.ERROR_MESSAGE_DATA,
                                                 errors.ERROR_ACCESS_DENIED]
    assert [event for event, _ in p.denials] == ["bad-message", "denied"]


def test_an_oversize_message_aborts_the_session() -> None:
    p = pipeline()
    p.feed([route("10.1.0.0/16", 1), (m.MAX_MESSAGE_SIZE + 1, b"\0" * 64)])
    step = p.next_batch(0.0)
    assert step.abort is not None and step.eof and len(step.batch.ops) == 1


def test_eof_is_reported_after_what_came_before_it() -> None:
    p = pipeline()
    p.feed([route("10.1.0.0/16", 1), (0, b"")])
    step = p.next_batch(0.0)
    assert step.eof and len(step.batch.ops) == 1


def test_a_delete_of_a_route_in_flight_waits_until_its_add_settled() -> None:
    p = pipeline()
    p.feed([route("10.1.0.0/16", 1), route("10.1.0.0/16", 2, t=m.MsgType.DEL_ROUTE)])
    first = p.next_batch(0.0)
    assert first.wait and len(first.batch.ops) == 1
    p.settle(first.batch, [Done(0, 55)], "who")
    second = p.next_batch(0.0)
    [op] = second.batch.ops
    assert isinstance(op, DelRoute) and op.change_id == 55


def test_a_failed_add_leaves_nothing_reserved() -> None:
    owners = Owners()
    p = pipeline(owners)
    out = run(p, [route("10.1.0.0/16", 1)], [Done(errors.ERROR_OBJECT_ALREADY_EXISTS)])
    assert out == [(1, errors.ERROR_OBJECT_ALREADY_EXISTS)]
    assert p.records.routes == {} and owners.count() == 0
    assert owners.routes_of_user == {}


def test_batches_are_bounded() -> None:
    p = pipeline(limits=Limits(100000, 4, 2))
    p.feed([route(f"10.{i >> 8}.{i & 255}.0/24", i) for i in range(CHANNEL_BATCH + 10)])
    assert len(p.next_batch(0.0).batch.items) == CHANNEL_BATCH
    assert len(p.next_batch(0.0).batch.items) == 10


def test_a_bypass_route_asks_for_the_default_route_once_per_ttl() -> None:
    p = pipeline()
    p.feed([route("192.0.2.1/32", 1, iface=m.Interface(m.IFACE_INDEX_INVALID, ""),
                  gw=str(GW))])
    step = p.next_batch(10.0)
    assert step.need_default_route == socket.AF_INET and step.batch.items == []
    p.set_default_route(socket.AF_INET, DefaultRoute(GW, 2), 10.0)
    [op] = p.next_batch(10.5).batch.ops
    assert isinstance(op, AddRoute) and op.gateway == GW and op.key.bypass


def test_routes_belong_to_whoever_was_acknowledged_first() -> None:
    owners = Owners()
    alice, bob = pipeline(owners, session=1, uid=1000), pipeline(owners, session=2, uid=1001)
    assert run(alice, [route("10.50.0.0/16", 1)]) == [(1, 0)]
    assert run(bob, [route("10.50.1.0/24", 1), route("10.50.0.0/16", 2),
                     route("10.0.0.0/8", 3)]) == [
        (1, errors.ERROR_ACCESS_DENIED), (2, errors.ERROR_OBJECT_ALREADY_EXISTS), (3, 0)]
    # bob's /8 took nothing (alice's /16 is more specific), but now it is his: alice may
    # not add inside it
    assert run(alice, [route("10.60.0.0/16", 3)]) == [(3, errors.ERROR_ACCESS_DENIED)]
    # ... also while alice's add is still in flight (reserved, not yet settled)
    alice.feed([route("172.16.0.0/16", 4)])
    pending = alice.next_batch(0.0)
    assert run(bob, [route("172.16.9.0/24", 5)]) == [(5, errors.ERROR_ACCESS_DENIED)]
    alice.settle(pending.batch, [Done(0, 7)], "who")
    # ... and when alice's session ends, her routes are free for anybody
    alice.release()
    assert run(bob, [route("10.50.1.0/24", 6)]) == [(6, 0)]


def test_admins_may_add_inside_another_sessions_route() -> None:
    owners = Owners()
    user = pipeline(owners, session=1, uid=1000)
    admin = pipeline(owners, session=2, uid=0, admin=True)
    assert run(user, [route("10.50.0.0/16", 1)]) == [(1, 0)]
    assert run(admin, [route("10.50.1.0/24", 1)]) == [(1, 0)]
    carol = pipeline(owners, session=3, uid=1002)
    assert run(carol, [route("10.50.1.0/25", 1)]) == [(1, errors.ERROR_ACCESS_DENIED)]


def test_per_user_route_budget_is_summed_over_the_users_sessions() -> None:
    owners = Owners()
    limits = Limits(100, 4, 2, max_routes_per_user=3)
    one, two = pipeline(owners, session=1, limits=limits), pipeline(owners, session=2,
                                                                     limits=limits)
    assert run(one, [route("10.1.0.0/16", 1), route("10.2.0.0/16", 2)]) == [(1, 0), (2, 0)]
    assert run(two, [route("10.3.0.0/16", 1), route("10.4.0.0/16", 2)]) == [
        (1, 0), (2, errors.ERROR_NOT_ENOUGH_QUOTA)]
    other = pipeline(owners, session=3, uid=2000, limits=limits)
    assert run(other, [route("10.5.0.0/16", 1)]) == [(1, 0)]


def test_the_same_block_twice_is_nothing() -> None:
    p = pipeline()
    blk = m.encode_message(m.WfpBlockMsg(m.MsgType.ADD_WFP_BLOCK, 1, 2, TUN))
    assert run(p, [(len(blk), blk)]) == [(1, 0)]
    p.feed([(len(blk), blk)] * 5)
    assert all(isinstance(op, Nothing) for op in p.next_batch(0.0).batch.ops)


def test_an_address_failure_gives_the_budget_back() -> None:
    owners = Owners()
    p = pipeline(owners, limits=Limits(100, 4, 2, max_addresses_per_user=1))
    a = m.encode_message(m.AddressMsg(m.MsgType.ADD_ADDRESS, 1, IPv4Address("10.8.0.2"),
                                      24, TUN))
    assert run(p, [(len(a), a)], [Done(errors.ERROR_ACCESS_DENIED)]) == [
        (1, errors.ERROR_ACCESS_DENIED)]
    assert owners.addresses_of_user == {}
    p.feed([(len(a), a)])
    [op] = p.next_batch(0.0).batch.ops
    assert isinstance(op, AddAddress)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(16, 24), st.booleans()),
                max_size=40))
def test_owners_follow_the_records_whatever_the_kernel_says(
        adds: list[tuple[int, int, bool]]) -> None:
    """Property: after any sequence of adds (some refused by the kernel) and deletes,
    the owners hold exactly the session's recorded routes."""
    owners = Owners()
    p = pipeline(owners, limits=Limits(1000, 4, 2))
    for i, (octet, plen, ok) in enumerate(adds):
        net = str(IPv4Network((10 << 24 | octet << 16, plen), strict=False))
        run(p, [route(net, i)], [Done(0 if ok else errors.ERROR_OBJECT_ALREADY_EXISTS, i)])
        if i % 3 == 2 and p.records.routes:
            key = next(iter(p.records.routes))
            run(p, [route(str(key.dst), 1000 + i, t=m.MsgType.DEL_ROUTE)], [Done(0)])
    assert owners.count() == len(p.records.routes)
    assert owners.routes_of_user.get(1000, 0) == len(p.records.routes)
    for key in p.records.routes:
        assert owners.exact(MACHINE, key.dst, but=-1)
    p.release()
    assert owners.count() == 0 and owners.routes_of_user == {}


nets = st.one_of(
    st.builds(lambda a, p: IPv4Network((a, p), strict=False),
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, p: __import__("ipaddress").IPv6Network((a, p), strict=False),
              st.integers(0, 2**128 - 1), st.integers(0, 128)))


@given(nets, st.integers(-1, 2**32 - 1), st.integers(-1, 2**32 - 1))
def test_route_table_keeps_every_key_exactly(dst: IPv4Network, metric: int,
                                             other: int) -> None:
    from iservice.policy.ownership import RouteKey, RouteTable
    key = RouteKey(dst, False, metric)
    bypass = RouteKey(dst, True, -1)
    table = RouteTable({key: 7, bypass: 8})
    assert table[key] == 7 and table[bypass] == 8 and len(table) == 2
    assert table.bypass_count == 1 and sorted(table.values()) == [7, 8]
    assert set(table) == {key, bypass}  # the keys come back exactly
    second = RouteKey(dst, False, other)
    table[second] = 9  # the same network with another metric: a route of its own
    assert len(table) == (2 if other == metric else 3)
    assert table[second] == 9 and table[bypass] == 8
    assert table.holds(RouteTable.key_of(key))
    del table[bypass]
    assert bypass not in table and key in table and table.bypass_count == 0
    for k in list(table):
        del table[k]
    assert len(table) == 0 and not table.holds(RouteTable.key_of(key))
