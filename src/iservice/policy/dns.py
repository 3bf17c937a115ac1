"""DNS requests as values: domain lists, server lists, and a session's DNS state (pure).

A session's DNS configuration is built from two kinds of channel messages, as on
Windows (``reference/openvpnserv-notes.md`` §4):

* ``add/del_dns_cfg`` (openvpn's ``dhcp-option DNS|DNS6|DOMAIN|DOMAIN-SEARCH``):
  up to four servers of one family and a comma list of search domains.  An add
  replaces that family's servers (and the search domains, when it carries any);
  a del clears them.
* ``add/del_nrpt_cfg`` (openvpn's ``--dns``): server addresses as text, *resolve
  domains* (split DNS: only these names go to these servers) and search domains,
  and a DNSSEC flag.  An add replaces the previous one; a del removes it.

``DnsState`` holds both; ``DnsState.link()`` folds them into the one per-link
configuration every backend applies (``LinkDns``).  Everything here is a frozen
value, so the session can keep the state and the journal can store it as JSON.

Names are checked strictly (``parse_domains``): letters, digits, ``-`` and
``_`` in labels of 1…63 characters, at most 253 characters in all, one
optional leading and trailing dot dropped, lower-cased.  Anything else (a blank,
a newline, ``~``, ``*``…) refuses the whole message: a name ends up in
resolv.conf files and D-Bus calls, and a newline there would be an injection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

IPAddress = IPv4Address | IPv6Address

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
MAX_NAME = 253


class BadDnsValue(ValueError):
    """A domain or server address in a message is not acceptable."""


def parse_domain(text: str) -> str:
    """One DNS name, normalised (lower case, no leading/trailing dot); raises BadDnsValue."""
    name = text.strip().lower()
    if name.startswith("."):
        name = name[1:]
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME:
        raise BadDnsValue(f"{text!r} is not a domain name")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise BadDnsValue(f"{text!r} is not a domain name")
    return name


def parse_domains(text: str) -> tuple[str, ...]:
    """A comma separated list (blanks around names ignored) → unique names in order;
    '' → ().  A blank or newline *inside* a name refuses the list."""
    out: list[str] = []
    for token in text.split(","):
        if token.strip():
            name = parse_domain(token)
            if name not in out:
                out.append(name)
    return tuple(out)


def check_server(addr: IPAddress) -> IPAddress:
    """A DNS server address must be a unicast address another host can have."""
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or \
            (isinstance(addr, IPv6Address) and addr.is_link_local):
        raise BadDnsValue(f"{addr} cannot be a DNS server of a tunnel")
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        raise BadDnsValue(f"{addr} is an IPv4-mapped address")
    return addr


def parse_server(text: str) -> IPAddress:
    try:
        addr = ip_address(text.strip())
    except ValueError:
        raise BadDnsValue(f"{text!r} is not an IP address") from None
    return check_server(addr)


def _unique(items: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Nrpt:
    """The ``--dns`` configuration of one session (the last add_nrpt_cfg)."""
    servers: tuple[IPAddress, ...]
    resolve_domains: tuple[str, ...]  # empty = every name (catch-all)
    search_domains: tuple[str, ...]
    dnssec: bool


@dataclass(frozen=True)
class LinkDns:
    """What one session's link gets, whatever the backend.

    ``default_route``: all names go to these servers (``~.`` for resolved);
    otherwise only ``routing_domains`` do (split DNS).
    """
    servers: tuple[IPAddress, ...]
    search: tuple[str, ...]
    routing_domains: tuple[str, ...]
    default_route: bool
    dnssec: bool | None  # None = leave the resolver's default

    def to_json(self) -> dict[str, Any]:
        return {"servers": [str(a) for a in self.servers], "search": list(self.search),
                "routing": list(self.routing_domains), "default_route": self.default_route,
                "dnssec": self.dnssec}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkDns:
        return cls(servers=tuple(ip_address(a) for a in d["servers"]),
                   search=tuple(d["search"]), routing_domains=tuple(d["routing"]),
                   default_route=bool(d["default_route"]), dnssec=d["dnssec"])


@dataclass(frozen=True)
class DnsState:
    """Everything one session asked for; empty when it asked for nothing."""
    servers4: tuple[IPv4Address, ...] = ()
    servers6: tuple[IPv6Address, ...] = ()
    domains: tuple[str, ...] = ()  # search domains of add_dns_cfg
    nrpt: Nrpt | None = None

    @property
    def empty(self) -> bool:
        return not (self.servers4 or self.servers6 or self.domains or self.nrpt)

    def server_count(self) -> int:
        return len(self.link().servers)

    def with_family(self, version: int, servers: Sequence[IPAddress]) -> DnsState:
        if version == 4:
            return replace(self, servers4=tuple(a for a in servers
                                                if isinstance(a, IPv4Address)))
        return replace(self, servers6=tuple(a for a in servers if isinstance(a, IPv6Address)))

    def link(self) -> LinkDns:
        nrpt = self.nrpt
        servers = _unique([*(nrpt.servers if nrpt else ()), *self.servers4, *self.servers6])
        search = _unique([*self.domains, *(nrpt.search_domains if nrpt else ())])
        routing = nrpt.resolve_domains if nrpt else ()
        return LinkDns(servers=servers, search=search, routing_domains=routing,
                       default_route=bool(servers) and not routing,
                       dnssec=True if nrpt and nrpt.dnssec else None)


@dataclass(frozen=True)
class BlockState:
    """A session's kill switch: the wfp_block flags in force (0 = none)."""
    flags: int = 0


@dataclass
class DnsRecords:
    """What the session has set; kept by the session, mirrored in the journal."""
    dns: DnsState = field(default_factory=DnsState)
    block: BlockState = field(default_factory=BlockState)


def resolv_conf_lines(link: LinkDns) -> list[str]:
    """``nameserver``/``search`` lines for one link (resolvconf's input format)."""
    lines = [f"nameserver {a}" for a in link.servers]
    if link.search:
        lines.append("search " + " ".join(link.search))
    return lines
