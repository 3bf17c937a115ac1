"""rtnetlink's fast route encoding (RouteSpec) is the general encoding of the same route."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from hypothesis import given
from hypothesis import strategies as st

from iservice.linux.netlink import RouteSpec, encode_route, encode_route_spec


@st.composite
def specs(draw: st.DrawFn) -> RouteSpec:
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    plen = draw(st.integers(0, bits))
    addr = draw(st.integers(0, 2**bits - 1))
    net = (IPv6Network if v6 else IPv4Network)((addr, plen), strict=False)
    gw = draw(st.one_of(st.none(), st.ip_addresses(v=6 if v6 else 4)))
    return RouteSpec(net, draw(st.integers(1, 2**31 - 1)), gw,
                     draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))))


@given(specs(), st.booleans(), st.integers(0, 2**32 - 1))
def test_spec_encoding_is_the_route_encoding(spec: RouteSpec, add: bool, seq: int) -> None:
    assert encode_route_spec(spec, add, seq) == encode_route(spec.route(), add, seq, ack=False)
