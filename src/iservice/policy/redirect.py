"""Full tunnel and block-outside-dns on openvpn 2.6: where the service learns about them.

openvpn 2.6 does not tell scripts about ``redirect-gateway`` under
``--route-noexec`` (SPEC §9), and ``block-outside-dns`` is a Windows option it
does not pass on either.  openvpn 2.7 exports ``route_redirect_gateway_ipv4/ipv6``
to scripts; the hook uses those when present.  For 2.6 the service combines two
sources, both read without trusting the user:

1. **The command line and the approved config** (``options_facts``): the admin
   wrote the config; ``redirect-gateway``, ``block-outside-dns`` and
   ``route-nopull`` there (and on an admin's command line) count.  The last
   ``redirect-gateway`` wins, as in openvpn.
2. **What the server pushes**, from openvpn's own output (``PushWatcher``): at
   ``--verb 3`` and above openvpn prints every ``PUSH_REPLY`` it receives and
   every pushed option its ``pull-filter`` rules removed::

       PUSH: Received control message: 'PUSH_REPLY,redirect-gateway def1,...'
       Pushed option removed by filter: 'redirect-gateway def1'

   A new ``PUSH_REPLY`` (not a ``push-continuation``) starts a new set, so a
   reconnect to a server that stopped pushing it ends the full tunnel.  With
   ``--verb`` below 3, ``--log``/``--log-append``, ``--syslog`` or ``--daemon``
   the output does not reach the service and pushes are not seen
   (``options_facts`` reports that as ``push_visible = False``; the session logs it).

The result (``Facts``) goes to the producer (``produce.py``), which turns it into the
same route and block messages openvpn.exe would send.  The service still checks every
one of them: the facts only tell the producer what to ask for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

MAX_SERVERS = 4  # VPN server addresses kept per session (the latest)
KILL_SWITCH_ENV = "ISERVICE_KILL_SWITCH"  # `--setenv ISERVICE_KILL_SWITCH 1`: wfp_block flag 1
PUSH_PREFIX = "PUSH: Received control message: '"
FILTERED_PREFIX = "Pushed option removed by filter: '"
# "UDPv4 link remote: [AF_INET]192.0.2.1:1194", "Peer Connection Initiated with [AF_INET6]..."
_REMOTE = re.compile(r"(?:link remote|Connection Initiated with|connection established with)"
                     r":? \[AF_INET6?\]([0-9A-Fa-f.:]+?)(?::(\d+))?$")


@dataclass(frozen=True)
class Redirect:
    """The flags of one ``redirect-gateway`` option."""
    ipv4: bool = True
    ipv6: bool = False
    local: bool = False
    block_local: bool = False

    @classmethod
    def parse(cls, params: Sequence[str]) -> Redirect:
        flags = {p.lower() for p in params}
        return cls(ipv4="!ipv4" not in flags, ipv6="ipv6" in flags,
                   local="local" in flags, block_local="block-local" in flags)

    def to_json(self) -> dict[str, bool]:
        return {"ipv4": self.ipv4, "ipv6": self.ipv6, "local": self.local,
                "block_local": self.block_local}


@dataclass
class Facts:
    """What the producer should know that openvpn 2.6 does not tell it."""
    redirect: Redirect | None = None
    block_outside_dns: bool = False


def config_options(text: str) -> list[list[str]]:
    """openvpn config text → options as token lists (``--`` optional, comments dropped,
    inline ``<tag>…</tag>`` blocks skipped; quotes as in openvpn's parse_line)."""
    out: list[list[str]] = []
    inline: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if inline is not None:
            if line.lower() == f"</{inline}>":
                inline = None
            continue
        m = re.fullmatch(r"<([A-Za-z0-9_-]+)>", line)
        if m:
            inline = m.group(1).lower()
            continue
        if not line or line[0] in "#;":
            continue
        tokens = _split(line)
        if tokens:
            tokens[0] = tokens[0].removeprefix("--").lower()
            out.append(tokens)
    return out


def _split(line: str) -> list[str]:
    tokens: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    in_token = False
    i = 0
    while i < len(line):
        c = line[i]
        if quote is None and c in "#;" and not in_token:
            break  # a comment after the options
        if quote is None and c.isspace():
            if in_token:
                tokens.append("".join(cur))
                cur, in_token = [], False
        elif c == "\\" and quote != "'" and i + 1 < len(line):
            i += 1
            cur.append(line[i])
            in_token = True
        elif c in "\"'" and (quote is None or quote == c):
            quote = None if quote else c
            in_token = True
        else:
            cur.append(c)
            in_token = True
        i += 1
    if in_token:
        tokens.append("".join(cur))
    return tokens


def argv_options(argv: Sequence[str]) -> list[list[str]]:
    """openvpn's command line → options as token lists (``--name params…``)."""
    out: list[list[str]] = []
    for token in argv:
        if token.startswith("--"):
            out.append([token[2:].lower()])
        elif out:
            out[-1].append(token)
    return out


@dataclass
class OptionFacts:
    facts: Facts
    route_nopull: bool
    push_visible: bool  # openvpn's output reaches the service at verb ≥ 3


def options_facts(options: Sequence[Sequence[str]]) -> OptionFacts:
    """Facts from options in the order openvpn reads them (config contents inlined)."""
    facts = Facts()
    nopull = False
    verb = 1  # openvpn's default
    hidden = False
    for opt in options:
        name, params = opt[0], list(opt[1:])
        if name == "redirect-gateway":
            facts.redirect = Redirect.parse(params)
        elif name == "block-outside-dns":
            facts.block_outside_dns = True
        elif name == "route-nopull":
            nopull = True
        elif name == "verb" and params and params[0].isdigit():
            verb = int(params[0])
        elif name in ("log", "log-append", "syslog", "daemon"):
            hidden = True
    return OptionFacts(facts, nopull, push_visible=verb >= 3 and not hidden)


@dataclass
class PushWatcher:
    """Follows openvpn's output lines; ``facts`` is what config and pushes say now."""
    base: Facts
    route_nopull: bool = False
    facts: Facts = field(init=False)
    servers: list[str] = field(default_factory=list)  # VPN server addresses seen
    _pushed_redirect: Redirect | None = None
    _pushed_block: bool = False
    _continuing: bool = False

    def __post_init__(self) -> None:
        self.facts = Facts(self.base.redirect, self.base.block_outside_dns)

    def line(self, line: str) -> bool:
        """Feed one output line; True if ``facts`` or ``servers`` changed."""
        body = line.split(" ", 2)[2] if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) \
            else line
        if body.startswith(PUSH_PREFIX) and body.endswith("'"):
            return self._push(body[len(PUSH_PREFIX):-1])
        if body.startswith(FILTERED_PREFIX) and body.endswith("'"):
            option = body[len(FILTERED_PREFIX):-1].split()
            if option and option[0] == "redirect-gateway":
                self._pushed_redirect = None
            elif option and option[0] == "block-outside-dns":
                self._pushed_block = False
            return self._update()
        m = _REMOTE.search(body)
        if m is None:
            return False
        try:
            addr = str(ip_address(m.group(1)))
        except ValueError:
            return False
        if self.servers and self.servers[-1] == addr:
            return False
        if addr in self.servers:
            self.servers.remove(addr)
        self.servers.append(addr)
        del self.servers[:-MAX_SERVERS]
        return True

    def _push(self, message: str) -> bool:
        parts = message.split(",")
        if not parts or parts[0] != "PUSH_REPLY":
            return False
        if not self._continuing:  # a new set of pushed options
            self._pushed_redirect, self._pushed_block = None, False
        self._continuing = False
        for part in parts[1:]:
            opt = part.split()
            if not opt:
                continue
            if opt[0] == "redirect-gateway" and not self.route_nopull:
                self._pushed_redirect = Redirect.parse(opt[1:])
            elif opt[0] == "block-outside-dns":
                self._pushed_block = True
            elif opt[:2] == ["push-continuation", "2"]:
                self._continuing = True
        return self._update()

    def _update(self) -> bool:
        new = Facts(self._pushed_redirect or self.base.redirect,
                    self._pushed_block or self.base.block_outside_dns)
        changed = new != self.facts
        self.facts = new
        return changed
