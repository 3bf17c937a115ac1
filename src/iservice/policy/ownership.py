"""Who owns which routes: the first session acknowledged keeps them (SPEC §6).

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

Pure: the server keeps one ``Owners`` for all sessions; the channel pipeline reserves a
route here when it decides it (so a concurrent session sees it at once) and releases it
when the kernel refused it, when it is deleted and when the session ends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from ipaddress import IPv4Network, IPv6Network

Network = IPv4Network | IPv6Network
Scope = Hashable  # "machine", or ("user", uid)
MACHINE: Scope = "machine"


def scope_for(uid: int, admin: bool, route_scope: str) -> Scope:
    """The scope of a session's routes (module docstring)."""
    if route_scope == "user" and not admin:
        return ("user", uid)
    return MACHINE


class Owners:
    """Every live session's routes, by scope, family and prefix length."""

    def __init__(self) -> None:
        # (scope, version, prefix length) → network value → owning session id (a tuple of
        # them in the rare case of several: admins may add what another session has)
        self._routes: dict[tuple[Scope, int, int], dict[int, int | tuple[int, ...]]] = {}
        # (scope, version) → prefix lengths in use (few: 1, 24, 32, ...), for the lookup
        self._lengths: dict[tuple[Scope, int], Counter[int]] = {}
        self.routes_of_user: Counter[int] = Counter()
        self.addresses_of_user: Counter[int] = Counter()

    def add(self, scope: Scope, session: int, uid: int, dst: Network) -> None:
        key = (scope, dst.version, dst.prefixlen)
        table = self._routes.get(key)
        if table is None:
            self._routes[key] = table = {}
        value = int(dst.network_address)
        cur = table.get(value)
        if cur is None:
            table[value] = session
        else:
            table[value] = (*_as_tuple(cur), session)
        self._lengths.setdefault((scope, dst.version), Counter())[dst.prefixlen] += 1
        self.routes_of_user[uid] += 1

    def remove(self, scope: Scope, session: int, uid: int, dst: Network) -> None:
        self.remove_raw(scope, session, uid, dst.version, dst.prefixlen,
                        int(dst.network_address))

    def remove_raw(self, scope: Scope, session: int, uid: int, version: int, plen: int,
                   value: int) -> None:
        """``remove`` by the network's parts (no network object made)."""
        key = (scope, version, plen)
        table = self._routes.get(key)
        if table is None:
            return
        cur = table.get(value)
        if cur is None or session not in _as_tuple(cur):
            return
        rest = list(_as_tuple(cur))
        rest.remove(session)
        if len(rest) > 1:
            table[value] = tuple(rest)
        elif rest:
            table[value] = rest[0]
        else:
            del table[value]
            if not table:
                del self._routes[key]
        lengths = self._lengths[(scope, version)]
        lengths[plen] -= 1
        if not lengths[plen]:
            del lengths[plen]
        self.routes_of_user[uid] -= 1
        if self.routes_of_user[uid] <= 0:
            del self.routes_of_user[uid]

    def remove_all(self, scope: Scope, session: int, uid: int, dsts: Iterable[Network]) -> None:
        for dst in dsts:
            self.remove(scope, session, uid, dst)

    def taken_from(self, scope: Scope, session: int, dst: Network) -> int | None:
        """The other session whose route ``dst`` would take part of (equal to or inside
        it), or None."""
        lengths = self._lengths.get((scope, dst.version))
        if not lengths:
            return None
        bits = dst.max_prefixlen
        value = int(dst.network_address)
        for plen in lengths:
            if plen > dst.prefixlen:
                continue
            masked = value >> (bits - plen) << (bits - plen) if plen else 0
            owners = self._routes.get((scope, dst.version, plen), {}).get(masked)
            if owners is not None:
                for owner in _as_tuple(owners):
                    if owner != session:
                        return owner
        return None

    def exact(self, scope: Scope, dst: Network, but: int) -> bool:
        """Does a session other than ``but`` hold exactly ``dst`` in ``scope``?"""
        table = self._routes.get((scope, dst.version, dst.prefixlen))
        owners = None if table is None else table.get(int(dst.network_address))
        return owners is not None and any(o != but for o in _as_tuple(owners))

    def count(self) -> int:
        return sum(len(_as_tuple(o)) for table in self._routes.values() for o in table.values())


def _as_tuple(owners: int | tuple[int, ...]) -> tuple[int, ...]:
    return (owners,) if isinstance(owners, int) else owners
