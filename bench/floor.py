"""The pure rtnetlink floor (issue 16 item 2): the route phase's routes installed with
nothing but batched rtnetlink from Python.

A plain ``AF_NETLINK`` socket in the client namespace; every route is a ``struct``-packed
``RTM_NEWROUTE`` (destination, gateway, output interface: the shape of the routes the
service installs for openvpn's pushed routes); requests go out as iservice's
``linux/netlink.py`` sends them: up to 256 KiB per ``sendmsg``, only each chunk's last
request asks for an ack (the kernel answers the others only when they fail), the chunk's
ack read before the next chunk.  No journal, no policy, no channel: the least any Python
program pays to install the routes.  The routes go on a tun of their own (persistent,
no process attached), deleted with its routes afterwards.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import ip_network

from tests.lab import Lab

from iservice.linux.netlink import run_in_netns

NLMSG_ERROR = 2
RTM_NEWROUTE = 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
CHUNK = 256 * 1024  # bytes of requests per sendmsg at most (as linux/netlink.py)
SOCK_BUF = 8 * 1024 * 1024  # SO_SNDBUFFORCE/SO_RCVBUFFORCE (root), as linux/netlink.py
ACK_TRUESIZE = 1280  # what one error ack may take of the receive buffer
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33

_HEAD = struct.Struct("=IHHII" "BBBBBBBBI")  # nlmsghdr + rtmsg
_ATTR4 = struct.Struct("=HH4s" "HH4s" "HHI")  # RTA_DST, RTA_GATEWAY, RTA_OIF
_ATTR6 = struct.Struct("=HH16s" "HH16s" "HHI")
_ERR = struct.Struct("=IHHIIi")


@dataclass
class FloorTime:
    total: float  # seconds: encoding the requests + installing them (first send → last ack)
    kernel: float  # seconds: first send → last ack (the requests already encoded)


def encode(prefixes: list[str], gateway: str, oif: int, seq0: int) -> list[bytes]:
    out = []
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
    for k, text in enumerate(prefixes):
        net = ip_network(text)
        v6 = net.version == 6
        attrs = (_ATTR6 if v6 else _ATTR4).pack(
            20 if v6 else 8, RTA_DST, net.network_address.packed,
            20 if v6 else 8, RTA_GATEWAY, socket.inet_pton(
                socket.AF_INET6 if v6 else socket.AF_INET, gateway),
            8, RTA_OIF, oif)
        out.append(_HEAD.pack(_HEAD.size + len(attrs), RTM_NEWROUTE, flags, seq0 + k, 0,
                              socket.AF_INET6 if v6 else socket.AF_INET, net.prefixlen, 0, 0,
                              RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
                   + attrs)
    return out


def install(sock: socket.socket, msgs: list[bytes], seq0: int) -> int:
    """Send ``msgs`` in chunks, the last of each with NLM_F_ACK; the number that failed.
    A chunk fits the send buffer, and its acks (every request failing) the receive
    buffer."""
    chunk_bytes = min(CHUNK, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 64)
    chunk_msgs = max(1, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // ACK_TRUESIZE)
    failed = 0
    buf = bytearray(1 << 16)
    i = 0
    while i < len(msgs):
        j, size = i, 0
        limit = min(len(msgs), i + chunk_msgs)
        while j < limit and (j == i or size + len(msgs[j]) <= chunk_bytes):
            size += len(msgs[j])
            j += 1
        last = bytearray(msgs[j - 1])
        struct.pack_into("=H", last, 6, struct.unpack_from("=H", last, 6)[0] | NLM_F_ACK)
        sock.sendall(b"".join([*msgs[i:j - 1], bytes(last)]))
        want = seq0 + j - 1
        while True:
            got = sock.recv_into(buf)
            off, done = 0, False
            while off + 20 <= got:
                ln, typ, _fl, seq, _pid, err = _ERR.unpack_from(buf, off)
                if typ == NLMSG_ERROR:
                    if err:
                        failed += 1
                    if seq == want:
                        done = True
                off += (ln + 3) & ~3
            if done:
                break
        i = j
    return failed


def measure(lab: Lab, prefixes: list[str], tag: str) -> FloorTime:
    """Install ``prefixes`` on a fresh tun ``tag`` in the client namespace;
    the tun (and so every route) is deleted afterwards."""
    ns = lab.client_ns
    v6 = ":" in prefixes[0]
    lab.ns_run(ns, ["ip", "tuntap", "add", "dev", tag, "mode", "tun"])
    try:
        if v6:
            lab.ns_run(ns, ["ip", "-6", "addr", "add", "fd00:251::2/64", "dev", tag, "nodad"])
        else:
            lab.ns_run(ns, ["ip", "addr", "add", "10.251.0.2/24", "dev", tag])
        lab.ns_run(ns, ["ip", "link", "set", tag, "up"])
        gateway = "fd00:251::1" if v6 else "10.251.0.1"

        def make() -> tuple[socket.socket, int]:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              socket.NETLINK_ROUTE)
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCK_BUF)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCK_BUF)
            s.bind((0, 0))
            return s, socket.if_nametoindex(tag)
        sock, oif = run_in_netns(f"/run/netns/{ns}", make)
        with sock:
            seq0 = 1
            t0 = time.perf_counter()
            msgs = encode(prefixes, gateway, oif, seq0)
            t1 = time.perf_counter()
            failed = install(sock, msgs, seq0)
            t2 = time.perf_counter()
        if failed:
            raise OSError(errno.EIO, f"floor: {failed} of {len(prefixes)} routes refused")
        return FloorTime(total=t2 - t0, kernel=t2 - t1)
    finally:
        lab.ns_run(ns, ["ip", "link", "del", tag], check=False)
