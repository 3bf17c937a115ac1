"""rtnetlink's fast route encoding (RouteSpec) is the general encoding of the same route."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.linux.netlink import RouteSpec, encode_route, encode_route_spec, encode_tun_routes


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


@settings(max_examples=300, deadline=None)
@given(version=st.sampled_from([4, 6]), table=st.sampled_from([254, 77, 1000, 2**32 - 2]),
       oif=st.integers(1, 2**31 - 1), seq0=st.integers(0, 2**32 - 1),
       routes=st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)), max_size=8))
def test_tun_routes_encode_as_route_specs(version: int, table: int, oif: int, seq0: int,
                                          routes: list[tuple[int, int]]) -> None:
    """``encode_tun_routes`` (one struct a route) gives ``encode_route_spec``'s bytes."""
    bits = 32 if version == 4 else 128
    net = IPv4Network if version == 4 else IPv6Network
    nets = []
    for v, p in routes:
        plen = min(p, bits)
        host = bits - plen
        nets.append(net((((v >> (128 - bits)) >> host) << host, plen)))
    msgs, size = encode_tun_routes(oif, table, version, [int(n.network_address) for n in nets],
                                   [n.prefixlen for n in nets], seq0)
    assert msgs == [encode_route_spec(RouteSpec(n, oif, None, None, table), True,
                                      (seq0 + k) & 0xFFFFFFFF) for k, n in enumerate(nets)]
    assert all(len(x) == size for x in msgs)
