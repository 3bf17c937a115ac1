"""The producer: openvpn's environment at one event → the requests openvpn.exe would send.

openvpn 2.6 on Linux has no ``--msg-channel``: iservice runs it with
``--ifconfig-noexec --route-noexec`` and its plugin (or the ``iservice-hook``
script), which forward openvpn's environment at ``up``, ``route-up``,
``route-pre-down`` and ``down`` to the service (``ISERVICE_ENV`` messages,
``wire.msg``).  This module turns such an environment into the openvpn-msg.h
requests openvpn.exe sends the Windows service, as decoded ``wire.msg`` messages;
the session decides them exactly like requests that came over the channel as bytes.

* ``up``: set_mtu, add_address (IPv4 subnet, net30 or p2p; IPv6), then DNS:
  add_nrpt_cfg from the ``dns_*`` variables of ``--dns`` (servers, resolve domains =
  split DNS, search domains, DNSSEC), else add_dns_cfg per family from
  ``foreign_option_N`` ``dhcp-option DNS|DNS6|DOMAIN|DOMAIN-SEARCH``, then
  register_dns; and add_wfp_block when the session asks for a kill switch
  (``--setenv ISERVICE_KILL_SWITCH 1``: flag 1) or ``block-outside-dns`` is in force
  (flag 2).  The block is never deleted here: it holds across reconnects and goes
  with the session.
* ``route-up``: add_route for every ``route_*`` / ``route_ipv6_*`` variable, and for
  ``redirect-gateway`` (IPv4) the host route to the VPN server via the previous
  default gateway then 0.0.0.0/1 and 128.0.0.0/1 through the tunnel.  (openvpn lists
  IPv6 redirection and block-local's routes among the ``route_*`` variables itself.)
  Whether redirect-gateway is in force comes from ``route_redirect_gateway_ipv4/ipv6``
  (openvpn ≥ 2.7) or else from the facts the service read in openvpn's output
  (``Context.facts``, ``policy.redirect``; openvpn 2.6).
* ``route-pre-down``: del_route for the same routes (``iservice_del_tun_routes`` when
  openvpn names none: a persist-tun restart whose pushed options changed).
* ``down``: del_nrpt_cfg / del_dns_cfg, then del_address for the addresses.
* **Fast disconnect**: at ``route-pre-down`` and ``down`` while openvpn is *exiting*
  (``signal`` is ``sigterm``, ``sigint`` or a text openvpn gives only to a SIGTERM:
  ``exiting``), nothing: the session ends a moment later and its undo removes the tun
  (and with it every route and address), the DNS and the kill switch at once.  On a
  restart (``sigusr1``, ``sighup``, ``ping-restart``, ``UNKNOWN``…) the deletes are made
  as before.  A user who forges the variable only keeps their own routes until their
  session ends.

The environment is hostile input (the user owns openvpn).  Everything here is pure
(``Context`` carries what the session knows), bounded by the environment's size, and
raises nothing but ``EnvError`` (fuzz/targets.py ``env``).  The service checks every
message made here exactly as if openvpn.exe had sent it.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from iservice.policy.dns import BadDnsValue, parse_domain, parse_server
from iservice.policy.redirect import KILL_SWITCH_ENV, Facts, Redirect
from iservice.policy.requests import RouteRun
from iservice.wire import msg as m

Env = Mapping[str, str]

# openvpn's `signal` values that mean it is exiting (sig.c: signal_description, and the
# texts it registers with SIGTERM alone in 2.6: ping.c, forward.c, push.c, manage.c,
# socket.c, sig.c).  A text also used with SIGUSR1/SIGHUP ("auth-failure", "tls-error",
# "delayed-exit", "management-disconnect", a --remap-usr1'd one) is not here: for
# those the deletes are made, as on a restart.
EXIT_SIGNALS = frozenset({
    "sigterm", "sigint", "ping-exit", "inactive", "session-timeout", "server-pushed-halt",
    "exit-with-notification", "auth-control-exit", "port-share-redirect", "tun-stop",
    "management-exit", "management-connect-failed", "socket-undefined",
})
MAX_NOTES = 16  # values reported as ignored per environment (the rest are counted)


class EnvError(Exception):
    """openvpn's environment cannot be turned into requests (a malformed value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Context:
    """What the session knows: its tun, what openvpn 2.6 does not say (the facts), and how
    many routes may be made from one environment (more would be refused anyway: the
    session's ``max_routes`` and a margin; it bounds the memory an environment takes)."""
    tun_name: str
    tun_ifindex: int
    facts: Facts = field(default_factory=Facts)
    max_routes: int = 1 << 20


@dataclass
class Produced:
    # with runs=True: the routes through the session's own tun as RouteRuns (policy.requests)
    messages: list[m.Message | RouteRun]
    notes: list[str]  # values left out (a bad DNS name or server): for the audit log
    exiting: bool = False  # route-pre-down/down of an exiting openvpn: nothing to do
    unmade: int = 0  # routes beyond Context.max_routes: not made, answered as refused


def parse_env(data: bytes) -> dict[str, str]:
    """openvpn's ``envp`` (``name=value`` strings, each ended by a NUL) as a dict: invalid
    UTF-8 kept as lone surrogates (``surrogateescape``, like ``os.environ``), a string
    without ``=`` ignored, the first of two equal names wins (like ``os.environ``)."""
    items = data.decode("utf-8", "surrogateescape").split("\0")
    # reversed: dict() keeps the last of equal names, so the first one is taken
    return dict(item.split("=", 1) for item in reversed(items) if "=" in item)


def exiting(env: Env) -> bool:
    return env.get("signal", "") in EXIT_SIGNALS


def signal_of(data: bytes) -> str | None:
    """``parse_env(data).get("signal")`` without parsing the rest (the first one wins):
    at route-pre-down and down of an exiting openvpn nothing else is looked at."""
    at = 0
    while (at := data.find(b"signal=", at)) >= 0:
        if at == 0 or data[at - 1] == 0:
            end = data.find(b"\0", at)
            return data[at + 7:end if end >= 0 else len(data)].decode(
                "utf-8", "surrogateescape")
        at += 1
    return None


def takes_down(event: int) -> bool:
    return event in (m.EVENT_ROUTE_PREDOWN, m.EVENT_DOWN)


def produce(event: int, env: Env, ctx: Context, message_id: int = 0, *,
            runs: bool = False) -> Produced:
    """The requests for ``event`` (``wire.msg.EVENT_*``), numbered ``message_id``.
    Raises only EnvError: a malformed value fails the whole environment, nothing is
    made of it (as an ``--up`` script that fails).

    ``runs``: consecutive add_routes through the session's own tun with the metric
    unset come as one ``RouteRun`` (the service's way: decided together); expanded
    (``RouteRun.message``) they are exactly the messages made without ``runs``."""
    if takes_down(event) and exiting(env):
        return Produced([], [], exiting=True)  # the session's undo takes it all with the tun
    out = Produced([], [])
    try:
        _Producer(env, ctx, message_id, out, runs).run(event)
    except (ValueError, OverflowError) as exc:  # ipaddress, int(), the dataclasses' checks
        raise EnvError(str(exc)) from None
    return out


def _int(text: str) -> int:
    """A decimal number as openvpn writes one: ASCII digits, an optional minus (stricter
    than ``int()``, which also takes blanks, ``+``, ``1_000`` and other scripts' digits)."""
    if not text.isascii() or not re.fullmatch(r"-?[0-9]+", text):
        raise ValueError(f"{text!r} is not a decimal number")
    return int(text)


def _int32(text: str, what: str) -> int:
    value = _int(text)
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"{what} {value} does not fit int32")
    return value


def _v4_int(text: str) -> int:
    """``int(IPv4Address(text))``: four decimal octets, no leading zeros (``inet_pton``'s
    rules, which are ipaddress's for text; several times quicker)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):  # UnicodeEncodeError of a lone surrogate is a ValueError
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _v4(text: str) -> IPv4Address:
    return IPv4Address(_v4_int(text))


# Netmasks openvpn writes (dotted) → prefix length; anything else goes through ipaddress
# (which also takes a prefix length and a hostmask, as IPv4Network does).
_MASKS = {str(IPv4Network(f"0.0.0.0/{n}").netmask): n for n in range(33)}
_NETMASK = [(0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33)]  # by prefix length


def _prefix_of(mask: str) -> int:
    n = _MASKS.get(mask)
    if n is None:
        if "/" in mask:
            raise ValueError(f"{mask!r} is not a netmask")
        n = IPv4Network(f"0.0.0.0/{mask}").prefixlen
    return n


_NETMASK6 = [((1 << 128) - 1) ^ ((1 << (128 - n)) - 1) for n in range(129)]


def _v6_network(text: str) -> tuple[int, int] | None:
    """``IPv6Network(text, strict=False)`` as (value, prefix length) for the form openvpn
    writes, ``address/bits`` (an address ``inet_pton`` takes, bits in decimal without a
    leading zero): ~5x quicker.  None for anything else: the caller asks ipaddress, which
    also gives the errors (tests/unit/test_route_run.py compares the two)."""
    addr, slash, bits = text.partition("/")
    if not slash or not bits.isascii() or not bits.isdigit() or len(bits) > 3 \
            or (bits[0] == "0" and bits != "0"):
        return None
    plen = int(bits)
    if plen > 128:
        return None
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
    except (OSError, ValueError):  # UnicodeEncodeError of a lone surrogate is a ValueError
        return None
    return value & _NETMASK6[plen], plen


def _v6_text(value: int, plen: int) -> str:
    """``str(IPv6Network((value, plen)))``: ``inet_ntop`` writes the same text except for
    the first /96 and ::ffff:0:0/96 (dotted IPv4 at the end), which ipaddress writes."""
    if value >> 32 in (0, 0xFFFF):
        return f"{IPv6Address(value)}/{plen}"
    return f"{socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, 'big'))}/{plen}"


def _numbered(env: Env, prefix: str) -> Iterator[int]:
    n = 1
    while f"{prefix}{n}" in env:
        yield n
        n += 1


def _count(env: Env, prefix: str, n: int) -> int:
    """How many of ``prefix<n>``, ``prefix<n+1>``, … are there."""
    k = n
    while f"{prefix}{k}" in env:
        k += 1
    return k - n


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # "²".isdigit() is True, int("²") fails


class _Producer:
    def __init__(self, env: Env, ctx: Context, mid: int, out: Produced,
                 runs: bool = False) -> None:
        self.runs = runs
        self.env = env
        self.ctx = ctx
        if not -(2**31) <= mid < 2**31:
            raise ValueError(f"message_id {mid} does not fit int32")
        self.mid = mid
        self.out = out
        dev = env.get("dev", "")
        # The session's own tun by its index; any other name is passed on (and refused).
        index = ctx.tun_ifindex if dev == ctx.tun_name else m.IFACE_INDEX_INVALID
        self.iface = m.Interface(index=index, name=dev)
        self.unset = m.Interface(index=m.IFACE_INDEX_INVALID, name="")
        self._ignored = 0

    def note(self, text: str) -> None:
        if len(self.out.notes) < MAX_NOTES:
            self.out.notes.append(text)
        else:
            self._ignored += 1

    def add(self, msgs: list[m.Message]) -> None:
        self.out.messages += msgs

    def run(self, event: int) -> None:
        env = self.env
        T = m.MsgType
        if event == m.EVENT_UP:
            mtu = env.get("tun_mtu")
            if mtu:
                self.add([m.SetMtuMsg(T.SET_MTU, self.mid, self.iface, socket.AF_INET,
                                      _int(mtu))])
            self.add(self.v4_addresses(T.ADD_ADDRESS) + self.v6_addresses(T.ADD_ADDRESS))
            dns = self.dns(add=True)
            if dns:
                self.add([*dns, m.RegisterDnsMsg(T.REGISTER_DNS, self.mid)])
            self.add(self.block())
        elif event == m.EVENT_ROUTE_UP:
            self.routes(T.ADD_ROUTE)
            self.add(self.redirect(T.ADD_ROUTE))
        elif event == m.EVENT_ROUTE_PREDOWN:
            self.add(self.redirect(T.DEL_ROUTE))
            if "route_network_1" not in env and "route_ipv6_network_1" not in env:
                # openvpn takes its routes down without naming them (persist-tun, after a
                # restart whose pushed options changed): ask for all of the tun's routes.
                self.add([m.DelTunRoutesMsg(T.ISERVICE_DEL_TUN_ROUTES, self.mid)])
            else:
                self.routes(T.DEL_ROUTE)
        elif event == m.EVENT_DOWN:
            self.add(self.dns(add=False) + self.v6_addresses(T.DEL_ADDRESS)
                     + self.v4_addresses(T.DEL_ADDRESS))
        if self._ignored:
            self.out.notes.append(f"and {self._ignored} more values ignored")

    # -- addresses ------------------------------------------------------------------

    def v4_addresses(self, kind: m.MsgType) -> list[m.Message]:
        env, mid, iface = self.env, self.mid, self.iface
        local = env.get("ifconfig_local")
        if not local:
            return []
        addr = _v4(local)
        mask = env.get("ifconfig_netmask")
        remote_text = env.get("ifconfig_remote")
        if mask:
            return [m.AddressMsg(kind, mid, addr, _prefix_of(mask), iface)]
        if remote_text:
            remote = _v4(remote_text)
            if int(addr) >> 2 == int(remote) >> 2:
                return [m.AddressMsg(kind, mid, addr, 30, iface)]  # net30
            # p2p: local/32 plus a host route to the peer through the tun
            route_kind = m.MsgType.ADD_ROUTE if kind == m.MsgType.ADD_ADDRESS \
                else m.MsgType.DEL_ROUTE
            return [m.AddressMsg(kind, mid, addr, 32, iface),
                    m.RouteMsg(route_kind, mid, remote, 32, IPv4Address(0), iface, -1)]
        return [m.AddressMsg(kind, mid, addr, 32, iface)]

    def v6_addresses(self, kind: m.MsgType) -> list[m.Message]:
        local = self.env.get("ifconfig_ipv6_local")
        if not local:
            return []
        bits = _int(self.env.get("ifconfig_ipv6_netbits", "128"))
        return [m.AddressMsg(kind, self.mid, IPv6Address(local), bits, self.iface)]

    # -- routes -----------------------------------------------------------------------

    def routes(self, kind: m.MsgType) -> None:
        """One message per ``route_*`` variable; routes via the net gateway bypass the tun.
        Built without the dataclass checks (``unchecked_route``): every value is checked
        here (the message id in __init__, addresses by their parsers, prefix lengths by
        their range, metrics as int32), and routes come by the ten thousand.  With
        ``runs``, consecutive adds through the session's own tun with the metric unset
        become one ``RouteRun`` instead (the same values, no message objects)."""
        env, mid, iface, unset = self.env, self.mid, self.iface, self.unset
        out = self.out.messages
        route = m.unchecked_route
        # a run only through the session's own tun (the producer named it by its index)
        runs = self.runs and kind == m.MsgType.ADD_ROUTE and \
            iface.index == self.ctx.tun_ifindex != m.IFACE_INDEX_INVALID
        net_gw = env.get("route_net_gateway")
        gateways: dict[str, IPv4Address] = {"": IPv4Address(0)}
        limit, made = self.ctx.max_routes, 0
        values: list[int] = []
        plens: list[int] = []
        texts: list[str] = []
        gws: list[IPv4Address | IPv6Address] = []

        def flush(version: int) -> None:
            nonlocal values, plens, texts, gws
            if values:
                out.append(RouteRun(mid, version, iface, values, plens, texts, gws))
                values, plens, texts, gws = [], [], [], []

        n = 1
        while (network := env.get(f"route_network_{n}")) is not None:
            if made >= limit:
                self.out.unmade += _count(env, "route_network_", n)
                break
            prefix = _prefix_of(env.get(f"route_netmask_{n}", "255.255.255.255"))
            raw = _v4_int(network)
            value = raw & _NETMASK[prefix]
            gw_text = env.get(f"route_gateway_{n}", "")
            gw = gateways.get(gw_text)
            if gw is None:
                gw = gateways[gw_text] = _v4(gw_text)
            metric_text = env.get(f"route_metric_{n}") or "-1"
            metric = -1 if metric_text == "-1" else _int32(metric_text, "metric")
            via = unset if net_gw and gw_text == net_gw else iface
            if runs and via is iface and metric == -1:
                values.append(value)
                plens.append(prefix)
                # inet_pton took the text: canonical, unless host bits were cleared
                texts.append(f"{network}/{prefix}" if raw == value
                             else f"{IPv4Address(value)}/{prefix}")
                gws.append(gw)
            else:
                flush(4)
                out.append(route(kind, mid, IPv4Address(value), prefix, gw, via, metric))
            made += 1
            n += 1
        flush(4)
        net_gw6 = env.get("net_gateway_ipv6")
        gateways6: dict[str, IPv4Address | IPv6Address] = {"": IPv6Address(0)}
        # the previous default gateway, for the run's test "not a bypass route" (None: not
        # set, or not an address: those routes go the way below, which raises then)
        net_gw6_addr: IPv4Address | IPv6Address | None = None
        if net_gw6:
            with contextlib.suppress(ValueError):
                net_gw6_addr = ip_address(net_gw6)
        for n in _numbered(env, "route_ipv6_network_"):
            if made >= limit:
                self.out.unmade += _count(env, "route_ipv6_network_", n)
                break
            text6 = env[f"route_ipv6_network_{n}"]
            gw6_text = env.get(f"route_ipv6_gateway_{n}", "")
            metric_text = env.get(f"route_ipv6_metric_{n}", "-1") or "-1"
            fast = _v6_network(text6) if runs and metric_text == "-1" \
                and not (net_gw6 and gw6_text and net_gw6_addr is None) else None
            if fast is not None:  # the network first, then the gateway, as below
                gw6 = gateways6.get(gw6_text)
                if gw6 is None:
                    gw6 = gateways6[gw6_text] = ip_address(gw6_text)
                if type(gw6) is IPv6Address and gw6.scope_id is None and not (
                        net_gw6 and gw6_text and net_gw6_addr == gw6):
                    value, prefix = fast
                    values.append(value)
                    plens.append(prefix)
                    texts.append(_v6_text(value, prefix))
                    gws.append(gw6)
                    made += 1
                    continue
            flush(6)
            net6 = IPv6Network(text6, strict=False)
            gw6 = ip_address(gw6_text) if gw6_text else IPv6Address(0)
            metric = _int(metric_text)
            # The host route to an IPv6 VPN server under redirect-gateway ipv6 goes via
            # the previous default gateway, like the IPv4 net_gateway routes.
            via = unset if net_gw6 and gw6_text and ip_address(net_gw6) == gw6 else iface
            out.append(m.RouteMsg(kind, mid, net6.network_address, net6.prefixlen, gw6, via,
                                  metric))
            made += 1
        flush(6)

    def redirect(self, kind: m.MsgType) -> list[m.Message]:
        """The IPv4 full tunnel (``redirect-gateway def1``): the bypass host route to the
        server first, then 0/1 and 128/1 through the tunnel (deleted in reverse order)."""
        env, mid = self.env, self.mid
        if "route_redirect_gateway_ipv4" in env or "route_redirect_gateway_ipv6" in env:
            redirect: Redirect | None = Redirect(  # openvpn ≥ 2.7 says it itself
                ipv4=env.get("route_redirect_gateway_ipv4", "0") in ("1", "2"),
                ipv6=env.get("route_redirect_gateway_ipv6", "0") in ("1", "2"))
        else:
            redirect = self.ctx.facts.redirect
        if redirect is None:
            return []
        out: list[m.Message] = []
        trusted = env.get("trusted_ip6") or env.get("trusted_ip", "")
        net_gw = env.get("net_gateway_ipv6") if ":" in trusted else env.get("route_net_gateway")
        wants = redirect.ipv6 if ":" in trusted else redirect.ipv4
        if trusted and net_gw and wants and not redirect.local:
            host = ip_address(trusted)
            out.append(m.RouteMsg(kind, mid, host, host.max_prefixlen, ip_address(net_gw),
                                  self.unset, -1))
        if redirect.ipv4:
            vpn_gw = IPv4Address(env.get("route_vpn_gateway") or 0)
            for half in ("0.0.0.0", "128.0.0.0"):
                out.append(m.RouteMsg(kind, mid, IPv4Address(half), 1, vpn_gw, self.iface, -1))
        return out if kind == m.MsgType.ADD_ROUTE else out[::-1]

    # -- DNS and the block --------------------------------------------------------------

    def clean_domains(self, names: Sequence[str]) -> str:
        """A comma list that fits the 512-byte field, without names the service would
        refuse (a pushed typo must not take the whole DNS configuration down)."""
        out: list[str] = []
        for name in names:
            try:
                clean = parse_domain(name)
            except BadDnsValue:
                self.note(f"ignoring the domain {name!r}")
                continue
            if clean not in out and len(",".join([*out, clean])) < m.DOMAINS_SIZE:
                out.append(clean)
        return ",".join(out)

    def servers(self, texts: Sequence[str]) -> list[IPv4Address | IPv6Address]:
        out: list[IPv4Address | IPv6Address] = []
        for text in texts:
            try:
                addr = parse_server(text)
            except BadDnsValue:
                self.note(f"ignoring the DNS server {text!r}")
                continue
            if addr not in out:
                out.append(addr)
        return out

    def dns(self, add: bool) -> list[m.Message]:
        """add/del_nrpt_cfg from ``--dns`` (``dns_*``), else add/del_dns_cfg per family from
        the ``dhcp-option`` foreign options (openvpn 2.6 turns ``--dns`` into foreign
        options too: the ``dns_*`` variables win)."""
        env, mid, iface = self.env, self.mid, self.iface
        server_ids = sorted({int(k.split("_")[2]) for k in env
                             if k.startswith("dns_server_") and _digits(k.split("_")[2])})
        for n in server_ids:  # the first server (lowest number) with an address
            p = f"dns_server_{n}_"
            addrs = self.servers([env[f"{p}address_{i}"] for i in _numbered(env, f"{p}address_")])
            if not addrs:
                continue
            kind = m.MsgType.ADD_NRPT_CFG if add else m.MsgType.DEL_NRPT_CFG
            resolve = self.clean_domains([env[f"{p}resolve_domain_{i}"]
                                          for i in _numbered(env, f"{p}resolve_domain_")])
            search = self.clean_domains([env[f"dns_search_domain_{i}"]
                                         for i in _numbered(env, "dns_search_domain_")])
            return [m.NrptCfgMsg(kind, mid, iface,
                                 tuple(str(a) for a in addrs[:m.NRPT_ADDR_NUM]),
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
        addrs = self.servers(servers)
        domain_list = self.clean_domains(domains)
        kind = m.MsgType.ADD_DNS_CFG if add else m.MsgType.DEL_DNS_CFG
        out: list[m.Message] = []
        v4 = tuple(a for a in addrs if a.version == 4)[:m.MAX_DNS_ADDRS]
        v6 = tuple(a for a in addrs if a.version == 6)[:m.MAX_DNS_ADDRS]
        if v4 or domain_list:
            out.append(m.DnsCfgMsg(kind, mid, iface, domain_list, socket.AF_INET, v4))
        if v6:
            out.append(m.DnsCfgMsg(kind, mid, iface, "", socket.AF_INET6, v6))
        return out

    def block(self) -> list[m.Message]:
        """add_wfp_block: flag 1 when the session asks for a kill switch, 2 for
        block-outside-dns (from the facts: openvpn 2.6 does not pass it on)."""
        flags = 0
        if self.env.get(KILL_SWITCH_ENV, "").strip().lower() in ("1", "yes", "true", "on"):
            flags |= m.WFP_BLOCK_LOCAL
        if self.ctx.facts.block_outside_dns:
            flags |= m.WFP_BLOCK_DNS
        if not flags:
            return []
        return [m.WfpBlockMsg(m.MsgType.ADD_WFP_BLOCK, self.mid, flags, self.iface)]
