"""The channel request policy (SPEC §6), as a pure function of message + session records."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iservice import errors
from iservice.policy.ownership import MACHINE, Owners, RouteTable
from iservice.policy.requests import (
    AddAddress,
    AddressKey,
    AddRoute,
    DefaultRoute,
    DelAddress,
    DelRoute,
    DelTunRoutes,
    FlushDns,
    FlushNeighbors,
    Limits,
    Refused,
    RequestPolicy,
    RouteKey,
    SessionRecords,
    SetMtu,
)
from iservice.wire import msg as m

TUN = m.Interface(index=7, name="istun3")
TUN_BY_NAME = m.Interface(index=m.IFACE_INDEX_INVALID, name="istun3")
OTHER = m.Interface(index=2, name="eth0")
UNSET = m.Interface(index=m.IFACE_INDEX_INVALID, name="")
GW = IPv4Address("192.0.2.1")


DEFAULT_LIMITS = Limits(100, 4, 2)


def policy(records: SessionRecords | None = None, *, owners: Owners | None = None,
           limits: Limits = DEFAULT_LIMITS, admin: bool = False) -> RequestPolicy:
    return RequestPolicy(
        tun_ifindex=7, tun_name="istun3", limits=limits,
        records=records or SessionRecords({}, {}),
        default_route=lambda fam: DefaultRoute(GW, 2) if fam == socket.AF_INET else None,
        owners=owners, session_id=1, uid=1000, admin=admin)


def others(*routes: str, session: int = 2, uid: int = 1001) -> Owners:
    """Owners where another session (``session`` of ``uid``) holds ``routes``."""
    o = Owners()
    table = RouteTable()
    o.register(MACHINE, session, uid, table)
    for i, r in enumerate(routes):
        table[RouteKey(ip_network(r), False, -1)] = i
    return o


def route(prefix: str, plen: int, iface: m.Interface = TUN, *, gw: str = "0.0.0.0",
          metric: int = -1, kind: m.MsgType = m.MsgType.ADD_ROUTE) -> m.RouteMsg:
    addr = ip_address(prefix)
    gateway = IPv6Address("::" if gw == "0.0.0.0" else gw) if ":" in prefix else IPv4Address(gw)
    return m.RouteMsg(kind, 1, addr, plen, gateway, iface, metric)


def address(a: str, plen: int, iface: m.Interface = TUN,
            kind: m.MsgType = m.MsgType.ADD_ADDRESS) -> m.AddressMsg:
    ip = IPv6Address(a) if ":" in a else IPv4Address(a)
    return m.AddressMsg(kind, 1, ip, plen, iface)


def refused(p: RequestPolicy, msg: m.Message) -> int:
    with pytest.raises(Refused) as info:
        p.decide(msg)
    return info.value.error_number


class TestInterfaces:
    def test_own_tun_by_index_and_by_name(self) -> None:
        for iface in (TUN, TUN_BY_NAME):
            assert isinstance(policy().decide(address("10.8.0.2", 24, iface)), AddAddress)

    @pytest.mark.parametrize("iface", [OTHER, UNSET, m.Interface(7, "eth0"),
                                       m.Interface(m.IFACE_INDEX_INVALID, "istun33"),
                                       m.Interface(m.IFACE_INDEX_INVALID, "eth0")])
    def test_address_on_another_interface_is_denied(self, iface: m.Interface) -> None:
        if iface.index == 7:
            assert isinstance(policy().decide(address("10.8.0.2", 24, iface)), AddAddress)
        else:
            assert refused(policy(), address("10.8.0.2", 24, iface)) == errors.ERROR_ACCESS_DENIED

    def test_mtu_and_flush_only_on_own_tun(self) -> None:
        p = policy()
        assert p.decide(m.SetMtuMsg(m.MsgType.SET_MTU, 1, TUN, socket.AF_INET, 1500)) == \
            SetMtu(1500)
        assert refused(p, m.SetMtuMsg(m.MsgType.SET_MTU, 1, OTHER, socket.AF_INET, 1500)) == \
            errors.ERROR_ACCESS_DENIED
        assert p.decide(m.FlushNeighborsMsg(m.MsgType.FLUSH_NEIGHBORS, 1, socket.AF_INET6,
                                            TUN)) == FlushNeighbors(socket.AF_INET6)
        assert refused(p, m.FlushNeighborsMsg(m.MsgType.FLUSH_NEIGHBORS, 1, socket.AF_INET,
                                              OTHER)) == errors.ERROR_ACCESS_DENIED


class TestRanges:
    @pytest.mark.parametrize(("family", "mtu", "ok"), [
        (socket.AF_INET, 575, False), (socket.AF_INET, 576, True), (socket.AF_INET, 65535, True),
        (socket.AF_INET, 65536, False), (socket.AF_INET6, 1279, False),
        (socket.AF_INET6, 1280, True), (socket.AF_INET, -1, False), (socket.AF_INET, 0, False)])
    def test_mtu(self, family: int, mtu: int, ok: bool) -> None:
        msg = m.SetMtuMsg(m.MsgType.SET_MTU, 1, TUN, family, mtu)
        if ok:
            assert policy().decide(msg) == SetMtu(mtu)
        else:
            assert refused(policy(), msg) == errors.ERROR_INVALID_PARAMETER

    @pytest.mark.parametrize(("a", "plen"), [("10.8.0.2", 0), ("10.8.0.2", 33),
                                             ("fd00::2", 129), ("10.8.0.2", -1)])
    def test_address_prefix_out_of_range(self, a: str, plen: int) -> None:
        assert refused(policy(), address(a, plen)) == errors.ERROR_INVALID_PARAMETER

    @pytest.mark.parametrize("a", ["127.0.0.1", "224.0.0.1", "0.0.0.0", "::1", "ff02::1", "::"])
    def test_silly_addresses(self, a: str) -> None:
        assert refused(policy(), address(a, 24 if "." in a else 64)) == \
            errors.ERROR_INVALID_PARAMETER

    def test_route_prefix_and_host_bits(self) -> None:
        p = policy()
        assert refused(p, m.RouteMsg(m.MsgType.ADD_ROUTE, 1, IPv4Address("10.9.0.0"), 33,
                                     IPv4Address(0), TUN, -1)) == errors.ERROR_INVALID_PARAMETER
        assert refused(p, m.RouteMsg(m.MsgType.ADD_ROUTE, 1, IPv4Address("10.9.0.1"), 16,
                                     IPv4Address(0), TUN, -1)) == errors.ERROR_INVALID_PARAMETER
        assert refused(p, route("10.9.0.0", 16, metric=-2)) == errors.ERROR_INVALID_PARAMETER


class TestRoutes:
    def test_route_via_tun(self) -> None:
        op = policy().decide(route("10.9.0.0", 16, metric=5, gw="10.8.0.1"))
        assert op == AddRoute(RouteKey(ip_network("10.9.0.0/16"), False, 5), 7, None)

    def test_full_tunnel_halves_via_tun(self) -> None:
        p = policy()
        assert isinstance(p.decide(route("0.0.0.0", 1)), AddRoute)
        assert isinstance(p.decide(route("::", 1)), AddRoute)

    def test_route_via_other_interface_is_denied(self) -> None:
        assert refused(policy(), route("10.9.0.0", 16, OTHER, gw=str(GW))) == \
            errors.ERROR_ACCESS_DENIED

    def test_bypass_host_route_via_default_gateway(self) -> None:
        for iface in (UNSET, OTHER):
            op = policy().decide(route("198.51.100.7", 32, iface, gw=str(GW)))
            assert op == AddRoute(RouteKey(ip_network("198.51.100.7/32"), True, -1), 2, GW)

    def test_bypass_must_be_host_route(self) -> None:
        # "a /8 via the default gateway" from the issue
        assert refused(policy(), route("10.0.0.0", 8, UNSET, gw=str(GW))) == \
            errors.ERROR_ACCESS_DENIED

    def test_bypass_must_use_the_default_gateway(self) -> None:
        assert refused(policy(), route("198.51.100.7", 32, UNSET, gw="192.0.2.99")) == \
            errors.ERROR_ACCESS_DENIED
        assert refused(policy(), route("198.51.100.7", 32, m.Interface(9, ""), gw=str(GW))) == \
            errors.ERROR_ACCESS_DENIED

    def test_bypass_without_default_route(self) -> None:
        assert refused(policy(), route("2001:db8::7", 128, UNSET, gw="fe80::1")) == \
            errors.ERROR_ACCESS_DENIED

    def test_bypass_limit(self) -> None:
        recs = SessionRecords({RouteKey(ip_network("198.51.100.1/32"), True, -1): 1,
                               RouteKey(ip_network("198.51.100.2/32"), True, -1): 2}, {})
        assert refused(policy(recs), route("198.51.100.7", 32, UNSET, gw=str(GW))) == \
            errors.ERROR_NOT_ENOUGH_QUOTA

    def test_bypass_may_not_shadow_another_session(self) -> None:
        assert refused(policy(owners=others("198.51.100.0/24")),
                       route("198.51.100.7", 32, UNSET, gw=str(GW))) == errors.ERROR_ACCESS_DENIED

    def test_route_limit_and_duplicates(self) -> None:
        recs = SessionRecords({RouteKey(ip_network("10.9.0.0/16"), False, -1): 1}, {})
        p = policy(recs, limits=Limits(1, 4, 2))
        # re-sent after a restart: applied again under the same journal record
        assert p.decide(route("10.9.0.0", 16)) == \
            AddRoute(RouteKey(ip_network("10.9.0.0/16"), False, -1), 7, None, existing=1)
        assert refused(p, route("10.10.0.0", 16)) == errors.ERROR_NOT_ENOUGH_QUOTA


class TestDeletes:
    def test_delete_must_match_what_was_added(self) -> None:
        key = RouteKey(ip_network("10.9.0.0/16"), False, -1)
        recs = SessionRecords({key: 42}, {AddressKey(IPv4Address("10.8.0.2"), 24): 43})
        p = policy(recs)
        assert p.decide(route("10.9.0.0", 16, kind=m.MsgType.DEL_ROUTE)) == DelRoute(key, 42)
        assert refused(p, route("10.10.0.0", 16, kind=m.MsgType.DEL_ROUTE)) == \
            errors.ERROR_NOT_FOUND
        # a different metric is a different route
        assert refused(p, route("10.9.0.0", 16, metric=3, kind=m.MsgType.DEL_ROUTE)) == \
            errors.ERROR_NOT_FOUND
        assert p.decide(address("10.8.0.2", 24, kind=m.MsgType.DEL_ADDRESS)) == \
            DelAddress(AddressKey(IPv4Address("10.8.0.2"), 24), 43)
        assert refused(p, address("10.8.0.9", 24, kind=m.MsgType.DEL_ADDRESS)) == \
            errors.ERROR_NOT_FOUND

    def test_delete_of_a_route_never_added_on_another_iface(self) -> None:
        assert refused(policy(), route("198.51.100.7", 32, UNSET, gw=str(GW),
                                       kind=m.MsgType.DEL_ROUTE)) == errors.ERROR_NOT_FOUND

    def test_address_limit(self) -> None:
        recs = SessionRecords({}, {AddressKey(IPv4Address(f"10.8.0.{i}"), 24): i
                                   for i in range(1, 5)})
        assert refused(policy(recs), address("10.8.0.9", 24)) == errors.ERROR_NOT_ENOUGH_QUOTA


class TestTable:
    def test_windows_only_types_are_not_supported(self) -> None:
        p = policy()
        for msg in (m.EnableDhcpMsg(m.MsgType.ENABLE_DHCP, 1, TUN),
                    m.CreateAdapterMsg(m.MsgType.CREATE_ADAPTER, 1, 1),
                    m.WinsCfgMsg(m.MsgType.ADD_WINS_CFG, 1, TUN, (IPv4Address("10.8.0.1"),))):
            assert refused(p, msg) == errors.ERROR_NOT_SUPPORTED

    def test_register_dns_flushes_the_resolver_caches(self) -> None:
        assert policy().decide(m.RegisterDnsMsg(m.MsgType.REGISTER_DNS, 1)) == FlushDns()


def test_del_tun_routes_names_only_this_sessions_tun_routes() -> None:
    tun_key = RouteKey(ip_network("10.9.0.0/16"), False, -1)
    bypass_key = RouteKey(ip_network("192.0.2.1/32"), True, -1)
    pending = RouteKey(ip_network("10.10.0.0/16"), False, -1)
    recs = SessionRecords({tun_key: 4, bypass_key: 5, pending: -1}, {})
    op = policy(recs).decide(m.DelTunRoutesMsg(m.MsgType.ISERVICE_DEL_TUN_ROUTES, 1))
    assert op == DelTunRoutes((DelRoute(tun_key, 4),))


@given(st.data())
def test_route_network_fast_path_is_ip_network_strict(data: st.DataObject) -> None:
    """The integer fast path of RequestPolicy._network = ip_network(strict=True)."""
    cls = data.draw(st.sampled_from([IPv4Address, IPv6Address]))
    bits = 32 if cls is IPv4Address else 128
    addr = cls(data.draw(st.integers(0, 2**bits - 1)))
    plen = data.draw(st.integers(0, bits))
    try:
        want: object = ip_network((addr, plen), strict=True)
    except ValueError:
        want = Refused
    try:
        got: object = RequestPolicy._network(addr, plen)
    except Refused:
        got = Refused
    assert got == want


def test_only_bypass_route_ops_change_the_kill_switch_server_list() -> None:
    # the session remakes the server list only after these (linear, not
    # quadratic in the routes); every other op leaves the bypass routes as they were.
    from iservice.pipeline import names_bypass as _names_bypass
    tun_key = RouteKey(ip_network("10.9.0.0/16"), False, -1)
    host_key = RouteKey(ip_network("198.51.100.7/32"), True, -1)
    assert _names_bypass(AddRoute(host_key, 2, GW))
    assert _names_bypass(DelRoute(host_key, 11))
    assert not _names_bypass(AddRoute(tun_key, 7, None))
    assert not _names_bypass(DelRoute(tun_key, 12))
    assert not _names_bypass(DelTunRoutes(()))
    assert not _names_bypass(SetMtu(1400))
