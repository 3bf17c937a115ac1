"""The session channel (SPEC §5): a SEQPACKET socket pair, many messages per system call.

The service keeps one end; openvpn inherits the other (its plugin, or the hook script,
writes ``openvpn-msg.h`` requests there and reads the acks).  ``reader``/``sender``
batch many messages per call (``mmsg``: ``recvmmsg``/``sendmmsg``).
"""

from __future__ import annotations

import contextlib
import socket

from iservice.linux import mmsg
from iservice.linux.netlink import SO_SNDBUFFORCE

CHANNEL_SNDBUF = 1 << 20  # bytes per direction, as asked (the kernel counts twice that)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """The session channel: a SEQPACKET pair (the service's end, openvpn's end).

    Every message is charged to its sender as a whole skb (~1.2 KiB for a 328-byte
    route), so the default send buffer (208 KiB) holds only ~167 requests: openvpn's
    side stalled every 167 routes until the service woke up and read them (measured:
    10,000 routes came as ~60 batches with idle gaps between).  A larger buffer lets
    ~1,600 requests (and ~3,000 acks the other way) queue; it needs CAP_NET_ADMIN
    (SO_SNDBUFFORCE), else the default stays.  It bounds what one session can make the
    kernel hold for it at 2 MiB per direction.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        with contextlib.suppress(OSError):
            end.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, CHANNEL_SNDBUF)
    return ours, theirs


def reader(sock: socket.socket, size: int) -> mmsg.BatchReader:
    return mmsg.BatchReader(sock, size)


def sender(sock: socket.socket, size: int) -> mmsg.BatchSender:
    return mmsg.BatchSender(sock, size)
