"""Effect: a route — through the session's tun, or a bypass host route to the VPN server.

Record: destination, output interface, metric, gateway (bypass routes only) and whether
it bypasses the tunnel, written before the route is added (thousands per batch, in one
journal transaction).  Every route carries iservice's own ``rtm_protocol`` (158), and a
delete matches it, so undo can only ever remove a route iservice added.

Undo: routes through the tun go with the device (their records with the tun's record,
once the device is verifiably gone; IPv6 ones are deleted in one batch first, which the
kernel does faster than its flush of a deleted link); bypass routes are deleted one by
one, and a route already gone counts as undone.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any, ClassVar

from iservice import errors
from iservice.effects._records import flag, integer, text
from iservice.errors import JournalDataError
from iservice.journal import Journal
from iservice.net import RT_TABLE_MAIN, Route, RouteSpec
from iservice.policy.requests import AddRoute, AddTunRoutes, DelRoute, Operation
from iservice.ports import NetworkOps

GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}

# The route records of session ?1 through one of the session's tuns (not bypass routes):
# they go with the tun.  Used by the journal's undo query (filtered in SQLite: reading
# and parsing 30,000 route records only to skip them took ~80 ms of the undo).
THROUGH_TUN_SQL = ("kind = 'route' AND json_extract(data, '$.bypass') = 0 "
                   "AND json_extract(data, '$.oif') IN (SELECT json_extract(data, '$.ifindex') "
                   "FROM changes WHERE session_id = ?1 AND kind = 'tun')")


@dataclass(frozen=True)
class RouteRecord:
    KIND: ClassVar[str] = "route"
    dst: IPv4Network | IPv6Network
    oif: int
    metric: int  # -1: unset
    gateway: IPv4Address | IPv6Address | None
    bypass: bool
    table: int = RT_TABLE_MAIN  # a per-user session's own table (route_scope = user)

    def to_data(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dst": str(self.dst), "oif": self.oif, "metric": self.metric,
                             "gw": None if self.gateway is None else str(self.gateway),
                             "bypass": self.bypass}
        if self.table != RT_TABLE_MAIN:
            d["table"] = self.table
        return d

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RouteRecord:
        try:
            dst = ip_network(text(d, "dst"))
            gw = d.get("gw")
            gateway = None if gw is None else ip_address(text(d, "gw"))
        except ValueError as exc:
            raise JournalDataError(f"journal record: bad route {d!r}: {exc}") from None
        table = d.get("table", RT_TABLE_MAIN)
        return cls(dst, integer(d, "oif", low=1, high=2**31 - 1),
                   integer(d, "metric", low=-1, high=2**32 - 1), gateway, flag(d, "bypass"),
                   integer({"table": table}, "table", low=1, high=2**32 - 2))

    def spec(self) -> RouteSpec:
        return RouteSpec(self.dst, self.oif, self.gateway,
                         None if self.metric < 0 else self.metric, self.table)


def record_json(op: AddRoute) -> str:
    """The journal record of a route add as JSON text, built directly (json.dumps of a
    dict was ~1.9 µs a route, this ~0.7; tests/unit/test_journal.py checks it is the
    JSON of ``RouteRecord.to_data``).  Addresses and networks format as plain ASCII."""
    k = op.key
    gw = "null" if op.gateway is None else f'"{op.gateway}"'
    table = "" if op.table is None else f',"table":{op.table}'
    return (f'{{"dst":"{k.dst_text}","oif":{op.oif},"metric":{k.metric},"gw":{gw},'
            f'"bypass":{"true" if k.bypass else "false"}{table}}}')


def spec_of(op: AddRoute) -> RouteSpec:
    """The kernel route of a decided add (the same route ``record_json`` records), as
    values: the policy has checked them (netlink's fast path)."""
    metric = op.key.metric
    return RouteSpec(op.key.dst, op.oif, op.gateway, None if metric < 0 else metric,
                     RT_TABLE_MAIN if op.table is None else op.table)


def ack_error(err: int) -> int:
    """The ack's error_number for a kernel errno (openvpn reads 5010 as "exists")."""
    if err == errno.EEXIST:
        return errors.ERROR_OBJECT_ALREADY_EXISTS
    if err in (errno.ENOENT, errno.ESRCH):
        return errors.ERROR_NOT_FOUND
    if err in (errno.EPERM, errno.EACCES):
        return errors.ERROR_ACCESS_DENIED
    return err


def apply(journal: Journal, net: NetworkOps, session_id: int,
          ops: Sequence[Operation]) -> list[tuple[int, int | None]]:
    """Add and delete routes as one netlink batch, journal first: per op (ack error,
    journal id of the route it leaves).  A failed add and a done delete leave nothing
    to undo; a re-add of a journaled route keeps its record whatever the kernel says."""
    fresh = [op for op in ops if isinstance(op, AddRoute) and op.existing is None]
    ids = iter(journal.record_many_json(session_id, RouteRecord.KIND,
                                        [record_json(a) for a in fresh]))
    batch: list[tuple[bool, Route | RouteSpec]] = []
    change_ids: list[int | None] = []
    again: set[int] = set()  # batch positions re-adding an already journaled route
    for op in ops:
        if isinstance(op, AddRoute):
            batch.append((True, spec_of(op)))  # no text round trip (profiled)
            if op.existing is None:
                change_ids.append(next(ids))
            else:
                again.add(len(change_ids))
                change_ids.append(op.existing)
        else:
            assert isinstance(op, DelRoute)
            recorded = journal.get(op.change_id)
            if recorded is None:  # cannot happen: the policy matched the record
                raise LookupError(f"journal record {op.change_id} is missing")
            batch.append((False, RouteRecord.from_data(recorded.data).spec()))
            change_ids.append(op.change_id)
    errs = net.routes_apply(batch)
    forget: list[int] = []
    out: list[tuple[int, int | None]] = []
    for pos, ((is_add, _route), cid, err) in enumerate(
            zip(batch, change_ids, errs, strict=True)):
        if not is_add and err in GONE:
            err = 0  # already gone: the delete's intent holds
        if pos in again:
            if err == errno.EEXIST:
                err = 0  # still there: nothing to do
            out.append((ack_error(err) if err else 0, cid))
            continue
        if cid is not None and (bool(err) == is_add):
            forget.append(cid)
        out.append((ack_error(err) if err else 0, cid if is_add else None))
    journal.forget(forget)
    return out


def apply_run(journal: Journal, net: NetworkOps, session_id: int,
              op: AddTunRoutes) -> tuple[int, tuple[int, ...] | None]:
    """A run of new routes through the tun (``AddTunRoutes``), journal first, as ``apply``
    does it for the same ``AddRoute``s: (the first route's journal id — the others'
    follow —, each route's ack error, or None when every route was added).  A failed
    add leaves no record."""
    run = op.run
    texts = run.texts
    # record_json of each route: the same JSON text, one concatenation a route
    table = "" if op.table is None else f',"table":{op.table}'
    tail = f'","oif":{op.oif},"metric":-1,"gw":null,"bypass":false{table}}}'
    ids = journal.record_many_json(session_id, RouteRecord.KIND,
                                   ['{"dst":"' + text + tail for text in texts])
    errs = net.tun_routes_add(op.oif, RT_TABLE_MAIN if op.table is None else op.table,
                              run.version, run.values, run.plens)
    first = ids[0]
    if not any(errs):
        return first, None
    journal.forget(first + i for i, err in enumerate(errs) if err)
    return first, tuple(ack_error(err) if err else 0 for err in errs)


def undo(net: NetworkOps, rec: RouteRecord) -> str | None:
    """Delete a route that does not go with the tun; a problem's text, or None."""
    err = net.routes_apply([(False, rec.spec())])[0]
    if err and err not in GONE:
        return f"route {rec.dst}: {errno.errorcode.get(err, str(err))}"
    return None


def drop_tun_routes6(net: NetworkOps, records: Sequence[dict[str, Any]]) -> None:
    """Delete the tun's IPv6 routes in one batch before the tun: the kernel's flush of a
    deleted link's IPv6 routes is slower (1,000 routes: teardown 32 ms against 18 ms for
    openvpn as root, which deletes them first).  Best effort: what is left goes with
    the tun anyway."""
    specs: list[tuple[bool, Route | RouteSpec]] = []
    for d in records:
        try:
            specs.append((False, RouteRecord.from_data(d).spec()))
        except JournalDataError:
            continue
    if specs:
        with contextlib.suppress(OSError, ValueError):
            net.routes_apply(specs)
