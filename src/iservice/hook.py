"""openvpn's script hook: its environment → openvpn-msg.h requests on the channel.

openvpn 2.6 on Linux has no ``--msg-channel``, so iservice runs it with
``--ifconfig-noexec --route-noexec`` and this hook as ``--up``, ``--route-up``,
``--route-pre-down`` and ``--down``.  The hook runs as the user (no privileges),
inherits the session channel as descriptor ``argv[1]``, and sends the same
messages openvpn.exe sends the Windows service:

* ``up``: set_mtu, add_address (IPv4 subnet, net30 or p2p; IPv6)
* ``route-up``: add_route for every ``route_*`` / ``route_ipv6_*`` variable
* ``route-pre-down``: del_route for the same routes
* ``down``: del_address for the addresses

Acks are read while sending (pipelined), so thousands of routes cost one stream,
not one round trip each.  The hook exits 1 when the service refused anything, so
openvpn reports the failure (an ``--up`` failure stops openvpn).  Nothing here is
trusted by the service: it re-checks every message.
"""

from __future__ import annotations

import dataclasses
import os
import random
import selectors
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from iservice.wire import msg as m

Env = Mapping[str, str]


def _iface(env: Env) -> m.Interface:
    dev = env.get("dev", "")
    try:
        index = socket.if_nametoindex(dev)
    except OSError:
        index = m.IFACE_INDEX_INVALID
    return m.Interface(index=index, name=dev)


def _numbered(env: Env, prefix: str) -> Iterator[int]:
    n = 1
    while f"{prefix}{n}" in env:
        yield n
        n += 1


def _v4_address_messages(env: Env, kind: m.MsgType, iface: m.Interface) -> list[m.Message]:
    local = env.get("ifconfig_local")
    if not local:
        return []
    addr = IPv4Address(local)
    out: list[m.Message] = []
    if env.get("ifconfig_netmask"):
        prefix = IPv4Network(f"0.0.0.0/{env['ifconfig_netmask']}").prefixlen
        out.append(m.AddressMsg(kind, 0, addr, prefix, iface))
    elif env.get("ifconfig_remote"):
        remote = IPv4Address(env["ifconfig_remote"])
        if IPv4Network(f"{addr}/30", strict=False) == IPv4Network(f"{remote}/30", strict=False):
            out.append(m.AddressMsg(kind, 0, addr, 30, iface))  # net30
        else:  # p2p: local/32 plus a host route to the peer through the tun
            route_kind = m.MsgType.ADD_ROUTE if kind == m.MsgType.ADD_ADDRESS \
                else m.MsgType.DEL_ROUTE
            out.append(m.AddressMsg(kind, 0, addr, 32, iface))
            out.append(m.RouteMsg(route_kind, 0, remote, 32, IPv4Address(0), iface, -1))
    else:
        out.append(m.AddressMsg(kind, 0, addr, 32, iface))
    return out


def _v6_address_messages(env: Env, kind: m.MsgType, iface: m.Interface) -> list[m.Message]:
    local = env.get("ifconfig_ipv6_local")
    if not local:
        return []
    bits = int(env.get("ifconfig_ipv6_netbits", "128"))
    return [m.AddressMsg(kind, 0, IPv6Address(local), bits, iface)]


def route_messages(env: Env, kind: m.MsgType) -> list[m.Message]:
    """One message per ``route_*`` variable; routes via the net gateway bypass the tun."""
    iface = _iface(env)
    unset = m.Interface(index=m.IFACE_INDEX_INVALID, name="")
    net_gw = env.get("route_net_gateway")
    out: list[m.Message] = []
    for n in _numbered(env, "route_network_"):
        network = env[f"route_network_{n}"]
        netmask = env.get(f"route_netmask_{n}", "255.255.255.255")
        net = IPv4Network(f"{network}/{netmask}", strict=False)
        gw_text = env.get(f"route_gateway_{n}", "")
        metric = int(env.get(f"route_metric_{n}", "-1") or "-1")
        if net_gw and gw_text == net_gw:
            out.append(m.RouteMsg(kind, 0, net.network_address, net.prefixlen,
                                  IPv4Address(gw_text), unset, metric))
        else:
            gw = IPv4Address(gw_text) if gw_text else IPv4Address(0)
            out.append(m.RouteMsg(kind, 0, net.network_address, net.prefixlen, gw, iface, metric))
    for n in _numbered(env, "route_ipv6_network_"):
        net6 = ip_network(env[f"route_ipv6_network_{n}"], strict=False)
        gw6_text = env.get(f"route_ipv6_gateway_{n}", "")
        gw6 = ip_address(gw6_text) if gw6_text else IPv6Address(0)
        metric = int(env.get(f"route_ipv6_metric_{n}", "-1") or "-1")
        assert isinstance(net6, IPv6Network)
        out.append(m.RouteMsg(kind, 0, net6.network_address, net6.prefixlen, gw6, iface, metric))
    return out


def messages_for(env: Env) -> list[m.Message]:
    """The requests one hook invocation sends, from openvpn's script environment."""
    script = env.get("script_type", "")
    iface = _iface(env)
    if script == "up":
        out: list[m.Message] = []
        mtu = env.get("tun_mtu")
        if mtu:
            out.append(m.SetMtuMsg(m.MsgType.SET_MTU, 0, iface, socket.AF_INET, int(mtu)))
        out += _v4_address_messages(env, m.MsgType.ADD_ADDRESS, iface)
        out += _v6_address_messages(env, m.MsgType.ADD_ADDRESS, iface)
        return out
    if script == "route-up":
        return route_messages(env, m.MsgType.ADD_ROUTE)
    if script == "route-pre-down":
        return route_messages(env, m.MsgType.DEL_ROUTE)
    if script == "down":
        return (_v6_address_messages(env, m.MsgType.DEL_ADDRESS, iface)
                + _v4_address_messages(env, m.MsgType.DEL_ADDRESS, iface))
    return []


def _with_ids(msgs: Sequence[m.Message], first: int) -> list[tuple[int, bytes]]:
    return [(first + i, m.encode_message(dataclasses.replace(msg, message_id=first + i)))
            for i, msg in enumerate(msgs)]


def exchange(sock: socket.socket, msgs: Sequence[m.Message]) -> dict[int, int]:
    """Send every message, reading acks as they come; returns {message_id: error}."""
    first = random.randrange(1, 1 << 30)  # stale acks of an earlier hook never match
    todo = _with_ids(msgs, first)
    pending = {mid for mid, _ in todo}
    results: dict[int, int] = {}
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    i = 0
    try:
        while pending:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if i < len(todo) else 0)
            sel.modify(sock, events)
            ready_list = sel.select(timeout=60)
            if not ready_list:
                raise TimeoutError("the service did not answer within 60 s")
            for _key, ready in ready_list:
                if ready & selectors.EVENT_WRITE:
                    while i < len(todo):
                        try:
                            sock.send(todo[i][1])
                        except BlockingIOError:
                            break
                        i += 1
                if ready & selectors.EVENT_READ:
                    while True:
                        try:
                            raw = sock.recv(m.ACK_SIZE + 1)
                        except BlockingIOError:
                            break
                        if not raw:
                            raise ConnectionError("the service closed the channel")
                        ack = m.decode_ack(raw)
                        if ack.message_id in pending:
                            pending.discard(ack.message_id)
                            results[ack.message_id] = ack.error_number
    finally:
        sel.close()
    return {mid - first: err for mid, err in results.items()}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    try:
        fd = int(args[0])
    except (IndexError, ValueError):
        print("iservice-hook: usage: iservice-hook CHANNEL_FD [openvpn's arguments]",
              file=sys.stderr)
        return 2
    try:
        msgs = messages_for(env)
    except (ValueError, KeyError) as exc:
        print(f"iservice-hook: bad openvpn environment: {exc}", file=sys.stderr)
        return 1
    if not msgs:
        return 0
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        print(f"iservice-hook: no service channel on fd {fd}: {exc}", file=sys.stderr)
        return 1
    try:
        results = exchange(sock, msgs)
    except (OSError, ConnectionError) as exc:
        print(f"iservice-hook: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    failed = 0
    for i, msg in enumerate(msgs):
        err = results.get(i, -1)
        if err:
            failed += 1
            print(f"iservice-hook: {msg.type.name.lower()} refused by the service: "
                  f"error 0x{err & 0xFFFFFFFF:08x}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
