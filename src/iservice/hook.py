"""openvpn's script hook: its environment → openvpn-msg.h requests on the channel.

openvpn 2.6 on Linux has no ``--msg-channel``, so iservice runs it with
``--ifconfig-noexec --route-noexec`` and this hook as ``--up``, ``--route-up``,
``--route-pre-down`` and ``--down``.  The hook runs as the user (no privileges),
inherits the session channel as descriptor ``argv[1]``, and sends the same
messages openvpn.exe sends the Windows service:

* ``up``: set_mtu, add_address (IPv4 subnet, net30 or p2p; IPv6), then DNS:
  add_nrpt_cfg from the ``dns_*`` variables of ``--dns`` (servers, resolve
  domains = split DNS, search domains, DNSSEC), else add_dns_cfg per family from
  ``foreign_option_N`` ``dhcp-option DNS|DNS6|DOMAIN|DOMAIN-SEARCH``, then
  register_dns; and add_wfp_block when the session asks for a kill switch
  (``--setenv ISERVICE_KILL_SWITCH 1``: flag 1) or ``block-outside-dns`` is in
  force (flag 2).  The block is never deleted by the hook: it holds across
  reconnects and goes with the session.
* ``route-up``: add_route for every ``route_*`` / ``route_ipv6_*`` variable, and for
  ``redirect-gateway`` (IPv4) the host route to the VPN server via the previous
  default gateway then 0.0.0.0/1 and 128.0.0.0/1 through the tunnel.  (openvpn
  lists IPv6 redirection, ``::/3 2000::/4 3000::/4 fc00::/7``, and block-local's
  routes among the ``route_*`` variables itself.)  Whether redirect-gateway is in
  force comes from ``route_redirect_gateway_ipv4/ipv6`` (openvpn ≥ 2.7) or else
  from the facts the service hands over (``iservice.facts``; openvpn 2.6).
* ``route-pre-down``: del_route for the same routes
* ``down``: del_nrpt_cfg / del_dns_cfg, then del_address for the addresses

Acks are read while sending (pipelined), so thousands of routes cost one stream,
not one round trip each.  The hook exits 1 when the service refused anything, so
openvpn reports the failure (an ``--up`` failure stops openvpn).  Nothing here is
trusted by the service: it re-checks every message.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TYPE_CHECKING

from iservice.wire import msg as m

if TYPE_CHECKING:
    from iservice.policy.redirect import Facts

Env = Mapping[str, str]


def _int(text: str) -> int:
    """A decimal number as openvpn writes one: ASCII digits, an optional minus.

    Stricter than ``int()`` (which also takes blanks, ``+``, ``1_000`` and other
    scripts' digits) so that the C plugin (``plugin/iservice_plugin.c``), which must
    send exactly what this module computes, can parse numbers the same way.
    """
    if not text.isascii() or not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError(f"{text!r} is not a decimal number")
    return int(text)


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
    bits = _int(env.get("ifconfig_ipv6_netbits", "128"))
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
        metric = _int(env.get(f"route_metric_{n}", "-1") or "-1")
        if net_gw and gw_text == net_gw:
            out.append(m.RouteMsg(kind, 0, net.network_address, net.prefixlen,
                                  IPv4Address(gw_text), unset, metric))
        else:
            gw = IPv4Address(gw_text) if gw_text else IPv4Address(0)
            out.append(m.RouteMsg(kind, 0, net.network_address, net.prefixlen, gw, iface, metric))
    net_gw6 = env.get("net_gateway_ipv6")
    for n in _numbered(env, "route_ipv6_network_"):
        net6 = IPv6Network(env[f"route_ipv6_network_{n}"], strict=False)
        gw6_text = env.get(f"route_ipv6_gateway_{n}", "")
        gw6 = ip_address(gw6_text) if gw6_text else IPv6Address(0)
        metric = _int(env.get(f"route_ipv6_metric_{n}", "-1") or "-1")
        # The host route to an IPv6 VPN server under redirect-gateway ipv6 goes via
        # the previous default gateway, like the IPv4 net_gateway routes.
        via = unset if net_gw6 and gw6_text and ip_address(net_gw6) == gw6 else iface
        out.append(m.RouteMsg(kind, 0, net6.network_address, net6.prefixlen, gw6, via, metric))
    return out


def _facts(env: Env) -> Facts:
    """What the service knows (redirect-gateway, block-outside-dns) for openvpn 2.6."""
    from iservice.policy.redirect import FACTS_ENV, decode_facts
    try:
        return decode_facts(os.pread(_int(env[FACTS_ENV]), 65536, 0))
    except (KeyError, ValueError, OSError, OverflowError):
        from iservice.policy.redirect import Facts
        return Facts()


def redirect_messages(env: Env, kind: m.MsgType) -> list[m.Message]:
    """The IPv4 full tunnel (``redirect-gateway def1``): the bypass host route to the
    server first, then 0/1 and 128/1 through the tunnel (deleted in reverse order)."""
    from iservice.policy.redirect import Redirect
    if "route_redirect_gateway_ipv4" in env or "route_redirect_gateway_ipv6" in env:
        redirect: Redirect | None = Redirect(  # openvpn ≥ 2.7 says it itself
            ipv4=env.get("route_redirect_gateway_ipv4", "0") in ("1", "2"),
            ipv6=env.get("route_redirect_gateway_ipv6", "0") in ("1", "2"))
    else:
        redirect = _facts(env).redirect
    if redirect is None:
        return []
    iface = _iface(env)
    unset = m.Interface(index=m.IFACE_INDEX_INVALID, name="")
    out: list[m.Message] = []
    trusted = env.get("trusted_ip6") or env.get("trusted_ip", "")
    net_gw = env.get("net_gateway_ipv6") if ":" in trusted else env.get("route_net_gateway")
    wants = redirect.ipv6 if ":" in trusted else redirect.ipv4
    if trusted and net_gw and wants and not redirect.local:
        host = ip_address(trusted)
        out.append(m.RouteMsg(kind, 0, host, host.max_prefixlen, ip_address(net_gw), unset, -1))
    if redirect.ipv4:
        vpn_gw = IPv4Address(env.get("route_vpn_gateway") or 0)
        for half in ("0.0.0.0", "128.0.0.0"):
            out.append(m.RouteMsg(kind, 0, IPv4Address(half), 1, vpn_gw, iface, -1))
    return out if kind == m.MsgType.ADD_ROUTE else out[::-1]


def _clean_domains(names: Sequence[str]) -> str:
    """A comma list that fits the 512-byte field, without names the service would refuse
    (a pushed typo must not take the whole DNS configuration down)."""
    from iservice.policy.dns import BadDnsValue, parse_domain
    out: list[str] = []
    for name in names:
        try:
            clean = parse_domain(name)
        except BadDnsValue:
            print(f"iservice-hook: ignoring the domain {name!r}", file=sys.stderr)
            continue
        if clean not in out and len(",".join([*out, clean])) < m.DOMAINS_SIZE:
            out.append(clean)
    return ",".join(out)


def _servers(texts: Sequence[str]) -> list[IPv4Address | IPv6Address]:
    from iservice.policy.dns import BadDnsValue, parse_server
    out: list[IPv4Address | IPv6Address] = []
    for text in texts:
        try:
            addr = parse_server(text)
        except BadDnsValue:
            print(f"iservice-hook: ignoring the DNS server {text!r}", file=sys.stderr)
            continue
        if addr not in out:
            out.append(addr)
    return out


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is True, int("²") fails


def dns_messages(env: Env, add: bool) -> list[m.Message]:
    """add/del_nrpt_cfg from ``--dns`` (``dns_*``), else add/del_dns_cfg per family from
    the ``dhcp-option`` foreign options (openvpn 2.6 turns ``--dns`` into foreign
    options too: the ``dns_*`` variables win)."""
    iface = _iface(env)
    server_ids = sorted({int(k.split("_")[2]) for k in env
                         if k.startswith("dns_server_") and _digits(k.split("_")[2])})
    for n in server_ids:  # the first server (lowest number) with an address
        p = f"dns_server_{n}_"
        addrs = _servers([env[f"{p}address_{i}"] for i in _numbered(env, f"{p}address_")])
        if not addrs:
            continue
        kind = m.MsgType.ADD_NRPT_CFG if add else m.MsgType.DEL_NRPT_CFG
        resolve = _clean_domains([env[f"{p}resolve_domain_{i}"]
                                  for i in _numbered(env, f"{p}resolve_domain_")])
        search = _clean_domains([env[f"dns_search_domain_{i}"]
                                 for i in _numbered(env, "dns_search_domain_")])
        return [m.NrptCfgMsg(kind, 0, iface, tuple(str(a) for a in addrs[:m.NRPT_ADDR_NUM]),
                             resolve, search, env.get(f"{p}dnssec", "") == "yes")]
    servers: list[str] = []
    domains: list[str] = []
    for n in _numbered(env, "foreign_option_"):
        words = env[f"foreign_option_{n}"].split()
        if len(words) < 3 or words[0] != "dhcp-option":
            continue
        opt = words[1].upper()
        if opt in ("DNS", "DNS6"):
            servers.append(words[2])
        elif opt in ("DOMAIN", "ADAPTER_DOMAIN_SUFFIX", "DOMAIN-SEARCH"):
            domains.append(" ".join(words[2:]))  # one name; blanks make it invalid
    addrs = _servers(servers)
    domain_list = _clean_domains(domains)
    kind = m.MsgType.ADD_DNS_CFG if add else m.MsgType.DEL_DNS_CFG
    out: list[m.Message] = []
    v4 = tuple(a for a in addrs if a.version == 4)[:m.MAX_DNS_ADDRS]
    v6 = tuple(a for a in addrs if a.version == 6)[:m.MAX_DNS_ADDRS]
    if v4 or domain_list:
        out.append(m.DnsCfgMsg(kind, 0, iface, domain_list, socket.AF_INET, v4))
    if v6:
        out.append(m.DnsCfgMsg(kind, 0, iface, "", socket.AF_INET6, v6))
    return out


def block_messages(env: Env) -> list[m.Message]:
    """add_wfp_block: flag 1 when the session asks for a kill switch, 2 for
    block-outside-dns (from the facts: openvpn 2.6 does not pass it on)."""
    from iservice.policy.redirect import KILL_SWITCH_ENV
    flags = 0
    if env.get(KILL_SWITCH_ENV, "").strip().lower() in ("1", "yes", "true", "on"):
        flags |= m.WFP_BLOCK_LOCAL
    if _facts(env).block_outside_dns:
        flags |= m.WFP_BLOCK_DNS
    return [m.WfpBlockMsg(m.MsgType.ADD_WFP_BLOCK, 0, flags, _iface(env))] if flags else []


def messages_for(env: Env) -> list[m.Message]:
    """The requests one hook invocation sends, from openvpn's script environment."""
    script = env.get("script_type", "")
    iface = _iface(env)
    if script == "up":
        out: list[m.Message] = []
        mtu = env.get("tun_mtu")
        if mtu:
            out.append(m.SetMtuMsg(m.MsgType.SET_MTU, 0, iface, socket.AF_INET, _int(mtu)))
        out += _v4_address_messages(env, m.MsgType.ADD_ADDRESS, iface)
        out += _v6_address_messages(env, m.MsgType.ADD_ADDRESS, iface)
        dns = dns_messages(env, add=True)
        if dns:
            out += [*dns, m.RegisterDnsMsg(m.MsgType.REGISTER_DNS, 0)]
        return out + block_messages(env)
    if script == "route-up":
        return route_messages(env, m.MsgType.ADD_ROUTE) + \
            redirect_messages(env, m.MsgType.ADD_ROUTE)
    if script == "route-pre-down":
        dels = redirect_messages(env, m.MsgType.DEL_ROUTE)
        if "route_network_1" not in env and "route_ipv6_network_1" not in env:
            # openvpn takes its routes down without naming them (persist-tun, after a
            # restart whose pushed options changed): ask for all of the tun's routes.
            return [*dels, m.DelTunRoutesMsg(m.MsgType.ISERVICE_DEL_TUN_ROUTES, 0)]
        return dels + route_messages(env, m.MsgType.DEL_ROUTE)
    if script == "down":
        return (dns_messages(env, add=False)
                + _v6_address_messages(env, m.MsgType.DEL_ADDRESS, iface)
                + _v4_address_messages(env, m.MsgType.DEL_ADDRESS, iface))
    return []


def _with_ids(msgs: Sequence[m.Message], first: int) -> list[tuple[int, bytes]]:
    # Encoded, then numbered in the header (dataclasses.replace per message took
    # 50 ms of the hook's time at 10,000 routes).
    return [(first + i, m.with_message_id(m.encode_message(msg), first + i))
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
