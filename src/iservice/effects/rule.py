"""Effect: the policy-routing rules of a per-user session (``route_scope = user``).

A non-admin session's routes go into a table of its own, which only its user's traffic
consults; root's and other users' traffic never does.  Rules do not merge tables by
longest prefix as one table would, so three rules per family (``proto 158``) keep the
meaning routes have in the main table as far as it matters:

1. ``uidrange U lookup TABLE suppress_prefixlength 1`` (IPv6: 7): the session's own
   routes except the halves of ``redirect-gateway def1`` (0/1, 128/1; ``::/3``,
   ``2000::/4``, ``3000::/4``, ``fc00::/7``) — pushed networks, the bypass route to the
   server, ``block-local``'s halves of the LAN;
2. ``uidrange U lookup main suppress_prefixlength 0``: the machine's own routes but its
   default route — so the LAN stays reachable under a full tunnel, as it does when the
   halves are in the main table;
3. ``uidrange U lookup TABLE``: the halves — everything else goes into the tunnel.

4. ``fwmark TABLE lookup TABLE``: the user's DNS packets, which the session's nftables
   table marks and sends to the tunnel's server (``linux/firewall.py``): the kernel
   routes a packet again after NAT changed its address, and that lookup knows the
   packet's mark but not its uid.

A lookup that finds nothing falls through to the next rule and finally to the main
table, so a split tunnel leaves the user's other traffic where it was.  (One difference
stays: a route of the machine more specific than a route of the session loses to it in
rule 1; in one table it would win.)

The table is ``TABLE_BASE + the tun's ifindex``: unique among live sessions of every
service instance in the network namespace (an ifindex is), and all its routes go with
the tun except the bypass route, which has a record of its own.

Record: family, priority, uid and table, written before the rule is added.  Undo:
delete exactly that rule (the kernel matches every field, iservice's protocol
included); one already gone counts as deleted.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any, ClassVar

from iservice.effects._records import integer
from iservice.errors import JournalDataError
from iservice.journal import Journal
from iservice.ports import NetworkOps

TABLE_BASE = 0x10000000
PRIORITY = 10000  # the first slot: before the main table's rule (32766), after local (0)
SLOTS = 4500  # four rules each: 10000 ... 27999
SLOT_ATTEMPTS = 16
RT_TABLE_MAIN = 254
# (priority offset, table = None: the session's, suppress_prefixlength by family, by mark)
RULES = ((0, None, {socket.AF_INET: 1, socket.AF_INET6: 7}, False),
         (1, RT_TABLE_MAIN, {socket.AF_INET: 0, socket.AF_INET6: 0}, False),
         (2, None, None, False),
         (3, None, None, True))


def table_for(tun_ifindex: int) -> int:
    return TABLE_BASE + tun_ifindex


@dataclass(frozen=True)
class RuleRecord:
    KIND: ClassVar[str] = "rule"
    family: int
    priority: int
    uid: int | None  # None: the rule matches a mark instead
    table: int
    suppress: int | None = None  # suppress_prefixlength
    fwmark: int | None = None

    def to_data(self) -> dict[str, Any]:
        return {"family": self.family, "priority": self.priority, "uid": self.uid,
                "table": self.table, "suppress": self.suppress, "fwmark": self.fwmark}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> RuleRecord:
        family = integer(d, "family")
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise JournalDataError(f"journal record: bad rule family {family}")
        table = integer(d, "table", high=2**32 - 2)
        if table != RT_TABLE_MAIN and table < TABLE_BASE:
            raise JournalDataError(f"journal record: table {table} is not iservice's")
        fwmark = integer(d, "fwmark", optional=True, low=TABLE_BASE, high=2**32 - 2)
        uid = integer(d, "uid", optional=True, high=2**32 - 2)
        if (uid is None) == (fwmark is None):
            raise JournalDataError("journal record: a rule matches a uid or a mark")
        return cls(family, integer(d, "priority", high=2**32 - 2), uid, table,
                   integer(d, "suppress", optional=True, high=128), fwmark)


def add(journal: Journal, net: NetworkOps, session_id: int, uid: int, tun_ifindex: int) -> int:
    """The session's rules for both families (journal first); the table they look up.

    Each session has a slot of four priorities of its own (from its tun's ifindex; the
    next slot if one is taken): two sessions of one user would otherwise need the same
    rule 2, and the first to end would take it from the other."""
    table = table_for(tun_ifindex)
    for attempt in range(SLOT_ATTEMPTS):
        base = PRIORITY + 4 * ((tun_ifindex + attempt) % SLOTS)
        made: list[tuple[int, RuleRecord]] = []
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                for offset, which, suppress, by_mark in RULES:
                    rec = RuleRecord(family, base + offset, None if by_mark else uid,
                                     table if which is None else which,
                                     None if suppress is None else suppress[family],
                                     table if by_mark else None)
                    change = journal.record(session_id, rec.KIND, rec.to_data())
                    try:
                        net.rule_add(family, rec.priority, rec.uid, rec.table, rec.suppress,
                                     rec.fwmark)
                    except OSError:
                        journal.forget([change])
                        raise
                    made.append((change, rec))
            return table
        except OSError as exc:
            for change, rec in reversed(made):
                undo(net, rec)
                journal.forget([change])
            if exc.errno != errno.EEXIST:
                raise
    raise OSError(errno.EEXIST, "no free rule priority slot")


def undo(net: NetworkOps, rec: RuleRecord) -> None:
    try:
        net.rule_del(rec.family, rec.priority, rec.uid, rec.table, rec.suppress, rec.fwmark)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ESRCH):
            raise
