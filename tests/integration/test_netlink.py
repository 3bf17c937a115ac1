"""rtnetlink and tun layer (iservice.linux.netlink / .tun) against the real kernel.

Every test works in its own network namespace (``isvc-nl-<random>``) created by the
``ns`` fixture and deleted in its teardown, so the host's network is never touched.
Runs as root (CI); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.linux.netlink import (
    AF_INET,
    AF_INET6,
    IFA_F_NODAD,
    IFA_F_TENTATIVE,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTPROT_ISERVICE,
    RTPROT_STATIC,
    NetlinkDecodeError,
    NetlinkError,
    Route,
    RouteSpec,
    Rtnl,
    decode_addr,
    decode_error,
    decode_link,
    decode_neigh,
    decode_route,
    iter_messages,
    parse_attrs,
    rtnl_in_netns,
)
from iservice.linux.tun import create_tun, delete_tun

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and tun"),
]

NS_PREFIX = "isvc-nl-"
_created: set[str] = set()


def ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True,
                          text=True).stdout


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check,
                          capture_output=True, text=True)


@dataclass
class Netns:
    name: str
    path: str
    rtnl: Rtnl

    def veth(self, a: str = "isvc-va", b: str = "isvc-vb") -> tuple[int, int]:
        ip(self.name, "link", "add", a, "type", "veth", "peer", "name", b)
        ip(self.name, "link", "set", a, "up")
        ip(self.name, "link", "set", b, "up")
        ia, ib = self.rtnl.link_index(a), self.rtnl.link_index(b)
        assert ia is not None and ib is not None
        return ia, ib

    def tun(self, name: str = "istun0", uid: int = 4242, gid: int = 4343) -> int:
        index = create_tun(name, uid, gid, netns_path=self.path)
        self.rtnl.link_set(index, up=True)
        return index


@pytest.fixture(scope="module", autouse=True)
def _no_namespace_left() -> Iterator[None]:
    yield
    for name in list(_created):  # a teardown that failed: try once more
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    leftovers = [n for n in _created if n in listed.split()]
    assert not leftovers, f"network namespaces left behind: {leftovers}"


@pytest.fixture
def ns() -> Iterator[Netns]:
    name = NS_PREFIX + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    _created.add(name)
    rtnl = None
    try:
        rtnl = rtnl_in_netns(f"/run/netns/{name}")
        ip(name, "link", "set", "lo", "up")
        yield Netns(name, f"/run/netns/{name}", rtnl)
    finally:
        if rtnl is not None:
            rtnl.close()  # the socket pins the namespace (and its devices) while open
        subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)
        _created.discard(name)


def v4(s: str) -> IPv4Address:
    return IPv4Address(s)


def v6(s: str) -> IPv6Address:
    return IPv6Address(s)


def ours(rtnl: Rtnl, family: int) -> list[Route]:
    return [r for r in rtnl.route_list(family) if r.protocol == RTPROT_ISERVICE]


# --- namespace plumbing ------------------------------------------------------------------


def test_rtnl_works_in_its_namespace(ns: Netns) -> None:
    assert ns.rtnl.link_index("lo") == 1
    assert ns.rtnl.default_route(AF_INET) is None  # a fresh namespace, not the host
    ns.veth("isvc-only-ns", "isvc-only-ns2")
    assert ns.rtnl.link_index("isvc-only-ns") is not None
    with pytest.raises(OSError):
        socket.if_nametoindex("isvc-only-ns")  # this thread is still in the host namespace
    assert ns.rtnl.link_index("nosuchdev") is None


# --- tun ---------------------------------------------------------------------------------


def test_create_tun_owned_by_user_and_persistent(ns: Netns) -> None:
    index = create_tun("istun0", 4242, 4343, netns_path=ns.path)
    info = ns.rtnl.link_info(index)
    assert (info.name, info.kind, info.link_type, info.up) == ("istun0", "tun", 65534, False)
    sysfs = "/sys/class/net/istun0/"
    assert in_ns(ns.name, "cat", sysfs + "owner").stdout.strip() == "4242"
    assert in_ns(ns.name, "cat", sysfs + "group").stdout.strip() == "4343"
    assert int(in_ns(ns.name, "cat", sysfs + "tun_flags").stdout, 16) & 0x1001 == 0x1001
    # Persistent: our fd is closed, the device stays.
    assert ns.rtnl.link_index("istun0") == index


def test_create_tun_refuses_existing_names_and_bad_input(ns: Netns) -> None:
    create_tun("istun0", 4242, 4343, netns_path=ns.path)
    with pytest.raises(FileExistsError):
        create_tun("istun0", 4242, 4343, netns_path=ns.path)
    ns.veth("isvc-va", "isvc-vb")
    with pytest.raises(FileExistsError):
        create_tun("isvc-va", 4242, 4343, netns_path=ns.path)
    for bad in ("", "a" * 16, "a/b", "tun%d", "a b", ".", "..", "tün"):
        with pytest.raises(ValueError):
            create_tun(bad, 4242, 4343, netns_path=ns.path)
    for uid, gid in ((-1, 1), (1, -1), (0xFFFFFFFF, 1)):
        with pytest.raises(ValueError):
            create_tun("istun1", uid, gid, netns_path=ns.path)
    assert ns.rtnl.link_index("istun1") is None


def test_only_the_owner_can_attach(ns: Netns, tmp_path: Path) -> None:
    create_tun("istun0", 4242, 4343, netns_path=ns.path)
    # What openvpn (as the user) does: open /dev/net/tun and TUNSETIFF the name.  The
    # host's /dev/net/tun is 0600, so a 0666 node is bind-mounted in a private mount ns.
    node = tmp_path / "tun"
    attach = ("import fcntl,os,struct;fd=os.open('/dev/net/tun',os.O_RDWR);"
              "fcntl.ioctl(fd,0x400454ca,struct.pack('16sH22x',b'istun0',0x1001));"
              "print('attached')")
    script = (f"mknod -m 0666 {node} c 10 200 && mount --bind {node} /dev/net/tun && "
              "for u in 4242 4244; do setpriv --reuid=$u --regid=4343 --clear-groups "
              f"/usr/bin/python3 -c \"{attach}\" 2>&1 | tail -1; done")
    try:
        res = in_ns(ns.name, "unshare", "-m", "sh", "-c", script, check=False)
    finally:
        node.unlink(missing_ok=True)
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "attached", res
    assert "Operation not permitted" in lines[1], res


def test_create_tun_with_a_large_uid(ns: Netns) -> None:
    create_tun("istun0", 3_000_000_000, 4_000_000_000, netns_path=ns.path)
    sysfs = "/sys/class/net/istun0/"
    assert in_ns(ns.name, "cat", sysfs + "owner").stdout.strip() == "3000000000"
    assert in_ns(ns.name, "cat", sysfs + "group").stdout.strip() == "4000000000"


def test_delete_tun(ns: Netns) -> None:
    index = ns.tun()
    delete_tun("istun0", rtnl=ns.rtnl)
    assert ns.rtnl.link_index("istun0") is None
    delete_tun("istun0", rtnl=ns.rtnl)  # already gone: fine
    delete_tun(index, netns_path=ns.path)  # by index, own socket: fine too
    va, _vb = ns.veth()
    with pytest.raises(OSError) as exc:
        delete_tun(va, rtnl=ns.rtnl)  # not a tun: refused, left alone
    assert exc.value.errno == errno.EINVAL
    assert ns.rtnl.link_index("isvc-va") == va


def test_delete_tun_removes_its_addresses_and_routes(ns: Netns) -> None:
    index = ns.tun()
    other = ns.tun("istun1")
    ns.rtnl.addr_add(index, v4("10.8.0.2"), 24)
    ns.rtnl.addr_add(index, v6("2001:db8::2"), 64)
    ns.rtnl.addr_add(other, v4("10.9.0.2"), 24)
    ns.rtnl.route_add(Route(IPv4Network("192.0.2.0/24"), index, v4("10.8.0.1"), 10))
    ns.rtnl.route_add(Route(IPv6Network("2001:db8:5::/64"), index, None, 10))
    ns.rtnl.route_add(Route(IPv4Network("198.51.100.0/24"), other, None, 10))
    delete_tun(index, rtnl=ns.rtnl)
    assert ns.rtnl.link_index("istun0") is None
    assert all(a.index != index for a in ns.rtnl.addr_list())
    for fam in (AF_INET, AF_INET6):
        assert all(r.oif != index for r in ns.rtnl.route_list(fam))
    # the other session's tun keeps its own
    assert [r.dst for r in ours(ns.rtnl, AF_INET)] == [IPv4Network("198.51.100.0/24")]
    assert [a.address for a in ns.rtnl.addr_list(other)] == [v4("10.9.0.2")]


# --- links and addresses -----------------------------------------------------------------


def test_link_up_and_mtu(ns: Netns) -> None:
    index = create_tun("istun0", 4242, 4343, netns_path=ns.path)
    ns.rtnl.link_set(index, up=True, mtu=1400)
    info = ns.rtnl.link_info(index)
    assert info.up and info.mtu == 1400
    assert "mtu 1400" in ip(ns.name, "link", "show", "istun0")
    ns.rtnl.link_set(index, mtu=1280)  # up untouched
    info = ns.rtnl.link_info(index)
    assert info.up and info.mtu == 1280
    ns.rtnl.link_set(index, up=False)
    info = ns.rtnl.link_info(index)
    assert not info.up and info.mtu == 1280


def test_addresses_v4_peer_plain_and_v6(ns: Netns) -> None:
    rt = ns.rtnl
    index = ns.tun()
    rt.addr_add(index, v4("10.8.0.6"), 32, peer=v4("10.8.0.5"))  # net30 / p2p style
    rt.addr_add(index, v4("10.9.0.2"), 24)  # subnet style
    rt.addr_add(index, v6("2001:db8::2"), 64)
    got = {(a.address, a.prefix_len, a.peer) for a in rt.addr_list(index)}
    assert got == {(v4("10.8.0.6"), 32, v4("10.8.0.5")), (v4("10.9.0.2"), 24, None),
                   (v6("2001:db8::2"), 64, None)}
    shown = ip(ns.name, "addr", "show", "dev", "istun0")
    assert "inet 10.8.0.6 peer 10.8.0.5/32" in shown
    assert "inet 10.9.0.2/24" in shown
    (a6,) = rt.addr_list(index, AF_INET6)
    assert a6.flags & IFA_F_NODAD and not a6.flags & IFA_F_TENTATIVE  # usable at once
    # the kernel made the prefix routes, so the peer is on-link
    dsts = {r.dst for r in rt.route_list(AF_INET) if r.oif == index}
    assert {IPv4Network("10.8.0.5/32"), IPv4Network("10.9.0.0/24")} <= dsts

    with pytest.raises(NetlinkError) as exc:
        rt.addr_add(index, v4("10.9.0.2"), 24)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(NetlinkError) as exc:
        rt.addr_add(index, v6("2001:db8::2"), 64)
    assert exc.value.errno == errno.EEXIST

    rt.addr_del(index, v4("10.8.0.6"), 32, peer=v4("10.8.0.5"))
    rt.addr_del(index, v4("10.9.0.2"), 24)
    rt.addr_del(index, v6("2001:db8::2"), 64)
    assert rt.addr_list(index, AF_INET) == []
    assert all(a.address.is_link_local for a in rt.addr_list(index, AF_INET6))
    with pytest.raises(NetlinkError) as exc:
        rt.addr_del(index, v4("10.9.0.2"), 24)
    assert exc.value.errno == errno.EADDRNOTAVAIL


# --- routes ------------------------------------------------------------------------------


def test_routes_v4_v6_gateway_metric_onlink(ns: Netns) -> None:
    rt = ns.rtnl
    index = ns.tun()
    rt.addr_add(index, v4("10.8.0.2"), 24)
    rt.addr_add(index, v6("2001:db8::2"), 64)
    routes = [
        Route(IPv4Network("192.0.2.0/24"), index, v4("10.8.0.1"), 50),
        Route(IPv4Network("198.51.100.0/24"), index, None, None),
        Route(IPv4Network("203.0.113.0/24"), index, v4("100.64.0.1"), 7, onlink=True),
        Route(IPv6Network("2001:db8:1::/48"), index, None, 100),
        Route(IPv6Network("2001:db8:2::/64"), index, v6("2001:db8::1"), 200),
    ]
    for r in routes:
        rt.route_add(r)
    got4 = {r.dst: r for r in ours(rt, AF_INET)}
    got6 = {r.dst: r for r in ours(rt, AF_INET6)}
    r1 = got4[IPv4Network("192.0.2.0/24")]
    assert (r1.oif, r1.gateway, r1.metric, r1.scope) == (index, v4("10.8.0.1"), 50,
                                                       RT_SCOPE_UNIVERSE)
    r2 = got4[IPv4Network("198.51.100.0/24")]
    assert (r2.oif, r2.gateway, r2.metric, r2.scope) == (index, None, 0, RT_SCOPE_LINK)
    r3 = got4[IPv4Network("203.0.113.0/24")]
    assert (r3.gateway, r3.metric, r3.onlink) == (v4("100.64.0.1"), 7, True)
    r4 = got6[IPv6Network("2001:db8:1::/48")]
    assert (r4.oif, r4.gateway, r4.metric) == (index, None, 100)
    r5 = got6[IPv6Network("2001:db8:2::/64")]
    assert (r5.oif, r5.gateway, r5.metric) == (index, v6("2001:db8::1"), 200)
    shown = ip(ns.name, "route", "show", "proto", str(RTPROT_ISERVICE))
    assert "192.0.2.0/24 via 10.8.0.1 dev istun0 metric 50" in shown
    assert "203.0.113.0/24 via 100.64.0.1 dev istun0 metric 7 onlink" in shown

    # a gateway that is not on-link needs onlink
    with pytest.raises(NetlinkError) as exc:
        rt.route_add(Route(IPv4Network("203.0.113.0/25"), index, v4("100.64.0.1"), 7))
    assert exc.value.errno in (errno.ENETUNREACH, errno.EINVAL)

    for r in routes:
        rt.route_del(r)
    assert ours(rt, AF_INET) == [] and ours(rt, AF_INET6) == []


@pytest.mark.parametrize("family", [AF_INET, AF_INET6])
def test_batch_of_10000_routes(ns: Netns, family: int) -> None:
    rt = ns.rtnl
    index = ns.tun()
    n = 10_000
    if family == AF_INET:
        rt.addr_add(index, v4("10.8.0.2"), 24)
        gw: IPv4Address | IPv6Address = v4("10.8.0.1")
        dsts: list[IPv4Network | IPv6Network] = [
            IPv4Network((0x0A640000 + i, 32)) for i in range(n)]
    else:
        rt.addr_add(index, v6("2001:db8::2"), 64)
        gw = v6("2001:db8::1")
        base = int(IPv6Address("2001:db8:100::"))
        dsts = [IPv6Network((base + (i << 64), 64)) for i in range(n)]
    routes = [Route(d, index, gw, 10) for d in dsts]

    t0 = time.perf_counter()
    assert rt.routes_apply([(True, r) for r in routes]) == [0] * n
    t_add = time.perf_counter() - t0
    assert {r.dst for r in ours(rt, family)} == set(dsts)
    listed = ip(ns.name, "-4" if family == AF_INET else "-6", "route", "show", "proto",
                str(RTPROT_ISERVICE))
    assert len(listed.splitlines()) == n

    t0 = time.perf_counter()
    assert rt.routes_apply([(False, r) for r in routes]) == [0] * n
    t_del = time.perf_counter() - t0
    assert ours(rt, family) == []
    # Rates are printed, not asserted: speed is the benchmark's (bench/), a shared CI
    # machine's load must not fail a test.
    print(f"\n{n} routes family {family}: add {n / t_add:.0f}/s, delete {n / t_del:.0f}/s")


@pytest.mark.parametrize(("prefix", "flag"), [("10.50.0.0/24", "-4"),
                                              ("2001:db8:50::/64", "-6")])
def test_route_del_never_removes_a_foreign_route(ns: Netns, prefix: str, flag: str) -> None:
    rt = ns.rtnl
    va, _vb = ns.veth()
    dst = ip_network(prefix)
    fam = AF_INET if dst.version == 4 else AF_INET6
    ip(ns.name, flag, "route", "add", prefix, "dev", "isvc-va", "proto", "static",
       "metric", "100")

    def foreign() -> list[Route]:
        return [r for r in rt.route_list(fam) if r.dst == dst and r.protocol == RTPROT_STATIC]

    assert len(foreign()) == 1
    same = Route(dst, va, None, 100)  # identical but for the protocol
    with pytest.raises(NetlinkError) as exc:
        rt.route_add(same)
    assert exc.value.errno == errno.EEXIST  # not added, so never ours to undo
    with pytest.raises(NetlinkError) as exc:
        rt.route_del(same)
    assert exc.value.errno == errno.ESRCH
    assert rt.routes_apply([(False, same), (False, Route(dst, va))]) == [errno.ESRCH] * 2
    assert rt.routes_apply([(False, Route(dst))]) == [errno.ESRCH]  # no oif, any metric
    with pytest.raises(ValueError):  # protocol 0 is the kernel's wildcard: refused
        rt.route_del(Route(dst, va, None, 100, protocol=0))
    with pytest.raises(ValueError):
        rt.routes_apply([(False, Route(dst, protocol=0))])
    assert len(foreign()) == 1

    # ours beside it (another metric); a wildcard-metric delete takes only ours
    rt.route_add(Route(dst, va, None, 200))
    rt.route_del(Route(dst, va))
    assert len(foreign()) == 1
    assert [r for r in rt.route_list(fam) if r.dst == dst and r.protocol == RTPROT_ISERVICE] == []


def test_route_list_of_missing_table_is_empty(ns: Netns) -> None:
    assert ns.rtnl.route_list(AF_INET, table=4242) == []
    assert ns.rtnl.route_list(AF_INET6, table=4242) == []


def test_route_in_large_table(ns: Netns) -> None:
    rt = ns.rtnl
    va, _vb = ns.veth()
    r = Route(IPv4Network("10.60.0.0/16"), va, None, 5, table=1000)
    rt.route_add(r)
    (got,) = rt.route_list(AF_INET, table=1000)
    assert (got.dst, got.oif, got.table, got.protocol) == (r.dst, va, 1000, RTPROT_ISERVICE)
    assert rt.route_list(AF_INET) == []
    rt.route_del(r)
    assert rt.route_list(AF_INET, table=1000) == []


def test_default_route_and_route_get(ns: Netns) -> None:
    rt = ns.rtnl
    va, _vb = ns.veth()
    rt.addr_add(va, v4("192.0.2.1"), 24)
    rt.addr_add(va, v6("2001:db8:1::1"), 64)
    assert rt.default_route(AF_INET) is None and rt.default_route(AF_INET6) is None
    assert rt.route_get(v4("198.51.100.7")) is None
    assert rt.route_get(v6("2001:db8:99::7")) is None

    ip(ns.name, "route", "add", "default", "via", "192.0.2.254", "dev", "isvc-va", "metric", "100")
    ip(ns.name, "route", "add", "default", "via", "192.0.2.253", "dev", "isvc-va", "metric", "50")
    ip(ns.name, "-6", "route", "add", "default", "via", "2001:db8:1::fe", "dev", "isvc-va",
       "metric", "300")
    d4 = rt.default_route(AF_INET)
    assert d4 is not None and (d4.gateway, d4.oif, d4.metric) == (v4("192.0.2.253"), va, 50)
    d6 = rt.default_route(AF_INET6)
    assert d6 is not None and (d6.gateway, d6.oif, d6.metric) == (v6("2001:db8:1::fe"), va, 300)

    g = rt.route_get(v4("198.51.100.7"))
    assert g is not None and (g.gateway, g.oif) == (v4("192.0.2.253"), va)
    assert g.dst == IPv4Network("198.51.100.7/32")
    g = rt.route_get(v4("192.0.2.9"))  # on-link: no gateway
    assert g is not None and (g.gateway, g.oif) == (None, va)
    g6 = rt.route_get(v6("2001:db8:99::7"))
    assert g6 is not None and (g6.gateway, g6.oif) == (v6("2001:db8:1::fe"), va)

    # a better default of ours wins, and goes again cleanly
    mine = Route(IPv4Network("0.0.0.0/0"), va, v4("192.0.2.252"), 10)
    rt.route_add(mine)
    assert rt.default_route(AF_INET) == Route(IPv4Network("0.0.0.0/0"), va, v4("192.0.2.252"),
                                              10, scope=RT_SCOPE_UNIVERSE)
    rt.route_del(mine)
    d4 = rt.default_route(AF_INET)
    assert d4 is not None and d4.gateway == v4("192.0.2.253")


# --- neighbours ----------------------------------------------------------------------------


def test_neigh_flush(ns: Netns) -> None:
    rt = ns.rtnl
    va, vb = ns.veth()
    rt.addr_add(va, v4("192.0.2.1"), 24)
    rt.addr_add(va, v6("2001:db8:1::1"), 64)
    rt.addr_add(vb, v4("192.0.2.2"), 24)
    for i in (5, 6, 7):
        ip(ns.name, "neigh", "add", f"192.0.2.{i}", "lladdr", f"02:00:00:00:00:0{i}",
           "dev", "isvc-va", "nud", "permanent")
    for i in (5, 6):
        ip(ns.name, "-6", "neigh", "add", f"2001:db8:1::{i}", "lladdr", f"02:00:00:00:01:0{i}",
           "dev", "isvc-va", "nud", "permanent")
    ip(ns.name, "neigh", "add", "192.0.2.9", "lladdr", "02:00:00:00:00:09", "dev", "isvc-vb",
       "nud", "permanent")

    assert {n.dst for n in rt.neigh_list(va, AF_INET)} == {v4(f"192.0.2.{i}") for i in (5, 6, 7)}
    assert rt.neigh_flush(va, AF_INET) == 3
    assert ip(ns.name, "-4", "neigh", "show", "dev", "isvc-va").strip() == ""
    assert "192.0.2.9" in ip(ns.name, "-4", "neigh", "show", "dev", "isvc-vb")  # other link
    v6_left = ip(ns.name, "-6", "neigh", "show", "dev", "isvc-va")
    assert "2001:db8:1::5" in v6_left and "2001:db8:1::6" in v6_left  # other family
    assert rt.neigh_flush(va, AF_INET6) >= 2
    assert ip(ns.name, "-6", "neigh", "show", "dev", "isvc-va").strip() == ""
    assert rt.neigh_flush(va, AF_INET) == 0


# --- errors ------------------------------------------------------------------------------


def test_kernel_errors_surface_as_errno(ns: Netns) -> None:
    rt = ns.rtnl
    index = ns.tun()
    bad = 999_999
    for call in (lambda: rt.link_set(bad, up=True), lambda: rt.link_info(bad),
                 lambda: rt.link_del(bad), lambda: rt.addr_add(bad, v4("10.1.1.1"), 24),
                 lambda: rt.route_add(Route(IPv4Network("10.2.0.0/16"), bad))):
        with pytest.raises(NetlinkError) as exc:
            call()
        assert exc.value.errno == errno.ENODEV
        assert isinstance(exc.value, OSError)

    r = Route(IPv4Network("10.3.0.0/16"), index, None, 5)
    r6 = Route(IPv6Network("2001:db8:3::/48"), index, None, 5)
    assert rt.routes_apply([(True, r), (True, r), (False, r), (False, r),
                            (True, r6), (True, r6), (False, r6), (False, r6),
                            (True, Route(IPv4Network("10.4.0.0/16"), bad))]) == [
        0, errno.EEXIST, 0, errno.ESRCH, 0, errno.EEXIST, 0, errno.ESRCH, errno.ENODEV]
    assert rt.routes_apply([]) == []
    # after all those errors the socket still answers correctly
    assert rt.link_info(index).name == "istun0"


def test_routes_apply_reports_every_failure_across_chunks(ns: Netns) -> None:
    """Only each chunk's last request asks for an ack: failures still land on the right
    ops, also when thousands fail (every chunk must fit the receive buffer)."""
    rt = ns.rtnl
    index = ns.tun()
    old = [Route(IPv4Network(((10 << 24) + 256 * i, 24)), index, None, 7) for i in range(4000)]
    new = [Route(IPv4Network(((11 << 24) + 256 * i, 24)), index, None, 7) for i in range(4000)]
    assert rt.routes_apply([(True, r) for r in old]) == [0] * 4000
    mixed = [op for pair in zip(old, new, strict=True) for op in ((True, pair[0]), (True, pair[1]))]
    assert rt.routes_apply(mixed) == [errno.EEXIST, 0] * 4000
    assert rt.routes_apply([(True, r) for r in old]) == [errno.EEXIST] * 4000  # all fail
    assert rt.routes_apply([(False, r) for r in old + new]) == [0] * 8000
    assert rt.routes_apply([(False, r) for r in new]) == [errno.ESRCH] * 4000
    # the fast path's values (RouteSpec) mean the same routes
    specs = [RouteSpec(r.dst, index, None, 7) for r in old[:100]]
    assert rt.routes_apply([(True, s) for s in specs]) == [0] * 100
    assert rt.routes_apply([(True, r) for r in old[:100]]) == [errno.EEXIST] * 100
    assert rt.routes_apply([(False, s) for s in specs]) == [0] * 100
    assert rt.routes_apply([(False, r) for r in old[:100]]) == [errno.ESRCH] * 100
    assert rt.link_info(index).name == "istun0"


def test_values_are_checked_before_the_kernel_sees_them(ns: Netns) -> None:
    rt = ns.rtnl
    index = ns.tun()
    with pytest.raises(TypeError):
        Route("10.0.0.0/8")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Route(IPv4Network("10.0.0.0/8"), index, v6("::1"))
    with pytest.raises(ValueError):
        Route(IPv4Network("10.0.0.0/8"), None, v4("10.0.0.1"), onlink=True)
    with pytest.raises(ValueError):
        Route(IPv4Network("10.0.0.0/8"), 0)
    with pytest.raises(ValueError):
        Route(IPv4Network("10.0.0.0/8"), index, metric=-1)
    with pytest.raises(ValueError):
        rt.link_set(index, mtu=10)
    with pytest.raises(ValueError):
        rt.addr_add(index, v4("10.0.0.1"), 33)
    with pytest.raises(ValueError):
        rt.addr_add(index, v4("10.0.0.1"), 24, peer=v6("::1"))
    with pytest.raises(ValueError):
        rt.link_info(-3)
    with pytest.raises(ValueError):
        rt.link_index("x" * 16)
    with pytest.raises(ValueError):
        rt.route_list(12345)


# --- parsing of kernel replies -------------------------------------------------------------


def test_garbled_replies_raise_decode_errors() -> None:
    cases = [
        b"\x08\x00\x00\x00" + b"\x00" * 12,  # nlmsg_len below the header size
        b"\xff\x00\x00\x00" + b"\x00" * 12,  # nlmsg_len beyond the datagram
        b"\x10\x00\x00\x00" + b"\x00" * 12 + b"\x01\x02",  # trailing garbage
    ]
    for raw in cases:
        with pytest.raises(NetlinkDecodeError):
            iter_messages(memoryview(raw))
    with pytest.raises(NetlinkDecodeError):
        parse_attrs(memoryview(b"\x40\x00\x01\x00abcd"), 0)  # attribute overruns
    with pytest.raises(NetlinkDecodeError):
        decode_route(memoryview(b"\x02\x20"))  # short rtmsg
    with pytest.raises(NetlinkDecodeError):  # IPv4 route with a 16-byte RTA_DST
        decode_route(memoryview(bytes([2, 24]) + bytes(10) + b"\x14\x00\x01\x00" + bytes(16)))
    with pytest.raises(NetlinkDecodeError):  # /40 for IPv4
        decode_route(memoryview(bytes([2, 40]) + bytes(10)))
    with pytest.raises(NetlinkDecodeError):
        decode_error(memoryview(b"\x01"), 0)
    with pytest.raises(NetlinkDecodeError):
        decode_addr(memoryview(bytes([2, 24, 0, 0, 1, 0, 0, 0])))  # no address at all
    err = decode_error(memoryview((-errno.EEXIST).to_bytes(4, "little", signed=True)), 0)
    assert isinstance(err, NetlinkError) and err.errno == errno.EEXIST


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_no_reply_bytes_crash_the_parsers(raw: bytes) -> None:
    view = memoryview(raw)
    for fn in (iter_messages, decode_link, decode_addr, decode_route, decode_neigh,
               lambda v: parse_attrs(v, 0), lambda v: decode_error(v, 0x300)):
        with contextlib.suppress(NetlinkDecodeError):  # anything else fails the test
            fn(view)


def test_decoded_route_round_trips_through_the_kernel(ns: Netns) -> None:
    rt = ns.rtnl
    va, _vb = ns.veth()
    rt.addr_add(va, v4("192.0.2.1"), 24)
    r = Route(ip_network("10.70.0.0/16"), va, ip_address("192.0.2.99"), 42)
    rt.route_add(r)
    (listed,) = ours(rt, AF_INET)
    rt.route_del(listed)  # a listed route can be handed back for deletion
    assert ours(rt, AF_INET) == []
