"""A small, fast rtnetlink client: links, addresses, routes, neighbours.

Stdlib only, one ``NETLINK_ROUTE`` socket per ``Rtnl``, blocking and synchronous.
The message layouts are declared as data (pyroute2's habit: a header table keyed by
message type, ``_Header`` objects listing field names and struct codes); the runtime
is a plain socket, because the SPEC measured pyroute2 at ~3.8k routes/s against
41-55k/s for a plain socket.

Rules this module keeps:

* every request carries ``NLM_F_REQUEST | NLM_F_ACK`` and its own sequence number;
  replies are matched by sequence number, so a reply left over from an abandoned
  request is skipped, never mistaken for the answer to the next one;
* the kernel's errno becomes ``NetlinkError(errno, text)`` (an ``OSError``), with the
  kernel's extended-ack message when it sends one;
* every reply is parsed with bounds checks: a short or garbled reply raises
  ``NetlinkDecodeError`` (also a ``NetlinkError``), never ``IndexError``/``struct.error``;
* operations take interface *indexes* and ``ipaddress`` objects only.

``run_in_netns``/``rtnl_in_netns`` create sockets inside another network namespace:
a netlink socket belongs to the namespace of the thread that created it, so a
short-lived thread enters the namespace (``setns``), creates the socket and ends;
the socket keeps working in that namespace from any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from iservice.net import (
    IFF_UP,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    RTPROT_ISERVICE,
    AddrInfo,
    IPAddress,
    IPNetwork,
    LinkInfo,
    Neighbour,
    Route,
    RouteSpec,
    check_ifindex,
)

T = TypeVar("T")

# --- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, ...) -----------

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an ack: the original request was cut to its header
NLM_F_ACK_TLVS = 0x200  # in an ack: extended-ack attributes follow

NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_INFO_KIND = 1
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_TABLE = 15

RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255  # on delete: "any scope"
RTNH_F_ONLINK = 0x4
RTM_F_CLONED = 0x200
RTPROT_STATIC = 4

NDA_DST = 1
NDA_IFINDEX = 8

# linux/fib_rules.h
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_SUPPRESS_PREFIXLEN = 14
FRA_FWMASK = 16
FRA_TABLE = 15
FRA_UID_RANGE = 20  # struct fib_rule_uid_range { u32 start, end; }
FRA_PROTOCOL = 21
FR_ACT_TO_TBL = 1

NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
CLONE_NEWNET = 0x40000000

_UNKNOWN = -1  # routes_apply slot not yet acknowledged
_RECV_BUF = 256 * 1024  # > the 32 KiB the kernel uses per dump skb
_SOCK_BUF = 8 * 1024 * 1024  # the kernel doubles it; room for thousands of acks
_ACK_TRUESIZE = 1280  # conservative skb truesize of one ack (error text included)
_MAX_CHUNK_BYTES = 256 * 1024  # requests per sendmsg; the kernel handles them in that call
_RECV_TIMEOUT_S = 10  # a lost ack must not hang a session forever


class NetlinkError(OSError):
    """The kernel refused a request; ``errno`` is its error number."""

    def __init__(self, code: int, text: str | None = None) -> None:
        msg = os.strerror(code)
        if text:
            msg = f"{msg} ({text})"
        super().__init__(code, msg)
        self.kernel_text = text  # the extended-ack message, or our note on the request


class NetlinkDecodeError(NetlinkError):
    """A kernel reply was short or garbled (never an IndexError/struct.error)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EPROTO, what)


# --- message declarations ------------------------------------------------------------


class _Header:
    """A family header following ``nlmsghdr``: field names and struct codes.

    ``""`` names a padding field (struct ``x`` codes); ``pack`` takes keyword values,
    missing ones are 0, so a request states only what it means.
    """

    __slots__ = ("name", "names", "size", "st")

    def __init__(self, name: str, fields: tuple[tuple[str, str], ...]) -> None:
        self.name = name
        self.names = tuple(n for n, _ in fields if n)
        self.st = struct.Struct("=" + "".join(code for _, code in fields))
        self.size = self.st.size

    def pack(self, **values: int) -> bytes:
        unknown = set(values) - set(self.names)
        if unknown:
            raise TypeError(f"{self.name} has no field {sorted(unknown)}")
        return self.st.pack(*(values.get(n, 0) for n in self.names))

    def unpack(self, body: memoryview) -> tuple[int, ...]:
        if len(body) < self.size:
            raise NetlinkDecodeError(f"{self.name}: {len(body)} bytes, need {self.size}")
        return self.st.unpack_from(body, 0)


NLMSGHDR = _Header("nlmsghdr", (("len", "I"), ("type", "H"), ("flags", "H"), ("seq", "I"),
                                ("pid", "I")))
IFINFOMSG = _Header("ifinfomsg", (("family", "B"), ("", "x"), ("type", "H"), ("index", "i"),
                                  ("flags", "I"), ("change", "I")))
IFADDRMSG = _Header("ifaddrmsg", (("family", "B"), ("prefixlen", "B"), ("flags", "B"),
                                  ("scope", "B"), ("index", "i")))
RTMSG = _Header("rtmsg", (("family", "B"), ("dst_len", "B"), ("src_len", "B"), ("tos", "B"),
                          ("table", "B"), ("protocol", "B"), ("scope", "B"), ("type", "B"),
                          ("flags", "I")))
NDMSG = _Header("ndmsg", (("family", "B"), ("", "3x"), ("ifindex", "i"), ("state", "H"),
                          ("flags", "B"), ("type", "B")))
FIB_RULE_HDR = _Header("fib_rule_hdr", (("family", "B"), ("dst_len", "B"), ("src_len", "B"),
                                        ("tos", "B"), ("table", "B"), ("", "2x"),
                                        ("action", "B"), ("flags", "I")))

# Message type -> its family header (MarshalRtnl.msg_map's role): a missing key is a bug.
MSG_HEADERS: dict[int, _Header] = {
    RTM_NEWLINK: IFINFOMSG, RTM_DELLINK: IFINFOMSG, RTM_GETLINK: IFINFOMSG,
    RTM_SETLINK: IFINFOMSG,
    RTM_NEWADDR: IFADDRMSG, RTM_DELADDR: IFADDRMSG, RTM_GETADDR: IFADDRMSG,
    RTM_NEWROUTE: RTMSG, RTM_DELROUTE: RTMSG, RTM_GETROUTE: RTMSG,
    RTM_NEWNEIGH: NDMSG, RTM_DELNEIGH: NDMSG, RTM_GETNEIGH: NDMSG,
    RTM_NEWRULE: FIB_RULE_HDR, RTM_DELRULE: FIB_RULE_HDR, RTM_GETRULE: FIB_RULE_HDR,
}

_NLH = NLMSGHDR.st
_NLA = struct.Struct("=HH")
_NLA_U32 = struct.Struct("=HHI")
_ERR = struct.Struct("=IHHIIi")  # nlmsghdr + nlmsgerr.error: the ack fast path
_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
# nlmsghdr + rtmsg in one struct: the route fast path packs both at once.
_NLH_RTMSG = struct.Struct(_NLH.format + RTMSG.st.format.lstrip("="))


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * (-n & 3)


def nla_u32(kind: int, value: int) -> bytes:
    return _NLA_U32.pack(8, kind, value)


def nla_str(kind: int, value: str) -> bytes:
    return nla(kind, value.encode() + b"\0")


# --- reply parsing (bounds-checked) ----------------------------------------------------


def iter_messages(buf: memoryview) -> list[tuple[int, int, int, memoryview]]:
    """Split one datagram into ``(type, flags, seq, body)``; garbled -> NetlinkDecodeError."""
    out = []
    n = len(buf)
    off = 0
    while off < n:
        if n - off < _NLH.size:
            raise NetlinkDecodeError(f"{n - off} trailing bytes, shorter than nlmsghdr")
        length, mtype, flags, seq, _pid = _NLH.unpack_from(buf, off)
        if length < _NLH.size or length > n - off:
            raise NetlinkDecodeError(f"nlmsg_len {length} outside 16..{n - off}")
        out.append((mtype, flags, seq, buf[off + _NLH.size:off + length]))
        off += (length + 3) & ~3
    return out


def parse_attrs(body: memoryview, off: int) -> dict[int, memoryview]:
    """Attributes of ``body`` from ``off`` on, by type (the last one of a type wins)."""
    out: dict[int, memoryview] = {}
    n = len(body)
    if off > n:
        raise NetlinkDecodeError("attributes start past the message end")
    while n - off >= 4:
        alen, atype = _NLA.unpack_from(body, off)
        if alen < 4 or alen > n - off:
            raise NetlinkDecodeError(f"attribute length {alen} outside 4..{n - off}")
        out[atype & NLA_TYPE_MASK] = body[off + 4:off + alen]
        off += (alen + 3) & ~3
    return out


def _u32(v: memoryview) -> int:
    if len(v) < 4:
        raise NetlinkDecodeError("u32 attribute too short")
    return int(_U32.unpack_from(v, 0)[0])


def _text(v: memoryview) -> str:
    raw = bytes(v)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _addr(v: memoryview, family: int) -> IPAddress:
    if family == AF_INET and len(v) == 4:
        return IPv4Address(bytes(v))
    if family == AF_INET6 and len(v) == 16:
        return IPv6Address(bytes(v))
    raise NetlinkDecodeError(f"address of {len(v)} bytes for family {family}")


def _net(family: int, raw: bytes, plen: int) -> IPNetwork:
    if family == AF_INET and len(raw) == 4 and plen <= 32:
        return IPv4Network((raw, plen), strict=False)
    if family == AF_INET6 and len(raw) == 16 and plen <= 128:
        return IPv6Network((raw, plen), strict=False)
    raise NetlinkDecodeError(f"prefix of {len(raw)} bytes /{plen} for family {family}")


def _error_text(body: memoryview, flags: int) -> str | None:
    """The kernel's extended-ack message in an NLMSG_ERROR body, if any."""
    if not flags & NLM_F_ACK_TLVS or len(body) < 4 + _NLH.size:
        return None
    off = 4 + _NLH.size
    if not flags & NLM_F_CAPPED:  # the whole original request is echoed
        orig_len = _U32.unpack_from(body, 4)[0]
        off = 4 + ((orig_len + 3) & ~3)
    try:
        msg = parse_attrs(body, off).get(NLMSGERR_ATTR_MSG)
    except NetlinkDecodeError:
        return None
    return _text(msg) if msg is not None else None


def decode_error(body: memoryview, flags: int) -> NetlinkError | None:
    """None for a positive ack, else the error the kernel reported."""
    if len(body) < 4:
        raise NetlinkDecodeError("NLMSG_ERROR shorter than its error field")
    code = -_I32.unpack_from(body, 0)[0]
    if code == 0:
        return None
    if code < 0 or code > 4095:
        raise NetlinkDecodeError(f"error code {-code} is no negative errno")
    return NetlinkError(code, _error_text(body, flags))


# --- values ----------------------------------------------------------------------------


_check_ifindex = check_ifindex


def _check_family(family: int) -> int:
    if family not in (AF_INET, AF_INET6):
        raise ValueError(f"address family must be AF_INET or AF_INET6, not {family!r}")
    return family


def decode_link(body: memoryview) -> LinkInfo:
    _fam, ltype, index, flags, _change = IFINFOMSG.unpack(body)
    a = parse_attrs(body, IFINFOMSG.size)
    kind = None
    if IFLA_LINKINFO in a:
        info = parse_attrs(a[IFLA_LINKINFO], 0)
        if IFLA_INFO_KIND in info:
            kind = _text(info[IFLA_INFO_KIND])
    return LinkInfo(index=index, name=_text(a[IFLA_IFNAME]) if IFLA_IFNAME in a else "",
                    mtu=_u32(a[IFLA_MTU]) if IFLA_MTU in a else 0, flags=flags, kind=kind,
                    link_type=ltype,
                    alias=_text(a[IFLA_IFALIAS]) if IFLA_IFALIAS in a else None)


def decode_addr(body: memoryview) -> AddrInfo:
    family, plen, flags, scope, index = IFADDRMSG.unpack(body)
    a = parse_attrs(body, IFADDRMSG.size)
    local = _addr(a[IFA_LOCAL], family) if IFA_LOCAL in a else None
    address = _addr(a[IFA_ADDRESS], family) if IFA_ADDRESS in a else None
    if local is not None:  # IFA_ADDRESS differing from IFA_LOCAL is a p2p peer
        addr, peer = local, (address if address is not None and address != local else None)
    elif address is not None:
        addr, peer = address, None
    else:
        raise NetlinkDecodeError("address message without an address")
    return AddrInfo(family=family, index=index, address=addr, prefix_len=plen, peer=peer,
                    flags=_u32(a[IFA_FLAGS]) if IFA_FLAGS in a else flags, scope=scope,
                    label=_text(a[IFA_LABEL]) if IFA_LABEL in a else None)


def decode_route(body: memoryview) -> Route:
    family, dst_len, _src, _tos, table, proto, scope, rtype, rflags = RTMSG.unpack(body)
    a = parse_attrs(body, RTMSG.size)
    if family not in (AF_INET, AF_INET6):
        raise NetlinkDecodeError(f"route of family {family}")
    raw = bytes(a[RTA_DST]) if RTA_DST in a else bytes(4 if family == AF_INET else 16)
    table = _u32(a[RTA_TABLE]) if RTA_TABLE in a else table
    oif = (_u32(a[RTA_OIF]) if RTA_OIF in a else 0) or None
    gateway = _addr(a[RTA_GATEWAY], family) if RTA_GATEWAY in a else None
    try:
        return Route(dst=_net(family, raw, dst_len), oif=oif, gateway=gateway,
                     # IPv4 leaves RTA_PRIORITY out when the metric is 0
                     metric=_u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else 0,
                     protocol=proto, table=table or RT_TABLE_MAIN, scope=scope,
                     onlink=bool(rflags & RTNH_F_ONLINK) and None not in (oif, gateway),
                     route_type=rtype)
    except (ValueError, TypeError) as exc:  # kernel sent values Route refuses
        raise NetlinkDecodeError(f"route: {exc}") from None


def decode_neigh(body: memoryview) -> Neighbour | None:
    family, ifindex, state, flags, _type = NDMSG.unpack(body)
    a = parse_attrs(body, NDMSG.size)
    if family not in (AF_INET, AF_INET6) or NDA_DST not in a:
        return None
    return Neighbour(family=family, ifindex=ifindex, dst=_addr(a[NDA_DST], family),
                     state=state, flags=flags)


def encode_route(route: Route, add: bool, seq: int, *, ack: bool = True) -> bytes:
    """RTM_NEWROUTE (create, exclusive) or RTM_DELROUTE for ``route`` (NLM_F_ACK if ``ack``:
    without it the kernel answers only a failure)."""
    if route.dst.version == 4:
        attrs = [_NLA.pack(8, RTA_DST), route.dst.network_address.packed]
        if route.gateway is not None:
            attrs += (_NLA.pack(8, RTA_GATEWAY), route.gateway.packed)
    else:
        attrs = [_NLA.pack(20, RTA_DST), route.dst.network_address.packed]
        if route.gateway is not None:
            attrs += (_NLA.pack(20, RTA_GATEWAY), route.gateway.packed)
    if route.oif is not None:
        attrs.append(_NLA_U32.pack(8, RTA_OIF, route.oif))
    if route.metric is not None:
        attrs.append(_NLA_U32.pack(8, RTA_PRIORITY, route.metric))
    table = route.table
    if table > 255:  # rtm_table is a byte; larger ids go in RTA_TABLE only
        attrs.append(_NLA_U32.pack(8, RTA_TABLE, table))
        table = 0
    body = b"".join(attrs)
    if add:
        mtype = RTM_NEWROUTE
        # EXCL: never join an existing route (IPv6 would otherwise append a multipath hop)
        flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
        scope = route.effective_scope
    else:
        mtype, flags = RTM_DELROUTE, NLM_F_REQUEST
        scope = route.scope if route.scope is not None else RT_SCOPE_NOWHERE
    if ack:
        flags |= NLM_F_ACK
    return _NLH_RTMSG.pack(
        _NLH_RTMSG.size + len(body), mtype, flags, seq, 0,
        route.family, route.dst.prefixlen, 0, 0, table, route.protocol, scope,
        route.route_type, RTNH_F_ONLINK if route.onlink else 0) + body


_FLAGS = struct.Struct("<H")


def _ack_flag(msg: bytes, ack: bool) -> bytes:
    """``msg`` (one encoded request) with NLM_F_ACK set or cleared in its header."""
    flags = _FLAGS.unpack_from(msg, 6)[0]
    want = flags | NLM_F_ACK if ack else flags & ~NLM_F_ACK
    return msg if want == flags else msg[:6] + _FLAGS.pack(want) + msg[8:]


def encode_route_spec(spec: RouteSpec, add: bool, seq: int) -> bytes:
    """``encode_route(spec.route(), add, seq, ack=False)`` without the Route."""
    dst, oif, gw, metric, table = spec
    if dst.version == 4:
        family, alen = AF_INET, 8
    else:
        family, alen = AF_INET6, 20
    body = _NLA.pack(alen, RTA_DST) + dst.network_address.packed
    if gw is not None:
        body += _NLA.pack(alen, RTA_GATEWAY) + gw.packed
    body += _NLA_U32.pack(8, RTA_OIF, oif)
    if metric is not None:
        body += _NLA_U32.pack(8, RTA_PRIORITY, metric)
    if table > 255:  # rtm_table is a byte; larger ids go in RTA_TABLE only
        body += _NLA_U32.pack(8, RTA_TABLE, table)
        table = 0
    if add:
        mtype, flags = RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
        scope = RT_SCOPE_UNIVERSE if gw is not None else RT_SCOPE_LINK
    else:
        mtype, flags, scope = RTM_DELROUTE, NLM_F_REQUEST, RT_SCOPE_NOWHERE
    return _NLH_RTMSG.pack(
        _NLH_RTMSG.size + len(body), mtype, flags, seq, 0, family, dst.prefixlen, 0, 0,
        table, RTPROT_ISERVICE, scope, RTN_UNICAST, 0) + body


# A route through a tun from plain values, one precompiled format each (nlmsghdr, rtmsg,
# RTA_DST, RTA_OIF[, RTA_TABLE]): encode_route_spec's bytes for RouteSpec(dst, oif, None,
# None, table) added, ~0.5 µs a route instead of ~1.5 (measured at 10,000 routes).
_TUN_ROUTE = {(version, big): struct.Struct(
    _NLH_RTMSG.format + ("HH4s" if version == 4 else "HH16s") + "HHI" + ("HHI" if big else ""))
    for version in (4, 6) for big in (False, True)}


def encode_tun_routes(oif: int, table: int, version: int, values: Sequence[int],
                      plens: Sequence[int], seq0: int) -> tuple[list[bytes], int]:
    """New routes ``values[i]/plens[i]`` through ``oif`` (sequence numbers from ``seq0``,
    no NLM_F_ACK), as ``encode_route_spec`` makes them; (the requests, their length)."""
    big = table > 255  # rtm_table is a byte; larger ids go in RTA_TABLE only
    st = _TUN_ROUTE[(version, big)]
    pack = st.pack
    size = st.size
    family, alen, nbytes = (AF_INET, 8, 4) if version == 4 else (AF_INET6, 20, 16)
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    head = (RTM_NEWROUTE, flags)
    rt_table = 0 if big else table
    common = (RTPROT_ISERVICE, RT_SCOPE_LINK, RTN_UNICAST, 0, alen, RTA_DST)
    extra = (8, RTA_TABLE, table) if big else ()
    msgs = [pack(size, *head, (seq0 + k) & 0xFFFFFFFF, 0, family, plen, 0, 0, rt_table, *common,
                 value.to_bytes(nbytes, "big"), 8, RTA_OIF, oif, *extra)
            for k, (value, plen) in enumerate(zip(values, plens, strict=True))]
    return msgs, size


def _check_route_op(add: bool, route: Route | RouteSpec) -> None:
    if type(route) is RouteSpec:
        if not isinstance(add, bool):
            raise TypeError(f"expected (bool, RouteSpec), got ({add!r}, {route!r})")
        return
    if not isinstance(add, bool) or not isinstance(route, Route):
        raise TypeError(f"expected (bool, Route), got ({add!r}, {route!r})")
    if not add and route.protocol == 0:
        # rtm_protocol 0 is the kernel's wildcard: such a delete could hit anyone's route.
        raise ValueError(f"refusing to delete {route.dst} without a route protocol")


# --- network namespaces ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that joined the network namespace at ``path``.

    setns affects only the calling thread, and sockets (netlink, tun ioctls, the
    ``if_nametoindex`` helper socket) belong to the namespace they are created in; so
    whatever ``fn`` creates lives in that namespace, while this thread stays put.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    box: dict[str, object] = {}

    def body() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    try:
        t = threading.Thread(target=body, name="netns", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in_netns(path: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside the network namespace at ``path``."""
    return run_in_netns(path, lambda: socket.socket(family, kind, proto))


def rtnl_in_netns(path: str) -> Rtnl:
    """An ``Rtnl`` whose socket works on the network namespace at ``path``."""
    return run_in_netns(path, Rtnl)


# --- the socket ------------------------------------------------------------------------


class Rtnl:
    """One NETLINK_ROUTE socket; blocking, for one thread at a time (a lock enforces it)."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_ROUTE)
        try:
            for force, opt in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                               (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                try:  # FORCE passes rmem_max/wmem_max, needs CAP_NET_ADMIN
                    sock.setsockopt(socket.SOL_SOCKET, force, _SOCK_BUF)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, opt, _SOCK_BUF)
            # Kernel text in errors; small error acks; kernel-side dump filters.  An older
            # kernel without them still works: dumps are filtered here as well.
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_NETLINK, opt, 1)
            # SO_RCVTIMEO, not settimeout(): the latter adds a poll() to every recv.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                            struct.pack("ll", _RECV_TIMEOUT_S, 0))
            sock.bind((0, 0))
            sock.connect((0, 0))  # the kernel
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._lock = threading.Lock()
        self._seq = int.from_bytes(os.urandom(4), "little") or 1
        self._buf = bytearray(_RECV_BUF)
        self._view = memoryview(self._buf)
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # Per sendmsg the kernel queues one ack per request before we read any:
        # keep them within the receive buffer, or acks get dropped (ENOBUFS).
        self._chunk_msgs = max(1, rcvbuf // _ACK_TRUESIZE)
        self._chunk_bytes = max(4096, min(_MAX_CHUNK_BYTES, sndbuf // 2 - 64))

    # -- plumbing --

    def close(self) -> None:
        self._view.release()
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self, count: int = 1) -> int:
        seq = self._seq
        self._seq = (seq + count) & 0xFFFFFFFF or 1
        return seq

    def _recv(self) -> memoryview:
        try:
            n = self._sock.recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
        except BlockingIOError:  # SO_RCVTIMEO ran out
            raise NetlinkError(errno.ETIMEDOUT, "no reply from the kernel") from None
        except OSError as exc:  # ENOBUFS: the kernel dropped replies
            raise NetlinkError(exc.errno or errno.EIO, "receive failed") from None
        if n > len(self._buf):
            raise NetlinkDecodeError(f"reply of {n} bytes truncated")
        return self._view[:n]

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO, "send failed") from None

    def _request(self, mtype: int, nl_flags: int = 0, attrs: bytes = b"", /,
                 **header: int) -> list[tuple[int, memoryview]]:
        """Send one request and wait for its ack (or, for a dump, NLMSG_DONE).

        Returns the data messages as ``(type, body)``, bodies copied out of the
        receive buffer.  A kernel error raises NetlinkError.
        """
        payload = MSG_HEADERS[mtype].pack(**header) + attrs
        flags = nl_flags | NLM_F_REQUEST | NLM_F_ACK
        return self._exchange(
            lambda seq: _NLH.pack(_NLH.size + len(payload), mtype, flags, seq, 0) + payload,
            dump=(nl_flags & NLM_F_DUMP) == NLM_F_DUMP)

    def _exchange(self, encode: Callable[[int], bytes], *,
                  dump: bool) -> list[tuple[int, memoryview]]:
        """Send ``encode(seq)`` and collect its replies (see ``_request``)."""
        with self._lock:
            for _attempt in range(5):
                seq = self._next_seq()
                self._send(encode(seq))
                out, interrupted = self._collect(seq, dump)
                if not interrupted:
                    return out
            # The table kept changing under the dump; better an error than a wrong list.
            raise NetlinkError(errno.EAGAIN, "dump interrupted repeatedly")

    def _collect(self, seq: int, dump: bool) -> tuple[list[tuple[int, memoryview]], bool]:
        out: list[tuple[int, memoryview]] = []
        interrupted = False
        while True:
            for mtype, mflags, mseq, body in iter_messages(self._recv()):
                if mseq != seq:
                    continue  # left over from an earlier, abandoned request
                if mtype == NLMSG_ERROR:
                    err = decode_error(body, mflags)
                    if err is not None:
                        raise err
                    if not dump:
                        return out, interrupted
                elif mtype == NLMSG_DONE:
                    if len(body) >= 4 and (code := -_I32.unpack_from(body, 0)[0]) > 0:
                        raise NetlinkError(code, _error_text(body, mflags))
                    return out, interrupted or bool(mflags & NLM_F_DUMP_INTR)
                elif mtype not in (NLMSG_NOOP, NLMSG_OVERRUN):
                    interrupted |= bool(mflags & NLM_F_DUMP_INTR)
                    out.append((mtype, memoryview(bytes(body))))

    def _batch(self, msgs: Sequence[bytes], seq0: int, size: int = 0) -> list[int]:
        """Send pre-encoded requests (seq ``seq0 + i``) in chunks; one errno each.
        ``size``: every request is that long and asks for no ack (chunks by arithmetic)."""
        n = len(msgs)
        results = [_UNKNOWN] * n
        recv_into, buf, unpack = self._sock.recv_into, self._buf, _ERR.unpack_from
        i = 0
        while i < n:
            limit = min(n, i + self._chunk_msgs)
            if size:
                j = min(limit, i + max(1, self._chunk_bytes // size))
            else:
                j, total = i, 0
                while j < limit and (j == i or total + len(msgs[j]) <= self._chunk_bytes):
                    total += len(msgs[j])
                    j += 1
            # Only the chunk's last request asks for an ack: the kernel answers a request
            # without NLM_F_ACK only when it fails, and answers in order, so the last
            # ack closes the chunk and every request not reported failed is done.
            # (One ack per request cost a recv each: ~1 µs a route and, worse, a GIL
            # hand-off per route while the event loop thread is busy; profiled at 10,000
            # routes.)  The chunk still fits the receive buffer with every request
            # failing, so no error can be lost (an overflow would raise ENOBUFS).
            chunk = list(msgs[i:j - 1]) if size else \
                [_ack_flag(msg, False) for msg in msgs[i:j - 1]]
            chunk.append(_ack_flag(msgs[j - 1], True))
            self._send(b"".join(chunk))
            last = j - 1
            pending = True
            while pending:
                try:
                    got = recv_into(buf, len(buf), socket.MSG_TRUNC)
                except BlockingIOError:
                    raise NetlinkError(errno.ETIMEDOUT, "acks missing") from None
                except OSError as exc:
                    raise NetlinkError(exc.errno or errno.EIO, "receive failed") from None
                if got > len(buf):
                    raise NetlinkDecodeError(f"reply of {got} bytes truncated")
                off = 0
                while off < got:
                    if got - off < 16:
                        raise NetlinkDecodeError("trailing bytes shorter than nlmsghdr")
                    length = _U32.unpack_from(buf, off)[0]
                    if length < 16 or length > got - off:
                        raise NetlinkDecodeError(f"nlmsg_len {length} outside 16..{got - off}")
                    if length >= 20:
                        _l, mtype, _f, mseq, _p, err = unpack(buf, off)
                        k = (mseq - seq0) & 0xFFFFFFFF
                        if mtype == NLMSG_ERROR and i <= k < j and results[k] == _UNKNOWN:
                            if not 0 <= -err <= 4095:
                                raise NetlinkDecodeError(f"error code {err} is no errno")
                            results[k] = -err
                            if k == last:
                                pending = False
                    off += (length + 3) & ~3
            for k in range(i, j):
                if results[k] == _UNKNOWN:
                    results[k] = 0
            i = j
        return results

    # -- links --

    def link_index(self, name: str) -> int | None:
        """Index of the link called ``name`` (service-chosen names only), or None."""
        if not name or len(name.encode()) > 15 or "\0" in name or "/" in name:
            raise ValueError(f"bad interface name {name!r}")
        try:
            return self._get_link(nla_str(IFLA_IFNAME, name)).index
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise

    def link_info(self, ifindex: int) -> LinkInfo:
        return self._get_link(b"", index=_check_ifindex(ifindex))

    def _get_link(self, attrs: bytes, index: int = 0) -> LinkInfo:
        replies = self._request(RTM_GETLINK, 0,
                                attrs + nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS),
                                index=index)
        if len(replies) != 1 or replies[0][0] != RTM_NEWLINK:
            raise NetlinkDecodeError("expected one link message")
        return decode_link(replies[0][1])

    def link_list(self) -> list[LinkInfo]:
        """Every link of this network namespace."""
        replies = self._request(RTM_GETLINK, NLM_F_DUMP,
                                nla_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
        return [decode_link(body) for t, body in replies if t == RTM_NEWLINK]

    def link_set(self, ifindex: int, *, up: bool | None = None, mtu: int | None = None,
                 alias: str | None = None) -> None:
        attrs = b""
        if mtu is not None:
            if type(mtu) is not int or not 68 <= mtu <= 0xFFFF:
                raise ValueError(f"bad MTU {mtu!r}")
            attrs = nla_u32(IFLA_MTU, mtu)
        if alias is not None:
            if not 0 < len(alias.encode()) < 256 or "\0" in alias:
                raise ValueError(f"bad link alias {alias!r}")
            attrs += nla_str(IFLA_IFALIAS, alias)
        self._request(RTM_SETLINK, 0, attrs, index=_check_ifindex(ifindex),
                      flags=IFF_UP if up else 0, change=IFF_UP if up is not None else 0)

    def link_del(self, ifindex: int) -> None:
        self._request(RTM_DELLINK, 0, index=_check_ifindex(ifindex))

    # -- policy-routing rules --

    @staticmethod
    def _rule_attrs(priority: int, uid: int | None, table: int, suppress: int | None,
                    fwmark: int | None) -> bytes:
        for value, what in ((priority, "priority"), (uid or 0, "uid"), (table, "table"),
                            (suppress or 0, "suppress_prefixlength"), (fwmark or 0, "fwmark")):
            if type(value) is not int or not 0 <= value < 0xFFFFFFFF:
                raise ValueError(f"bad rule {what} {value!r}")
        attrs = (nla_u32(FRA_PRIORITY, priority) + nla_u32(FRA_TABLE, table)
                 + nla(FRA_PROTOCOL, bytes([RTPROT_ISERVICE])))
        if uid is not None:
            attrs += nla(FRA_UID_RANGE, struct.pack("=II", uid, uid))
        if suppress is not None:
            attrs += nla_u32(FRA_SUPPRESS_PREFIXLEN, suppress)
        if fwmark is not None:
            attrs += nla_u32(FRA_FWMARK, fwmark) + nla_u32(FRA_FWMASK, 0xFFFFFFFF)
        return attrs

    def rule_add(self, family: int, priority: int, uid: int | None, table: int,
                 suppress: int | None = None, fwmark: int | None = None) -> None:
        """``ip rule add [uidrange UID-UID] [fwmark M] lookup TABLE [suppress_prefixlength
        N] priority PRIORITY proto 158``."""
        self._request(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL,
                      self._rule_attrs(priority, uid, table, suppress, fwmark),
                      family=_check_family(family), action=FR_ACT_TO_TBL)

    def rule_del(self, family: int, priority: int, uid: int | None, table: int,
                 suppress: int | None = None, fwmark: int | None = None) -> None:
        """Delete exactly that rule (iservice's protocol included: never anyone else's)."""
        self._request(RTM_DELRULE, 0, self._rule_attrs(priority, uid, table, suppress, fwmark),
                      family=_check_family(family), action=FR_ACT_TO_TBL)

    def rule_del_ours(self, family: int, priority: int, table: int | None) -> None:
        """Delete iservice's rule (``proto 158``) at ``priority`` looking up ``table``,
        whatever it matches; one already gone is fine (the sweep of leftovers)."""
        attrs = nla_u32(FRA_PRIORITY, priority) + nla(FRA_PROTOCOL, bytes([RTPROT_ISERVICE]))
        if table is not None:
            attrs += nla_u32(FRA_TABLE, table)
        try:
            self._request(RTM_DELRULE, 0, attrs, family=_check_family(family),
                          action=FR_ACT_TO_TBL)
        except NetlinkError as exc:
            if exc.errno not in (errno.ENOENT, errno.ESRCH):
                raise

    def rule_list(self, family: int) -> list[tuple[int, int | None, int | None, int]]:
        """(priority, table, uid or None, protocol) of every rule of ``family``."""
        out = []
        for t, body in self._request(RTM_GETRULE, NLM_F_DUMP, family=_check_family(family)):
            if t != RTM_NEWRULE:
                continue
            a = parse_attrs(body, FIB_RULE_HDR.size)
            uid = struct.unpack_from("=I", a[FRA_UID_RANGE])[0] if FRA_UID_RANGE in a else None
            out.append((_u32(a[FRA_PRIORITY]) if FRA_PRIORITY in a else 0,
                        _u32(a[FRA_TABLE]) if FRA_TABLE in a else None, uid,
                        a[FRA_PROTOCOL][0] if FRA_PROTOCOL in a else 0))
        return out

    # -- addresses --

    @staticmethod
    def _addr_msg(address: IPAddress, prefix_len: int, peer: IPAddress | None) -> bytes:
        if not isinstance(address, IPv4Address | IPv6Address):
            raise TypeError(f"address must be an IPv4Address/IPv6Address, not {address!r}")
        if type(prefix_len) is not int or not 0 <= prefix_len <= address.max_prefixlen:
            raise ValueError(f"bad prefix length {prefix_len!r}")
        if peer is not None and (not isinstance(peer, IPv4Address | IPv6Address)
                                 or peer.version != address.version):
            raise ValueError(f"peer {peer!r} does not match {address}")
        # IFA_LOCAL is our end; IFA_ADDRESS the peer (point-to-point) or our end again.
        return (nla(IFA_LOCAL, address.packed)
                + nla(IFA_ADDRESS, (peer if peer is not None else address).packed))

    def addr_add(self, ifindex: int, address: IPAddress, prefix_len: int, *,
                 peer: IPAddress | None = None, noprefixroute: bool = False) -> None:
        """``noprefixroute``: the kernel adds no route for the address's prefix (the caller
        adds it where it belongs, e.g. a per-user table)."""
        attrs = self._addr_msg(address, prefix_len, peer)
        flags = 0
        if address.version == 6:
            # No duplicate address detection: the tunnel address is usable at once.
            flags = IFA_F_NODAD
        if noprefixroute:
            flags |= IFA_F_NOPREFIXROUTE
        if flags:
            attrs += nla_u32(IFA_FLAGS, flags)
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, attrs,
                      family=AF_INET if address.version == 4 else AF_INET6,
                      prefixlen=prefix_len, flags=flags & 0xFF, index=_check_ifindex(ifindex))

    def addr_del(self, ifindex: int, address: IPAddress, prefix_len: int, *,
                 peer: IPAddress | None = None) -> None:
        attrs = self._addr_msg(address, prefix_len, peer)
        self._request(RTM_DELADDR, 0, attrs,
                      family=AF_INET if address.version == 4 else AF_INET6,
                      prefixlen=prefix_len, index=_check_ifindex(ifindex))

    def addr_list(self, ifindex: int | None = None, family: int = 0) -> list[AddrInfo]:
        families = (AF_INET, AF_INET6) if family == 0 else (_check_family(family),)
        index = 0 if ifindex is None else _check_ifindex(ifindex)
        out = []
        for fam in families:
            for mtype, body in self._request(RTM_GETADDR, NLM_F_DUMP, family=fam, index=index):
                if mtype != RTM_NEWADDR:
                    continue
                info = decode_addr(body)
                if info.family == fam and (ifindex is None or info.index == ifindex):
                    out.append(info)
        return out

    # -- routes --

    def route_add(self, route: Route) -> None:
        self._single_route(route, True)

    def route_del(self, route: Route) -> None:
        """Delete ``route``; the kernel matches ``route.protocol``, so only one of ours goes.

        ``metric`` None matches any metric, ``scope`` None any scope; protocol 0 (which
        the kernel would take as "any protocol") is refused.
        """
        self._single_route(route, False)

    def _single_route(self, route: Route, add: bool) -> None:
        _check_route_op(add, route)
        try:  # one round trip, so the kernel's extended-ack text reaches the error
            self._exchange(lambda seq: encode_route(route, add, seq), dump=False)
        except NetlinkDecodeError:
            raise
        except NetlinkError as exc:
            what = f"{'add' if add else 'delete'} route {route.dst}"
            raise NetlinkError(exc.errno or errno.EIO,
                               f"{what}: {exc.kernel_text}" if exc.kernel_text
                               else what) from None

    def routes_apply(self, ops: Sequence[tuple[bool, Route | RouteSpec]]) -> list[int]:
        """Add (True) or delete (False) many routes; one errno per op, 0 = done, in order.

        The fast path: requests go out pipelined, up to ~3,000 per sendmsg (256 KiB), and
        every ack is collected before the next chunk.  Ops are independent: one failing
        (EEXIST on add, ESRCH on delete, ENODEV) does not stop the others.  If this
        raises instead (socket error, lost acks), the outcome of the unacknowledged ops
        is unknown: list the routes to reconcile.

        Measured here (bench/bench_netlink.py: fresh netns, routes via a gateway on a tun,
        metric set, best of 5; Python 3.11, kernel 6.18, 2 vCPUs):
            IPv4  1k/10k/30k routes: add 187k/170k/178k routes/s, delete 253k/197k/203k/s
            IPv6  1k/10k/30k routes: add 174k/156k/149k routes/s, delete 228k/199k/191k/s
        i.e. 10,000 routes in ~0.06 s each way (SPEC: plain socket 41-55k/s, pyroute2 3.8k/s);
        building + validating the Route objects adds 320k-650k/s on top.
        """
        checked = []
        for add, route in ops:
            _check_route_op(add, route)
            checked.append((add, route))
        with self._lock:
            seq0 = self._next_seq(len(checked))
            msgs = [encode_route_spec(route, add, (seq0 + k) & 0xFFFFFFFF)
                    if isinstance(route, RouteSpec)
                    else encode_route(route, add, (seq0 + k) & 0xFFFFFFFF, ack=False)
                    for k, (add, route) in enumerate(checked)]
            return self._batch(msgs, seq0)

    def tun_routes_add(self, oif: int, table: int, version: int, values: Sequence[int],
                       plens: Sequence[int]) -> list[int]:
        """``routes_apply`` adding ``RouteSpec(network(values[i], plens[i]), oif, None,
        None, table)`` for each i (values the policy checked), without the RouteSpecs."""
        if version not in (4, 6) or not 0 < oif <= 0x7FFFFFFF or not 0 < table <= 0xFFFFFFFF:
            raise ValueError(f"bad tun routes: version {version}, oif {oif}, table {table}")
        with self._lock:
            seq0 = self._next_seq(len(values))
            msgs, size = encode_tun_routes(oif, table, version, values, plens, seq0)
            return self._batch(msgs, seq0, size)

    def route_list(self, family: int, table: int = RT_TABLE_MAIN) -> list[Route]:
        """Routes of ``family`` in ``table`` (cloned cache entries left out)."""
        _check_family(family)
        if not 0 < table <= 0xFFFFFFFF:
            raise ValueError(f"bad table {table!r}")
        attrs = nla_u32(RTA_TABLE, table) if table > 255 else b""
        try:
            replies = self._request(RTM_GETROUTE, NLM_F_DUMP, attrs, family=family,
                                    table=table if table <= 255 else 0)
        except NetlinkError as exc:
            if exc.errno == errno.ENOENT:  # strict dump of a table that does not exist
                return []
            raise
        out = []
        for mtype, body in replies:
            if mtype != RTM_NEWROUTE:
                continue
            if RTMSG.unpack(body)[8] & RTM_F_CLONED:
                continue
            route = decode_route(body)
            if route.family == family and route.table == table:
                out.append(route)
        return out

    def routes_of_protocol(self, family: int, protocol: int = RTPROT_ISERVICE) -> list[Route]:
        """Every route of ``family`` in every table with ``rtm_protocol == protocol``
        (iservice's own: the sweep of unjournaled leftovers)."""
        _check_family(family)
        out = []
        for mtype, body in self._request(RTM_GETROUTE, NLM_F_DUMP, family=family):
            if mtype != RTM_NEWROUTE:
                continue
            fields = RTMSG.unpack(body)
            if fields[5] != protocol or fields[8] & RTM_F_CLONED:
                continue  # not decoded: most routes are not ours
            route = decode_route(body)
            if route.family == family:
                out.append(route)
        return out

    def route_get(self, dst: IPAddress) -> Route | None:
        """The route the kernel would use for ``dst`` (its gateway and oif), or None."""
        if not isinstance(dst, IPv4Address | IPv6Address):
            raise TypeError(f"route_get wants an address, not {dst!r}")
        family = AF_INET if dst.version == 4 else AF_INET6
        try:
            replies = self._request(RTM_GETROUTE, 0, nla(RTA_DST, dst.packed),
                                    family=family, dst_len=dst.max_prefixlen)
        except NetlinkError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None
            raise
        for mtype, body in replies:
            if mtype == RTM_NEWROUTE:
                return decode_route(body)
        raise NetlinkDecodeError("RTM_GETROUTE answered without a route")

    def default_route(self, family: int) -> Route | None:
        """The main table's unicast default route with the lowest metric, or None."""
        best = None
        for r in self.route_list(family, RT_TABLE_MAIN):
            if r.dst.prefixlen == 0 and r.route_type == RTN_UNICAST and (
                    best is None or (r.metric or 0) < (best.metric or 0)):
                best = r
        return best

    # -- neighbours --

    def neigh_list(self, ifindex: int, family: int) -> list[Neighbour]:
        _check_family(family)
        out = []
        for mtype, body in self._request(RTM_GETNEIGH, NLM_F_DUMP,
                                         nla_u32(NDA_IFINDEX, _check_ifindex(ifindex)),
                                         family=family):
            n = decode_neigh(body) if mtype == RTM_NEWNEIGH else None
            if n is not None and n.ifindex == ifindex and n.family == family:
                out.append(n)
        return out

    def neigh_flush(self, ifindex: int, family: int) -> int:
        """Delete every neighbour entry of ``family`` on the link; returns how many went."""
        entries = self.neigh_list(ifindex, family)
        if not entries:
            return 0
        with self._lock:
            seq0 = self._next_seq(len(entries))
            msgs = []
            for k, n in enumerate(entries):
                payload = NDMSG.pack(family=family, ifindex=ifindex) + nla(NDA_DST, n.dst.packed)
                msgs.append(_NLH.pack(_NLH.size + len(payload), RTM_DELNEIGH,
                                      NLM_F_REQUEST | NLM_F_ACK, (seq0 + k) & 0xFFFFFFFF, 0)
                            + payload)
            results = self._batch(msgs, seq0)
        # ENOENT: the entry expired between dump and delete; nothing to count.
        for code in results:
            if code not in (0, errno.ENOENT):
                raise NetlinkError(code, "neighbour delete")
        return results.count(0)


__all__ = [
    "RTN_UNICAST",
    "RTPROT_ISERVICE",
    "RT_SCOPE_LINK",
    "RT_SCOPE_UNIVERSE",
    "RT_TABLE_MAIN",
    "AddrInfo",
    "IPAddress",
    "IPNetwork",
    "LinkInfo",
    "Neighbour",
    "NetlinkError",
    "Route",
    "RouteSpec",
    "Rtnl",
]
