"""The hook's translation of openvpn's script environment into channel messages."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

from iservice.hook import messages_for
from iservice.wire import msg as m

BASE = {"dev": "istun-nonexistent", "tun_mtu": "1500"}


def test_up_subnet_and_ipv6() -> None:
    env = {**BASE, "script_type": "up", "ifconfig_local": "10.8.0.2",
           "ifconfig_netmask": "255.255.255.0", "ifconfig_ipv6_local": "fd00:8::1000",
           "ifconfig_ipv6_netbits": "64"}
    msgs = messages_for(env)
    assert [x.type for x in msgs] == [m.MsgType.SET_MTU, m.MsgType.ADD_ADDRESS,
                                      m.MsgType.ADD_ADDRESS]
    mtu, v4, v6 = msgs
    assert isinstance(mtu, m.SetMtuMsg) and mtu.mtu == 1500 and mtu.family == socket.AF_INET
    assert isinstance(v4, m.AddressMsg) and (v4.address, v4.prefix_len) == \
        (IPv4Address("10.8.0.2"), 24)
    assert isinstance(v6, m.AddressMsg) and (v6.address, v6.prefix_len) == \
        (IPv6Address("fd00:8::1000"), 64)
    # the interface is named; an unknown device has no index
    assert v4.iface == m.Interface(m.IFACE_INDEX_INVALID, "istun-nonexistent")


def test_up_net30_and_p2p() -> None:
    net30 = messages_for({**BASE, "script_type": "up", "ifconfig_local": "10.8.0.6",
                          "ifconfig_remote": "10.8.0.5"})
    assert [(x.address, x.prefix_len) for x in net30 if isinstance(x, m.AddressMsg)] == \
        [(IPv4Address("10.8.0.6"), 30)]
    p2p = messages_for({**BASE, "script_type": "up", "ifconfig_local": "10.8.0.1",
                        "ifconfig_remote": "10.8.0.9"})
    assert [x.type for x in p2p] == [m.MsgType.SET_MTU, m.MsgType.ADD_ADDRESS,
                                     m.MsgType.ADD_ROUTE]
    route = p2p[2]
    assert isinstance(route, m.RouteMsg) and (route.prefix, route.prefix_len) == \
        (IPv4Address("10.8.0.9"), 32)


def test_route_up_routes_and_bypass() -> None:
    env = {**BASE, "script_type": "route-up", "route_net_gateway": "198.18.0.1",
           "route_network_1": "10.9.0.0", "route_netmask_1": "255.255.0.0",
           "route_gateway_1": "10.8.0.1", "route_metric_1": "5",
           "route_network_2": "192.0.2.1", "route_netmask_2": "255.255.255.255",
           "route_gateway_2": "198.18.0.1",
           "route_network_4": "10.99.0.0",  # not contiguous: openvpn never skips numbers
           "route_ipv6_network_1": "fd00:9::/64", "route_ipv6_gateway_1": "fd00:8::1"}
    msgs = messages_for(env)
    assert all(isinstance(x, m.RouteMsg) and x.type == m.MsgType.ADD_ROUTE for x in msgs)
    r1, r2, r6 = msgs
    assert isinstance(r1, m.RouteMsg) and isinstance(r2, m.RouteMsg)
    assert isinstance(r6, m.RouteMsg)
    assert (r1.prefix, r1.prefix_len, r1.metric, r1.iface.name) == \
        (IPv4Address("10.9.0.0"), 16, 5, "istun-nonexistent")
    # a route via the net gateway leaves the interface unset: a bypass route
    assert (r2.prefix_len, r2.gateway, r2.iface) == \
        (32, IPv4Address("198.18.0.1"), m.Interface(m.IFACE_INDEX_INVALID, ""))
    assert (r6.prefix, r6.prefix_len, r6.metric) == (IPv6Address("fd00:9::"), 64, -1)


def test_route_pre_down_and_down_delete_the_same_things() -> None:
    env = {**BASE, "route_network_1": "10.9.0.0", "route_netmask_1": "255.255.0.0",
           "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"}
    adds = messages_for({**env, "script_type": "route-up"})
    dels = messages_for({**env, "script_type": "route-pre-down"})
    assert [x.type for x in dels] == [m.MsgType.DEL_ROUTE]
    assert [(x.prefix, x.prefix_len) for x in dels if isinstance(x, m.RouteMsg)] == \
        [(x.prefix, x.prefix_len) for x in adds if isinstance(x, m.RouteMsg)]
    down = messages_for({**env, "script_type": "down"})
    assert [x.type for x in down] == [m.MsgType.DEL_ADDRESS]


def test_other_script_types_send_nothing() -> None:
    assert messages_for({**BASE, "script_type": "ipchange"}) == []
    assert messages_for({}) == []


def test_route_pre_down_without_route_variables_asks_for_all_tun_routes() -> None:
    # persist-tun: after "Pulled options changed" openvpn runs route-pre-down with
    # no route_* variables; the hook sends iservice's extension message instead.
    msgs = messages_for({**BASE, "script_type": "route-pre-down",
                         "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0"})
    assert [x.type for x in msgs] == [m.MsgType.ISERVICE_DEL_TUN_ROUTES]
