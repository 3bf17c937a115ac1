"""Who owns which routes: the first session acknowledged keeps them (SPEC §6), and each
session's routes, held compactly.

A route acknowledged to one session stays that session's: no non-admin session may
take any part of it, nor of another session's bypass route, whichever is added first.
"Take" means: a route of the asking session that is equal to or more specific than
(contained in) a route another live session holds in the same *scope* — longest-prefix
match would send that other session's traffic for it into the asker's tunnel.  A less
specific route takes nothing (the other's more specific route still wins).  Root's and
admins' sessions keep the original's semantics: their own adds are not checked (the
kernel refuses an exact duplicate), but their routes are protected like everyone's.

Scopes: with ``route_scope = machine`` every session's routes are in the main table
and steer everybody's traffic, so all sessions share one scope.  With ``route_scope =
user`` a non-admin session's routes live in a table only its user's traffic consults:
they can take nothing from anybody else, so its scope is its user (two sessions of one
user still may not take each other's routes); root's and admins' sessions stay in the
machine scope.

Also per user (summed over the user's sessions, pending reservations included): the
number of routes and of addresses (``max_routes_per_user``, ``max_addresses_per_user``).

Memory (issue 16: at most 200 bytes of service memory per route, measured at 100,000):
a session's routes are one dict of its own (``RouteTable``) keyed by a small int per
route (the network's prefix bits and length), and that dict is also what other sessions
are checked against — there is no second per-route index.  ``Owners`` keeps, per scope
and prefix length, which sessions hold a route of that length (few), so a check looks up
only those tables.  About 110-120 bytes per route held (tracemalloc; the benchmark's
memory row measures the whole service).

Pure: the server keeps one ``Owners``; a session's ``RouteTable`` is registered with it
when the session's channel starts and unregistered when the session ends; the channel
pipeline reserves a route in the table when it decides it (so a concurrent session sees
it at once) and removes it when the kernel refused it or it is deleted.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

Network = IPv4Network | IPv6Network
Scope = Hashable  # "machine", or ("user", uid)
MACHINE: Scope = "machine"


def scope_for(uid: int, admin: bool, route_scope: str) -> Scope:
    """The scope of a session's routes (module docstring)."""
    if route_scope == "user" and not admin:
        return ("user", uid)
    return MACHINE


@dataclass(frozen=True)
class RouteKey:
    """How a route is identified for delete-matching and undo."""
    dst: Network
    bypass: bool
    metric: int  # -1 = unset
    # A key is hashed three times per route (decide, reserve, settle) and hashing an
    # ip_network is ~0.4 µs: computed once (profiled at 10,000 routes).
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.dst, self.bypass, self.metric)))

    def __hash__(self) -> int:
        return self._hash

    @functools.cached_property
    def dst_text(self) -> str:
        """``str(self.dst)``, made once: the audit line and the journal record both need
        it, and formatting a network is ~1.3 µs (more for IPv6)."""
        return str(self.dst)


def net_key(version: int, plen: int, value: int) -> int:
    """A network as one small int: its prefix bits, its length and its family."""
    bits = 32 if version == 4 else 128
    return (((value >> (bits - plen)) << 8) | plen) << 1 | (version == 6)


def _network(nk: int) -> Network:
    v6 = nk & 1
    rest = nk >> 1
    plen, prefix = rest & 0xFF, rest >> 8
    if v6:
        return IPv6Network((prefix << (128 - plen), plen))
    return IPv4Network((prefix << (32 - plen), plen))


Entry = int | tuple[tuple[int, int], ...]  # change id (metric -1), or ((metric, id), ...)
BYPASS = -2  # the "id" of a bypass route's place in the network index


class TableWatch:
    """What a registered table tells ``Owners`` (its scope, session and user)."""

    __slots__ = ("owners", "scope", "session", "uid")

    def __init__(self, owners: Owners, scope: Scope, session: int, uid: int) -> None:
        self.owners, self.scope, self.session, self.uid = owners, scope, session, uid

    def added(self, version: int, plen: int, first: bool) -> None:
        self.owners.routes_of_user[self.uid] += 1
        if first:
            self.owners.hold(self.scope, version, plen, self.session)

    def added_many(self, version: int, plen: int, count: int, first: bool) -> None:
        self.owners.routes_of_user[self.uid] += count
        if first:
            self.owners.hold(self.scope, version, plen, self.session)

    def removed(self, version: int, plen: int, last: bool) -> None:
        counts = self.owners.routes_of_user
        counts[self.uid] -= 1
        if counts[self.uid] <= 0:
            del counts[self.uid]
        if last:
            self.owners.release(self.scope, version, plen, self.session)


class RouteTable(MutableMapping[RouteKey, int]):
    """A session's routes: key → the id of its journal record (-1 while in flight).

    One dict entry per network (a small int key, ``net_key``); its value is the record's
    id for a route of metric -1 (the usual), else ``((metric, id), ...)``.  Bypass routes
    (a few per session) are in the same dict and also listed by key.  Iteration makes the
    keys again (only ``del_tun_routes`` and the end of a session do)."""

    __slots__ = ("_bypass", "_len", "_nets", "_plens", "watch")

    def __init__(self, items: Mapping[RouteKey, int] | None = None) -> None:
        self._nets: dict[int, Entry] = {}
        self._bypass: dict[RouteKey, int] = {}
        self._plens: Counter[tuple[int, int]] = Counter()
        self._len = 0
        self.watch: TableWatch | None = None
        if items:
            for k, v in items.items():
                self[k] = v

    @staticmethod
    def key_of(key: RouteKey) -> int:
        dst = key.dst
        return net_key(dst.version, dst.prefixlen, int(dst.network_address))

    # -- the mapping ------------------------------------------------------------------
    # A bypass route is also in the network index (so that other sessions' checks see
    # it), as the pair (-1, BYPASS): tun routes never match that pair.

    def __getitem__(self, key: RouteKey) -> int:
        if key.bypass:
            return self._bypass[key]
        entry = self._nets.get(self.key_of(key))
        if isinstance(entry, int):
            if key.metric == -1:
                return entry
        elif entry is not None:
            for metric, cid in entry:
                if metric == key.metric and cid != BYPASS:
                    return cid
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, RouteKey):
            return False
        if key.bypass:
            return key in self._bypass
        entry = self._nets.get(self.key_of(key))
        if isinstance(entry, int):
            return key.metric == -1
        return entry is not None and any(
            metric == key.metric and cid != BYPASS for metric, cid in entry)

    def __setitem__(self, key: RouteKey, change_id: int) -> None:
        if key.bypass:
            new = key not in self._bypass
            self._bypass[key] = change_id
            if new:
                self._index(key, -1, BYPASS)
            return
        nk = self.key_of(key)
        entry = self._nets.get(nk)
        if isinstance(entry, int) and key.metric == -1:
            self._nets[nk] = change_id  # the usual case: the same route again
            return
        pairs = _pairs(entry)
        for i, (metric, cid) in enumerate(pairs):
            if metric == key.metric and cid != BYPASS:
                pairs[i] = (metric, change_id)
                self._nets[nk] = _entry(pairs)
                return
        self._index(key, key.metric, change_id)

    def _index(self, key: RouteKey, metric: int, change_id: int) -> None:
        nk = self.key_of(key)
        entry = self._nets.get(nk)
        if entry is None and metric == -1 and change_id != BYPASS:
            self._nets[nk] = change_id
        else:
            self._nets[nk] = _entry([*_pairs(entry), (metric, change_id)])
        self._len += 1
        self._count(key.dst, +1)

    def __delitem__(self, key: RouteKey) -> None:
        if key.bypass:
            del self._bypass[key]
            metric, match_bypass = -1, True
        else:
            metric, match_bypass = key.metric, False
        nk = self.key_of(key)
        pairs = _pairs(self._nets.get(nk))
        for i, (m_, cid) in enumerate(pairs):
            if m_ == metric and (cid == BYPASS) == match_bypass:
                del pairs[i]
                break
        else:
            raise KeyError(key)
        if pairs:
            self._nets[nk] = _entry(pairs)
        else:
            del self._nets[nk]
        self._len -= 1
        self._count(key.dst, -1)

    def _count(self, dst: Network, delta: int) -> None:
        pk = (dst.version, dst.prefixlen)
        self._plens[pk] += delta
        n = self._plens[pk]
        if n <= 0:
            del self._plens[pk]
        if self.watch is not None:
            if delta > 0:
                self.watch.added(dst.version, dst.prefixlen, first=n == 1)
            else:
                self.watch.removed(dst.version, dst.prefixlen, last=n <= 0)

    def __iter__(self) -> Iterator[RouteKey]:
        yield from self._bypass
        for nk, entry in self._nets.items():
            if isinstance(entry, int):
                yield RouteKey(_network(nk), False, -1)
                continue
            for metric, cid in _pairs(entry):
                if cid != BYPASS:
                    yield RouteKey(_network(nk), False, metric)

    def __len__(self) -> int:
        return self._len

    # -- a run of new tun routes (metric unset), by their packed keys --------------------
    # What ``__setitem__``/``__delitem__`` would do route by route, in bulk: the dict's
    # own C loops instead of ~3 µs of Python a route (profiled at 10,000 routes).

    def fresh_prefix(self, keys: list[int]) -> int:
        """How many of ``keys``, from the first, are networks this table has no route of
        and that are not twice among them."""
        nets = self._nets
        if nets.keys().isdisjoint(keys) and len(set(keys)) == len(keys):
            return len(keys)
        seen: set[int] = set()
        for i, nk in enumerate(keys):
            if nk in nets or nk in seen:
                return i
            seen.add(nk)
        return len(keys)

    def reserve_new(self, version: int, keys: list[int], plens: list[int]) -> None:
        """``self[RouteKey(net, False, -1)] = -1`` for every key (``fresh_prefix``'s)."""
        self._nets.update(dict.fromkeys(keys, -1))
        self._len += len(keys)
        for plen, count in Counter(plens).items():
            self._count_many(version, plen, count)

    def settle_new(self, version: int, keys: list[int], plens: list[int], first_id: int | None,
                   errors: Sequence[int] | None, error: int) -> None:
        """The kernel's answer for reserved keys: route i was journaled as ``first_id + i``
        (None: none was) and got ``errors[i]`` (None: each got ``error``); a failed one
        leaves the table."""
        if errors is None and not error and first_id is not None:
            self._nets.update(zip(keys, range(first_id, first_id + len(keys)), strict=True))
            return
        for i, nk in enumerate(keys):
            if (error if errors is None else errors[i]) or first_id is None:
                del self._nets[nk]
                self._len -= 1
                self._count_many(version, plens[i], -1)
            else:
                self._nets[nk] = first_id + i

    def _count_many(self, version: int, plen: int, delta: int) -> None:
        pk = (version, plen)
        n = self._plens[pk] = self._plens[pk] + delta
        if n <= 0:
            del self._plens[pk]
        if self.watch is not None:
            if delta > 0:
                self.watch.added_many(version, plen, delta, first=n == delta)
            else:
                for _ in range(-delta):
                    self.watch.removed(version, plen, last=n <= 0)

    # -- for the policy and the owners -------------------------------------------------

    def holds(self, nk: int) -> bool:
        """Any route (any metric, tun or bypass) of the network ``nk``."""
        return nk in self._nets

    @property
    def bypass_count(self) -> int:
        return len(self._bypass)

    def bypass_keys(self) -> list[RouteKey]:
        return list(self._bypass)

    def prefix_lengths(self) -> list[tuple[int, int]]:
        return list(self._plens)

    def __repr__(self) -> str:
        return f"RouteTable({dict(self.items())!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _pairs(entry: Entry | None) -> list[tuple[int, int]]:
    if entry is None:
        return []
    if isinstance(entry, int):
        return [(-1, entry)]
    assert isinstance(entry, tuple)
    return list(entry)


def _entry(pairs: list[tuple[int, int]]) -> Entry:
    if len(pairs) == 1 and pairs[0][0] == -1 and pairs[0][1] != BYPASS:
        return pairs[0][1]
    return tuple(pairs)


class Owners:
    """Every live session's routes, by scope: the sessions' own tables, and per scope,
    family and prefix length the sessions holding a route of that length."""

    def __init__(self) -> None:
        self._tables: dict[tuple[Scope, int], RouteTable] = {}  # (scope, session) → table
        # (scope, version, prefix length) → the sessions holding a route of that length
        self._holders: dict[tuple[Scope, int, int], set[int]] = {}
        self._lengths: dict[tuple[Scope, int], set[int]] = {}  # the lengths held there
        self.routes_of_user: Counter[int] = Counter()
        self.addresses_of_user: Counter[int] = Counter()

    def hold(self, scope: Scope, version: int, plen: int, session: int) -> None:
        self._holders.setdefault((scope, version, plen), set()).add(session)
        self._lengths.setdefault((scope, version), set()).add(plen)

    def release(self, scope: Scope, version: int, plen: int, session: int) -> None:
        holders = self._holders.get((scope, version, plen))
        if holders is None:
            return
        holders.discard(session)
        if not holders:
            del self._holders[(scope, version, plen)]
            lengths = self._lengths[(scope, version)]
            lengths.discard(plen)
            if not lengths:
                del self._lengths[(scope, version)]

    def register(self, scope: Scope, session: int, uid: int, table: RouteTable) -> None:
        """A session's table takes part from now on (its routes so far counted)."""
        self._tables[(scope, session)] = table
        table.watch = TableWatch(self, scope, session, uid)
        for version, plen in table.prefix_lengths():
            self.hold(scope, version, plen, session)
        if len(table):
            self.routes_of_user[uid] += len(table)

    def unregister(self, scope: Scope, session: int) -> None:
        """The session ended: its routes no longer count for anybody."""
        table = self._tables.pop((scope, session), None)
        if table is None or table.watch is None:
            return
        uid = table.watch.uid
        table.watch = None
        for version, plen in table.prefix_lengths():
            self.release(scope, version, plen, session)
        self.routes_of_user[uid] -= len(table)
        if self.routes_of_user[uid] <= 0:
            del self.routes_of_user[uid]

    def taken_from(self, scope: Scope, session: int, dst: Network) -> int | None:
        """The other session whose route ``dst`` would take part of (equal to or inside
        it), or None."""
        version = dst.version
        lengths = self._lengths.get((scope, version))
        if not lengths:
            return None
        value = int(dst.network_address)
        for plen in lengths:
            if plen > dst.prefixlen:
                continue
            holders = self._holders[(scope, version, plen)]
            if len(holders) == 1 and session in holders:
                continue  # only the asker's own
            nk = net_key(version, plen, value)
            for other in holders:
                if other != session and self._tables[(scope, other)].holds(nk):
                    return other
        return None

    def untaken_prefix(self, scope: Scope, session: int, version: int, values: list[int],
                       plens: list[int]) -> int:
        """How many of the networks ``values[i]/plens[i]`` (of ``version``), from the
        first, take part of no other session's route (``taken_from`` is None for each).
        Nothing to check per route while no other session in the scope holds a route of
        the family: the usual case."""
        lengths = self._lengths.get((scope, version))
        checks: list[tuple[int, list[RouteTable]]] = []
        for plen in lengths or ():
            others = [self._tables[(scope, o)] for o in self._holders[(scope, version, plen)]
                      if o != session]
            if others:
                checks.append((plen, others))
        if not checks:
            return len(values)
        for i, value in enumerate(values):
            dst = IPv4Network((value, plens[i])) if version == 4 \
                else IPv6Network((value, plens[i]))
            if self.taken_from(scope, session, dst) is not None:
                return i
        return len(values)

    def exact(self, scope: Scope, dst: Network, but: int) -> bool:
        """Does a session other than ``but`` hold exactly ``dst`` in ``scope``?"""
        holders = self._holders.get((scope, dst.version, dst.prefixlen))
        if not holders:
            return False
        nk = net_key(dst.version, dst.prefixlen, int(dst.network_address))
        return any(o != but and self._tables[(scope, o)].holds(nk) for o in holders)

    def count(self) -> int:
        return sum(len(t) for t in self._tables.values())
