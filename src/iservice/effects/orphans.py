"""The kernel's objects as a second journal: iservice's marks without a journal record.

A journal can be lost (deleted, truncated, damaged and moved aside, or from an older
install).  Everything iservice makes carries a mark the user cannot change, so what a
lost journal knew is found again at start, after the journal's own sessions were
undone:

* a session cgroup: any ``session-<id>`` directory under this service's cgroup base
  (made from its state directory, so always this instance's);
* a tun: its alias ``iservice:<owner>:<session>:<token>`` (``effects/tun.py``) names
  this service as its owner (``server.owner_id``: the instance and its state directory,
  so two services of one instance name never take each other's objects);
* an nftables table: its comment ``iservice:<owner>:<session>`` names this service;
* a rule with ``proto 158``: unless the session table it belongs to
  (``0x10000000 + tun ifindex``, ``effects/rule.py``) is that of another service's tun;
* a route with ``proto 158`` in a session table: unless that table's tun is another
  instance's;
* any other route with ``proto 158``: if it goes through no live tun, and no other
  instance has a tun here (a bypass route does not say whose it is: then it is left,
  and the log says so).

Each is ended (processes) or removed, and said so in one log line; what the journal
still names (an undo that failed and is retried) is left to the journal.  Objects of
a version before the marks (an unmarked ``istun*``, an unmarked ``iservice_*`` table)
are not provably iservice's and are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iservice.effects import rule as rule_effect
from iservice.effects import tun as tun_effect
from iservice.journal import Journal
from iservice.net import RT_TABLE_MAIN, RTPROT_ISERVICE
from iservice.ports import FirewallPort, NetworkOps, ProcessGroups

log = logging.getLogger("iservice.orphans")


@dataclass(frozen=True)
class Orphan:
    kind: str
    name: str
    removed: bool
    reason: str


def _journaled(journal: Journal) -> dict[str, set[Any]]:
    """What the journal still names, by kind: cgroup paths, tun aliases and ifindexes,
    table names, rule keys, route keys."""
    out: dict[str, set[Any]] = {"cgroup": set(), "alias": set(), "ifindex": set(),
                                "table": set(), "rule": set(), "route": set()}
    for session in journal.sessions():
        for c in journal.changes(session.id):
            d = c.data
            if c.kind == "cgroup":
                out["cgroup"].add(d.get("path"))
            elif c.kind == "tun":
                out["alias"].add(d.get("alias"))
                out["ifindex"].add(d.get("ifindex"))
            elif c.kind == "nft":
                out["table"].add(d.get("table"))
            elif c.kind == "rule":
                out["rule"].add((d.get("family"), d.get("priority"), d.get("table")))
            elif c.kind == "route":
                out["route"].add((d.get("dst"), d.get("table", RT_TABLE_MAIN)))
    return out


def sweep(journal: Journal, net: NetworkOps, nft: FirewallPort, cgroups: ProcessGroups | None,
          instance: str) -> list[Orphan]:
    """Find and remove this instance's unjournaled objects (module docstring)."""
    known = _journaled(journal)
    found: list[Orphan] = []

    def done(kind: str, name: str, removed: bool, reason: str) -> None:
        o = Orphan(kind, name, removed, reason)
        found.append(o)
        log.warning("event=orphan kind=%s name=%s removed=%s reason=%r", kind, name,
                    "yes" if removed else "no", reason)

    # 1. processes first: nothing of a lost session may run while its state goes
    if cgroups is not None:
        for path in cgroups.sessions():
            if path in known["cgroup"]:
                continue
            try:
                cgroups.remove(path)
                done("cgroup", path, True, "a session cgroup of this service, in no record")
            except OSError as exc:
                done("cgroup", path, False, f"cannot be removed: {exc}")
    # 2. tuns: ours by the mark; other instances' noted for the routes and rules below
    links = net.link_list()
    others: set[int] = set()
    live: set[int] = set()
    for link in links:
        if link.kind != "tun":
            continue
        owner = tun_effect.instance_of(link.alias)
        if owner is None:
            continue
        if owner != instance:
            others.add(link.index)
            live.add(link.index)
            continue
        if link.alias in known["alias"] or link.index in known["ifindex"]:
            live.add(link.index)
            continue
        try:
            tun_effect.undo(net, tun_effect.TunRecord(link.name, link.index, link.alias))
            done("tun", link.name, True, f"marked {link.alias!r}, in no record")
        except OSError as exc:
            live.add(link.index)
            done("tun", link.name, False, f"cannot be deleted: {exc}")
    # 3. nftables tables with this instance's mark
    for name in nft.tables():
        if name in known["table"]:
            continue
        mark = nft.table_mark(name)
        if mark is None or not mark.startswith(f"{nft.MARK_PREFIX}{instance}:") or \
                mark.count(":") != 2:
            continue
        try:
            nft.delete_table(name)
            done("nft", name, True, f"marked {mark!r}, in no record")
        except OSError as exc:
            done("nft", name, False, f"cannot be deleted: {exc}")
    # 4. rules and 5. routes with iservice's protocol
    for family in (socket.AF_INET, socket.AF_INET6):
        _rules(net, family, known, others, done)
        _routes(net, family, known, others, live, done)
    return found


def _session_table_tun(table: int | None) -> int | None:
    if table is None or table < rule_effect.TABLE_BASE:
        return None
    return table - rule_effect.TABLE_BASE


Report = Callable[[str, str, bool, str], None]


def _rules(net: NetworkOps, family: int, known: dict[str, set[Any]], others: set[int],
           done: Report) -> None:
    try:
        rules = [r for r in net.rule_list(family) if r[3] == RTPROT_ISERVICE]
    except OSError:
        return
    # a slot's session table, from the slot's rules that look one up
    slot_table: dict[int, int] = {}
    for priority, table, _uid, _proto in rules:
        tun = _session_table_tun(table)
        if tun is not None and table is not None:
            slot_table[_slot(priority)] = table
    for priority, table, uid, _proto in rules:
        session_table = table if _session_table_tun(table) is not None else \
            slot_table.get(_slot(priority))
        if (family, priority, table) in known["rule"]:
            continue
        tun = _session_table_tun(session_table)
        if tun is not None and tun in others:
            continue  # another instance's live session
        what = f"{'ipv4' if family == socket.AF_INET else 'ipv6'} priority {priority} " \
               f"table {table} uid {uid}"
        try:
            net.rule_del_ours(family, priority, table)
            done("rule", what, True, "proto 158, in no record, no live session's")
        except OSError as exc:
            done("rule", what, False, f"cannot be deleted: {exc}")


def _slot(priority: int) -> int:
    return (priority - rule_effect.PRIORITY) // 4


def _routes(net: NetworkOps, family: int, known: dict[str, set[Any]], others: set[int],
            live: set[int], done: Report) -> None:
    try:
        routes = net.routes_of_protocol(family)
    except OSError:
        return
    stale: list[Any] = []
    for r in routes:
        if (str(r.dst), r.table) in known["route"]:
            continue
        if r.oif is not None and r.oif in live:
            continue  # through a live tun: goes with it
        tun = _session_table_tun(r.table)
        if tun is not None:
            if tun in others:
                continue
        elif others:
            done("route", f"{r.dst} table {r.table}", False,
                 "proto 158 outside any tun, but another iservice instance is live here: "
                 "it may be that instance's bypass route")
            continue
        stale.append(r)
    for r in stale:
        with contextlib.suppress(OSError, ValueError):
            err = net.routes_apply([(False, r)])[0]
            done("route", f"{r.dst} table {r.table}", not err or err == errno.ESRCH,
                 "proto 158, in no record, through no live tun")
