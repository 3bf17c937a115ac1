"""What a session may change: channel messages → typed operations (SPEC §6).

Every channel message is hostile input: the user owns openvpn's process and can
write anything to the channel.  ``RequestPolicy.decide`` turns one decoded
message into exactly one typed operation (the closed set below, like the rows of
OpenSSH's monitor table) or raises ``Refused`` with the ack's error number.  It
does no I/O; it checks the message against the session's *own records* (its tun's
ifindex, what it added, its limits), never against names the message supplies.

Rules:
* Addresses, MTU, neighbour flush and routes through the tun: only on the
  session's own tun (by ifindex, or index 0xFFFFFFFF with exactly its name).
  Anything naming another interface → access denied (5).
* A route not through the tun is a *bypass* route: only a host route (/32, /128)
  via the current default gateway of its family, on that gateway's interface (or
  with the interface left unset), at most ``max_bypass_routes`` per session.
* Routes belong to whoever was acknowledged first (``policy/ownership.py``): a
  non-admin session's new route (through the tun or bypass) that is equal to or
  inside another live session's route in the same scope is refused — equal with
  ``ERROR_OBJECT_ALREADY_EXISTS`` (5010, what the kernel answers for a duplicate),
  inside with access denied (5).  Root's and admins' adds are not checked.
* A request that changes nothing (the same block flags, the same DNS state) is
  acknowledged without touching a backend (``Nothing``).
* Ranges: prefix lengths 0…32 / 0…128 for routes (1… for addresses), no host bits
  set, metric -1 (unset) or ≥ 0, MTU 576…65535 (IPv4) / 1280…65535 (IPv6), no
  multicast/loopback/unspecified addresses.
* Limits per session (routes, addresses) and per user, summed over the user's
  sessions (``max_routes_per_user``, ``max_addresses_per_user``).
* A delete must match something this session added (the journal's key), else
  ``ERROR_NOT_FOUND`` and nothing is touched.  Adding what the session already
  added is not an error: after a restart with ``persist-tun`` openvpn re-sends its
  configuration without deleting it first; it is applied again, journaled once.
* DNS (``add/del_dns_cfg``, ``add/del_nrpt_cfg``) and the kill switch
  (``add/del_wfp_block``): only for the session's own tun.  Names and server
  addresses are checked (``policy.dns``); at most ``max_dns_servers`` servers.
  Each message yields the session's whole new DNS state (``SetDns``) or block
  flags (``SetBlock``), so the monitor applies a state, never a delta.  A del
  with nothing to delete → ``ERROR_NOT_FOUND``.  ``register_dns`` → ``FlushDns``.
* Windows-only types (WINS, DHCP, create_adapter) → ``ERROR_NOT_SUPPORTED``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from iservice import errors
from iservice.policy.dns import (
    BadDnsValue,
    DnsRecords,
    DnsState,
    Nrpt,
    check_server,
    parse_domains,
    parse_server,
)
from iservice.policy.ownership import MACHINE, Owners, RouteKey, RouteTable, Scope
from iservice.wire import msg as m

IPAddress = IPv4Address | IPv6Address
_NETWORK_OF: dict[type, type[IPv4Network] | type[IPv6Network]] = {
    IPv4Address: IPv4Network, IPv6Address: IPv6Network}
IPNetwork = IPv4Network | IPv6Network


class NeedDefaultRoute(Exception):
    """Deciding a bypass route needs the default route of ``family``, and the policy's
    copy is missing or older than ``DEFAULT_ROUTE_TTL``: ask the monitor, give it with
    ``set_default_route``, decide again (the routing table is not read on the loop)."""

    def __init__(self, family: int) -> None:
        super().__init__(family)
        self.family = family


DEFAULT_ROUTE_TTL = 1.0  # seconds a default route read from the kernel is trusted


class Refused(Exception):
    """The request is not allowed; ``error_number`` goes into the ack."""

    def __init__(self, error_number: int, reason: str) -> None:
        super().__init__(reason)
        self.error_number = error_number
        self.reason = reason


# -- the closed set of operations --------------------------------------------

@dataclass(frozen=True)
class AddressKey:
    address: IPAddress
    prefix_len: int


@dataclass(frozen=True)
class AddAddress:
    key: AddressKey
    existing: int | None = None  # re-add of this journaled address (EEXIST is fine)
    # A per-user session's routing table (route_scope = user): the address's prefix
    # route goes there, not into the main table, where it would steer everyone.
    table: int | None = None


@dataclass(frozen=True)
class DelAddress:
    key: AddressKey
    change_id: int  # the journal record of the add being undone
    table: int | None = None  # where its prefix route is (see AddAddress)


# Routes come by the thousand: ``audit.describe`` uses these instead of its generic,
# reflective text (~18 µs a route, a quarter of the service's time at 10,000 routes);
# tests/unit/test_audit.py checks they give the generic text exactly.

@dataclass(frozen=True)
class AddRoute:
    key: RouteKey
    oif: int
    gateway: IPAddress | None  # only for bypass routes: the default gateway
    existing: int | None = None  # re-add of this journaled route (EEXIST is fine)
    table: int | None = None  # a per-user session's table; None: the main table

    def audit_text(self) -> str:
        k = self.key
        text = f"add_route dst={k.dst_text} bypass={k.bypass} metric={k.metric} oif={self.oif}"
        if self.gateway is not None:
            text += f" gateway={self.gateway}"
        if self.existing is not None:
            text += f" existing={self.existing}"
        if self.table is not None:
            text += f" table={self.table}"
        return text


RUN_ROUTES = 512  # routes per AddTunRoutes at most: one monitor turn (monitor.TURN_OPS)


class RouteRun:
    """Consecutive add_route requests through the session's own tun with the metric unset,
    as the producer makes them from openvpn's environment (``produce.py``, one family):
    each route as its network's value and prefix length, its packed key (``net_key``,
    what ``RouteTable`` holds), its canonical text and the gateway openvpn named.
    ``message(i)`` is the i-th as the ``RouteMsg`` openvpn.exe would send; a run is
    decided in one step (``RequestPolicy.decide_run``) with exactly the outcome
    ``decide`` gives each of those messages (tests/unit/test_route_run.py).

    A view: ``head``/``rest`` share the lists (a run of 30,000 routes is decided 512 at a
    time; copying the rest each time was quadratic)."""

    __slots__ = ("_gateways", "_keys", "_plens", "_texts", "_values", "iface", "message_id",
                 "start", "stop", "version")

    def __init__(self, message_id: int, version: int, iface: m.Interface, values: list[int],
                 plens: list[int], texts: list[str], gateways: list[IPAddress]) -> None:
        """The lists are the run's from now on (the producer fills them, then stops)."""
        self.message_id = message_id
        self.version = version
        self.iface = iface
        self._values = values
        self._plens = plens
        self._texts = texts
        self._gateways = gateways
        v6 = version == 6
        bits = 128 if v6 else 32
        # net_key, inline: ~0.2 µs a route less
        self._keys = [(((v >> (bits - p)) << 8 | p) << 1) | v6
                      for v, p in zip(values, plens, strict=True)]
        self.start = 0
        self.stop = len(values)

    def __len__(self) -> int:
        return self.stop - self.start

    def _view(self, start: int, stop: int) -> RouteRun:
        run = RouteRun.__new__(RouteRun)
        run.message_id, run.version, run.iface = self.message_id, self.version, self.iface
        run._values, run._plens, run._keys = self._values, self._plens, self._keys
        run._texts, run._gateways = self._texts, self._gateways
        run.start, run.stop = start, stop
        return run

    def head(self, n: int) -> RouteRun:
        return self._view(self.start, min(self.stop, self.start + n))

    def rest(self, n: int) -> RouteRun:
        return self._view(min(self.stop, self.start + n), self.stop)

    @property
    def values(self) -> list[int]:
        return self._values[self.start:self.stop]

    @property
    def plens(self) -> list[int]:
        return self._plens[self.start:self.stop]

    @property
    def keys(self) -> list[int]:
        return self._keys[self.start:self.stop]

    @property
    def texts(self) -> list[str]:
        return self._texts[self.start:self.stop]

    def message(self, i: int) -> m.RouteMsg:
        """Route ``i`` of the run as the request openvpn.exe would send."""
        k = self.start + i
        prefix: IPAddress = IPv4Address(self._values[k]) if self.version == 4 \
            else IPv6Address(self._values[k])
        return m.unchecked_route(m.MsgType.ADD_ROUTE, self.message_id, prefix, self._plens[k],
                                 self._gateways[k], self.iface, -1)


@dataclass(frozen=True)
class AddTunRoutes:
    """New routes through the session's tun, metric unset, decided together
    (``RequestPolicy.decide_run``): route i is what ``AddRoute(key_i, oif, None,
    table=table)`` would be.  At most ``RUN_ROUTES`` of them."""
    run: RouteRun
    oif: int
    table: int | None = None

    def audit_text(self) -> str:
        return f"add_tun_routes count={len(self.run)} oif={self.oif}"  # not 512 in one line

    def route_text(self, text: str) -> str:
        """``AddRoute(...).audit_text()`` of the route whose network is ``text``: the
        per-route audit line says exactly what it would for a route decided alone."""
        table = "" if self.table is None else f" table={self.table}"
        return f"add_route dst={text} bypass=False metric=-1 oif={self.oif}{table}"


@dataclass(frozen=True)
class DelRoute:
    key: RouteKey
    change_id: int  # the journal record of the add being undone

    def audit_text(self) -> str:
        k = self.key
        return (f"del_route dst={k.dst_text} bypass={k.bypass} metric={k.metric} "
                f"change_id={self.change_id}")


@dataclass(frozen=True)
class SetMtu:
    mtu: int


@dataclass(frozen=True)
class FlushNeighbors:
    family: int  # socket.AF_INET / AF_INET6


@dataclass(frozen=True)
class Nothing:
    """Acknowledge without doing anything (e.g. register_dns with no cache to flush)."""


@dataclass(frozen=True)
class SetDns:
    """Give the session's link this DNS state (empty = none); ``previous`` for rollback.

    ``redirect_uid``: a per-user session (route_scope = user): the state is not given
    to the machine's resolver; that user's DNS packets are sent to the tunnel's servers
    instead, and nobody else's."""
    state: DnsState
    previous: DnsState
    redirect_uid: int | None = None


@dataclass(frozen=True)
class FlushDns:
    """register_dns: flush the resolver's caches where the backend can."""


@dataclass(frozen=True)
class SetBlock:
    """The session's kill switch: wfp_block flags (0 = remove); ``previous`` for rollback.

    ``scope_uid``: the block covers only that user's traffic (non-admin sessions);
    None = the whole machine.  ``unscoped``: flags the admin forces machine-wide.
    """
    flags: int
    previous: int
    scope_uid: int | None = None
    unscoped: int = 0


@dataclass(frozen=True)
class DelTunRoutes:
    """Delete every route through the tun this session added (iservice's extension
    message, sent by the hook when openvpn takes its routes down without naming them)."""
    routes: tuple[DelRoute, ...]

    def audit_text(self) -> str:
        return f"del_tun_routes count={len(self.routes)}"  # not thousands in one line


Operation = (AddAddress | DelAddress | AddRoute | DelRoute | SetMtu | FlushNeighbors | Nothing
             | SetDns | FlushDns | SetBlock | DelTunRoutes | AddTunRoutes)


@dataclass(frozen=True)
class DefaultRoute:
    gateway: IPAddress
    oif: int


@dataclass(frozen=True)
class Limits:
    max_routes: int
    max_addresses: int
    max_bypass_routes: int
    max_dns_servers: int = 8
    max_routes_per_user: int = 2**31 - 1
    max_addresses_per_user: int = 2**31 - 1


@dataclass
class SessionRecords:
    """What the session has added (kept by the session, mirrored in the journal)."""
    routes: RouteTable
    addresses: dict[AddressKey, int]
    dns: DnsRecords = field(default_factory=DnsRecords)

    def __post_init__(self) -> None:
        if not isinstance(self.routes, RouteTable):
            self.routes = RouteTable(self.routes)

    @property
    def bypass_count(self) -> int:
        return self.routes.bypass_count




def _family_bits(family: int) -> int:
    return 32 if family == socket.AF_INET else 128


def _family_of(addr: IPAddress | IPNetwork) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


class RequestPolicy:
    """Decides one message at a time for one session."""

    def __init__(self, *, tun_ifindex: int, tun_name: str, limits: Limits,
                 records: SessionRecords,
                 default_route: Callable[[int], DefaultRoute | None] | None = None,
                 owners: Owners | None = None, scope: Scope = MACHINE,
                 session_id: int = 0, uid: int = 0, admin: bool = False,
                 route_table: int | None = None,
                 forced_block: int = 0, block_scope_uid: int | None = None) -> None:
        self.tun_ifindex = tun_ifindex
        self.forced_block = forced_block  # block flags the admin wants (block_dns)
        self.block_scope_uid = block_scope_uid  # whose traffic a kill switch covers
        self.tun_name = tun_name
        self.limits = limits
        self.records = records
        # None: the default route comes through set_default_route (NeedDefaultRoute)
        self._default_route = default_route
        self._defaults: dict[int, tuple[DefaultRoute | None, float]] = {}
        self._now = 0.0
        self.owners = Owners() if owners is None else owners
        self.scope = scope
        self.session_id = session_id
        self.uid = uid
        self.admin = admin
        # route_scope = user, non-admin: the session's own table; its DNS only the user's
        self.route_table = route_table

    @property
    def _dns_uid(self) -> int | None:
        return self.uid if self.route_table is not None else None

    def set_default_route(self, family: int, route: DefaultRoute | None, now: float) -> None:
        self._defaults[family] = (route, now)

    def _default(self, family: int) -> DefaultRoute | None:
        if self._default_route is not None:
            return self._default_route(family)
        known = self._defaults.get(family)
        if known is None or not 0 <= self._now - known[1] <= DEFAULT_ROUTE_TTL:
            raise NeedDefaultRoute(family)
        return known[0]

    def _check_taking(self, key: RouteKey) -> None:
        """Refuse a non-admin's route that takes part of another session's (ownership)."""
        if self.admin:
            return
        owner = self.owners.taken_from(self.scope, self.session_id, key.dst)
        if owner is None:
            return
        if self.owners.exact(self.scope, key.dst, but=self.session_id):
            raise Refused(errors.ERROR_OBJECT_ALREADY_EXISTS,
                          f"{key.dst} is a route of session {owner}")
        raise Refused(errors.ERROR_ACCESS_DENIED,
                      f"{key.dst} would take part of a route of session {owner}")

    def _check_user_routes(self) -> None:
        if self.owners.routes_of_user[self.uid] >= self.limits.max_routes_per_user:
            raise Refused(errors.ERROR_NOT_ENOUGH_QUOTA,
                          f"more than {self.limits.max_routes_per_user} routes for this user")

    # -- helpers ------------------------------------------------------------

    def _is_own_iface(self, iface: m.Interface) -> bool:
        if iface.index == m.IFACE_INDEX_INVALID:
            return iface.name == self.tun_name
        return iface.index == self.tun_ifindex

    def _require_own_iface(self, iface: m.Interface) -> None:
        if not self._is_own_iface(iface):
            raise Refused(errors.ERROR_ACCESS_DENIED,
                          f"interface {iface.index}/{iface.name!r} is not this session's tun")

    @staticmethod
    def _network(addr: IPAddress, prefix_len: int) -> IPNetwork:
        if not 0 <= prefix_len <= addr.max_prefixlen:
            raise Refused(errors.ERROR_INVALID_PARAMETER,
                          f"prefix length {prefix_len} out of range")
        network = _NETWORK_OF.get(type(addr))
        if network is not None and getattr(addr, "scope_id", None) is None:
            # From the integer: ip_network((address, n)) formats and re-parses the
            # address (profiled: half of the decision's ~3.8 µs per route).
            value = int(addr)
            if value & ((1 << (addr.max_prefixlen - prefix_len)) - 1):
                raise Refused(errors.ERROR_INVALID_PARAMETER,
                              f"{addr}/{prefix_len} has host bits set")
            return network((value, prefix_len))
        try:
            return ip_network((addr, prefix_len), strict=True)
        except ValueError:
            raise Refused(errors.ERROR_INVALID_PARAMETER,
                          f"{addr}/{prefix_len} has host bits set") from None

    # -- the table ----------------------------------------------------------

    def decide(self, msg: m.Message, now: float = 0.0) -> Operation:
        """The operation for ``msg``; ``now`` (a monotonic clock) dates the default routes
        given with ``set_default_route``.  Raises ``Refused`` or ``NeedDefaultRoute``."""
        self._now = now
        handler = _TABLE.get(msg.type)
        if handler is None:
            raise Refused(errors.ERROR_NOT_SUPPORTED,
                          f"{msg.type.name.lower()} is not supported on Linux")
        return handler(self, msg)

    def decide_fast(self, raw: bytes) -> tuple[int, AddRoute] | None:
        """(message_id, op) when ``decide(decode_message(raw))`` would give a new route
        through this session's tun — the request openvpn sends by the thousand — made
        without the message object, its two addresses and the table's dispatch
        (~1.5 µs less per route); None for anything else, refusals and errors included,
        which the full path then decides.  tests/unit/test_fast_route.py checks that
        whenever this answers, the full path gives the same operation."""
        peek = m.peek_ipv4_add_route(raw)
        if peek is None:
            return None
        mid, value, prefix_len, iface, metric = peek
        op = self._new_tun_route(value, prefix_len, iface, metric)
        return None if op is None else (mid, op)

    def decide_route_fast(self, msg: m.Message) -> AddRoute | None:
        """``decide_fast`` for a message already decoded, or made from openvpn's
        environment (``produce.py``): the op when ``decide(msg)`` would give a new IPv4
        route through this session's tun, else None (decide it fully)."""
        if type(msg) is not m.RouteMsg or msg.type != m.MsgType.ADD_ROUTE \
                or type(msg.prefix) is not IPv4Address:
            return None
        return self._new_tun_route(int(msg.prefix), msg.prefix_len, msg.iface, msg.metric)

    def decide_run(self, run: RouteRun) -> tuple[AddTunRoutes | None, int]:
        """(op, n): the first ``n`` routes of ``run`` decided in one step, each exactly as
        ``decide(run.message(i))`` decides it — a new route through the tun — and none of
        them re-checked (the producer made them from checked values).  ``n`` stops
        before the first route that ``decide`` would treat otherwise (already this
        session's or twice in the run, over a limit, taking part of another session's):
        that one is decided alone (0: decide ``run.message(0)``).  Nothing is reserved
        here (``Pipeline.reserve`` does)."""
        table = self.records.routes
        limits = self.limits
        n = min(len(run), limits.max_routes - len(table),
                limits.max_routes_per_user - self.owners.routes_of_user[self.uid])
        if n <= 0:
            return None, 0
        head = run.head(n)
        n = table.fresh_prefix(head.keys)
        if n and not self.admin:
            head = head.head(n)
            n = self.owners.untaken_prefix(self.scope, self.session_id, run.version,
                                           head.values, head.plens)
        if n <= 0:
            return None, 0
        return AddTunRoutes(run.head(n), self.tun_ifindex, self.route_table), n

    def _new_tun_route(self, value: int, prefix_len: int, iface: m.Interface,
                       metric: int) -> AddRoute | None:
        if not 0 <= prefix_len <= 32 or value & ((1 << (32 - prefix_len)) - 1) \
                or metric < -1 or not self._is_own_iface(iface):
            return None
        key = RouteKey(IPv4Network((value, prefix_len)), bypass=False, metric=metric)
        if key in self.records.routes or len(self.records.routes) >= self.limits.max_routes:
            return None
        owners = self.owners
        if owners.routes_of_user[self.uid] >= self.limits.max_routes_per_user or (
                not self.admin and owners.taken_from(self.scope, self.session_id, key.dst)
                is not None):
            return None
        return AddRoute(key, self.tun_ifindex, None, table=self.route_table)

    def _address(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.AddressMsg)
        self._require_own_iface(msg.iface)
        a = msg.address
        if not 1 <= msg.prefix_len <= a.max_prefixlen:
            raise Refused(errors.ERROR_INVALID_PARAMETER,
                          f"prefix length {msg.prefix_len} out of range")
        if a.is_multicast or a.is_loopback or a.is_unspecified:
            raise Refused(errors.ERROR_INVALID_PARAMETER, f"{a} cannot be a tunnel address")
        key = AddressKey(a, msg.prefix_len)
        if msg.type == m.MsgType.DEL_ADDRESS:
            if key not in self.records.addresses:
                raise Refused(errors.ERROR_NOT_FOUND, f"{a}/{msg.prefix_len} was not added here")
            return DelAddress(key, self.records.addresses[key], self.route_table)
        if key in self.records.addresses:
            # Already ours: a restart re-sending its configuration.  Put it in again
            # (the kernel may have dropped it with the link) without a new record.
            return AddAddress(key, existing=self.records.addresses[key], table=self.route_table)
        if len(self.records.addresses) >= self.limits.max_addresses:
            raise Refused(errors.ERROR_NOT_ENOUGH_QUOTA,
                          f"more than {self.limits.max_addresses} addresses")
        if self.owners.addresses_of_user[self.uid] >= self.limits.max_addresses_per_user:
            raise Refused(errors.ERROR_NOT_ENOUGH_QUOTA,
                          f"more than {self.limits.max_addresses_per_user} addresses for "
                          "this user")
        return AddAddress(key, table=self.route_table)

    def _route(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.RouteMsg)
        dst = self._network(msg.prefix, msg.prefix_len)
        if msg.metric < -1:
            raise Refused(errors.ERROR_INVALID_PARAMETER, f"metric {msg.metric} out of range")
        key = RouteKey(dst, bypass=not self._is_own_iface(msg.iface), metric=msg.metric)
        if msg.type == m.MsgType.DEL_ROUTE:
            if key not in self.records.routes:
                raise Refused(errors.ERROR_NOT_FOUND, f"route {dst} was not added here")
            return DelRoute(key, self.records.routes[key])
        if key in self.records.routes:
            # Already ours: a restart re-sending its configuration.  Deleting the
            # tun's last IPv4 address makes the kernel drop its routes, so a tun
            # route is put in again (without a new record); a bypass route stays.
            if key.bypass:
                return Nothing()
            return AddRoute(key, self.tun_ifindex, None, existing=self.records.routes[key],
                            table=self.route_table)
        if len(self.records.routes) >= self.limits.max_routes:
            raise Refused(errors.ERROR_NOT_ENOUGH_QUOTA,
                          f"more than {self.limits.max_routes} routes")
        self._check_user_routes()
        if key.bypass:
            return self._bypass(msg, key)
        self._check_taking(key)
        return AddRoute(key, self.tun_ifindex, None, table=self.route_table)

    def _bypass(self, msg: m.RouteMsg, key: RouteKey) -> Operation:
        family = _family_of(key.dst)
        if key.dst.prefixlen != _family_bits(family):
            raise Refused(errors.ERROR_ACCESS_DENIED,
                          f"{key.dst} is not a host route and not via this session's tun")
        default = self._default(family)
        if default is None:
            raise Refused(errors.ERROR_ACCESS_DENIED, "no default gateway to bypass the tunnel")
        if msg.gateway != default.gateway:
            raise Refused(errors.ERROR_ACCESS_DENIED,
                          f"gateway {msg.gateway} is not the default gateway {default.gateway}")
        unset = msg.iface.index == m.IFACE_INDEX_INVALID and msg.iface.name == ""
        if not unset and msg.iface.index != default.oif:
            raise Refused(errors.ERROR_ACCESS_DENIED,
                          "bypass route not on the default gateway's interface")
        if self.records.bypass_count >= self.limits.max_bypass_routes:
            raise Refused(errors.ERROR_NOT_ENOUGH_QUOTA,
                          f"more than {self.limits.max_bypass_routes} bypass routes")
        self._check_taking(key)
        return AddRoute(key, default.oif, default.gateway, table=self.route_table)

    def _mtu(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.SetMtuMsg)
        self._require_own_iface(msg.iface)
        low = 576 if msg.family == socket.AF_INET else 1280
        if not low <= msg.mtu <= 65535:
            raise Refused(errors.ERROR_INVALID_PARAMETER,
                          f"MTU {msg.mtu} out of range {low}…65535")
        return SetMtu(msg.mtu)

    def _flush(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.FlushNeighborsMsg)
        self._require_own_iface(msg.iface)
        return FlushNeighbors(msg.family)

    def _nothing(self, msg: m.Message) -> Operation:
        return Nothing()

    def _dns_state(self, new: DnsState) -> Operation:
        old = self.records.dns.dns
        if new.server_count() > self.limits.max_dns_servers:
            raise Refused(errors.ERROR_NOT_ENOUGH_QUOTA,
                          f"more than {self.limits.max_dns_servers} DNS servers")
        if new == old:
            return Nothing()  # the same state again: the backend is not touched
        return SetDns(new, old, self._dns_uid)

    def _dns_cfg(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.DnsCfgMsg)
        self._require_own_iface(msg.iface)
        old = self.records.dns.dns
        version = 4 if msg.family == socket.AF_INET else 6
        try:
            servers = [check_server(a) for a in msg.addresses]
            domains = parse_domains(msg.domains)
        except BadDnsValue as exc:
            raise Refused(errors.ERROR_INVALID_PARAMETER, str(exc)) from None
        if msg.type == m.MsgType.DEL_DNS_CFG:
            had = old.servers4 if version == 4 else old.servers6
            if not had and not (domains and old.domains):
                raise Refused(errors.ERROR_NOT_FOUND, "no DNS configuration of this family here")
            new = old.with_family(version, ())
            if domains:
                new = DnsState(new.servers4, new.servers6, (), new.nrpt)
            return SetDns(new, old, self._dns_uid)
        new = old.with_family(version, servers) if servers else old
        if domains:
            new = DnsState(new.servers4, new.servers6, domains, new.nrpt)
        if not servers and not domains:
            raise Refused(errors.ERROR_INVALID_PARAMETER, "add_dns_cfg without servers or domains")
        return self._dns_state(new)

    def _nrpt_cfg(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.NrptCfgMsg)
        self._require_own_iface(msg.iface)
        old = self.records.dns.dns
        if msg.type == m.MsgType.DEL_NRPT_CFG:
            if old.nrpt is None:
                raise Refused(errors.ERROR_NOT_FOUND, "no NRPT configuration here")
            return SetDns(DnsState(old.servers4, old.servers6, old.domains, None), old,
                          self._dns_uid)
        try:
            servers = tuple(dict.fromkeys(parse_server(a) for a in msg.addresses))
            nrpt = Nrpt(servers, parse_domains(msg.resolve_domains),
                        parse_domains(msg.search_domains), msg.dnssec)
        except BadDnsValue as exc:
            raise Refused(errors.ERROR_INVALID_PARAMETER, str(exc)) from None
        if not servers:
            raise Refused(errors.ERROR_INVALID_PARAMETER, "add_nrpt_cfg without a server")
        return self._dns_state(DnsState(old.servers4, old.servers6, old.domains, nrpt))

    def _wfp_block(self, msg: m.Message) -> Operation:
        assert isinstance(msg, m.WfpBlockMsg)
        self._require_own_iface(msg.iface)
        old = self.records.dns.block.flags
        if msg.type == m.MsgType.DEL_WFP_BLOCK:
            if not old:
                raise Refused(errors.ERROR_NOT_FOUND, "no block here")
            # What the admin wants (block_dns) stays until the session ends.
            if old & self.forced_block == old:
                return Nothing()
            return SetBlock(old & self.forced_block, old, self.block_scope_uid,
                            self.forced_block)
        allowed = m.WFP_BLOCK_LOCAL | m.WFP_BLOCK_DNS
        if not msg.flags or msg.flags & ~allowed:
            raise Refused(errors.ERROR_INVALID_PARAMETER, f"block flags {msg.flags:#x}")
        flags = msg.flags | (old & self.forced_block)
        if flags == old:
            return Nothing()  # the same block again: nft is not run
        return SetBlock(flags, old, self.block_scope_uid, self.forced_block)

    def _register_dns(self, msg: m.Message) -> Operation:
        return FlushDns()

    def _del_tun_routes(self, msg: m.Message) -> Operation:
        # Only what this session journaled, only through its own tun (never a bypass).
        return DelTunRoutes(tuple(DelRoute(k, cid) for k, cid in self.records.routes.items()
                                  if not k.bypass and cid >= 0))


_Handler = Callable[[RequestPolicy, m.Message], Operation]

# One row per message type this platform serves; a missing row = not supported.
_TABLE: Mapping[m.MsgType, _Handler] = {
    m.MsgType.ADD_ADDRESS: RequestPolicy._address,
    m.MsgType.DEL_ADDRESS: RequestPolicy._address,
    m.MsgType.ADD_ROUTE: RequestPolicy._route,
    m.MsgType.DEL_ROUTE: RequestPolicy._route,
    m.MsgType.SET_MTU: RequestPolicy._mtu,
    m.MsgType.FLUSH_NEIGHBORS: RequestPolicy._flush,
    m.MsgType.REGISTER_DNS: RequestPolicy._register_dns,
    m.MsgType.ISERVICE_DEL_TUN_ROUTES: RequestPolicy._del_tun_routes,
    m.MsgType.ADD_DNS_CFG: RequestPolicy._dns_cfg,
    m.MsgType.DEL_DNS_CFG: RequestPolicy._dns_cfg,
    m.MsgType.ADD_NRPT_CFG: RequestPolicy._nrpt_cfg,
    m.MsgType.DEL_NRPT_CFG: RequestPolicy._nrpt_cfg,
    m.MsgType.ADD_WFP_BLOCK: RequestPolicy._wfp_block,
    m.MsgType.DEL_WFP_BLOCK: RequestPolicy._wfp_block,
}
