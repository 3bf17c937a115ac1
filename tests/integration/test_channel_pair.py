"""The session channel's buffers: room for ~1,600 queued requests (linux.channel.channel_pair)."""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address

import pytest

from iservice.linux.channel import CHANNEL_SNDBUF, channel_pair
from iservice.wire import msg as m


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="SO_SNDBUFFORCE needs CAP_NET_ADMIN (root)")
def test_openvpn_side_can_queue_a_thousand_routes_without_the_service_reading() -> None:
    ours, theirs = channel_pair()
    try:
        for end in (ours, theirs):
            assert end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * CHANNEL_SNDBUF
        theirs.setblocking(False)
        raw = m.encode_message(m.RouteMsg(m.MsgType.ADD_ROUTE, 1, IPv4Address("10.0.0.0"), 8,
                                          IPv4Address(0), m.Interface(7, "istun1"), -1))
        sent = 0
        try:
            while sent < 5000:
                theirs.send(raw)
                sent += 1
        except BlockingIOError:
            pass
        assert sent >= 1000  # the default buffer took ~167
    finally:
        ours.close()
        theirs.close()
