"""Effect: the session's nftables table (the kill switch of ``add_wfp_block``).

Record: the table's name, written before the table is created.  Undo: delete it (one
already gone counts as deleted).  Every table lets every live session's VPN servers
through for that session's user (the tunnels' own connections), so the set of servers
is kept here and every table is remade when it changes — only when it changes.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from iservice.effects._records import text
from iservice.errors import BackendError, JournalDataError
from iservice.journal import Journal
from iservice.policy.dns import DnsState
from iservice.policy.requests import SetBlock
from iservice.ports import FirewallPort

log = logging.getLogger("iservice.effects.firewall")

_TABLE_RE = re.compile(r"iservice_\d+(_\d+)?(_dns)?")


@dataclass(frozen=True)
class TableRecord:
    KIND: ClassVar[str] = "nft"
    table: str

    def to_data(self) -> dict[str, Any]:
        return {"table": self.table}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> TableRecord:
        table = text(d, "table")
        if not _TABLE_RE.fullmatch(table):
            raise JournalDataError(f"journal record: {table!r} is not an iservice table")
        return cls(table)


def _nrpt(state: DnsState, version: int) -> list[object]:
    if state.nrpt is None:
        return []
    return [a for a in state.nrpt.servers if getattr(a, "version", None) == version]


@dataclass
class _Block:
    table: str
    flags: int
    change_id: int
    scope_uid: int | None = None
    unscoped: int = 0


class Firewall:
    """The kill-switch tables of the live sessions and the VPN servers they let through."""

    def __init__(self, journal: Journal, nft: FirewallPort, instance: str = "") -> None:
        self.journal = journal
        self.nft = nft
        self.instance = instance
        self._blocks: dict[int, _Block] = {}  # session id → its table
        self._redirects: dict[int, tuple[str, int]] = {}  # session id → (DNS table, record)
        # session id → (its user, its VPN servers): every table lets them through
        self._servers: dict[int, tuple[int, tuple[str, ...]]] = {}

    def mark(self, session_id: int) -> str:
        return f"{self.nft.MARK_PREFIX}{self.instance}:{session_id}"

    def _all_servers(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for uid, addrs in self._servers.values():
            out.setdefault(uid, [])
            out[uid] += [a for a in addrs if a not in out[uid]]
        return out

    def set_block(self, session_id: int, op: SetBlock) -> int | None:
        """Give the session's table ``op.flags`` (0: no table); the record's id."""
        cur = self._blocks.get(session_id)
        if op.flags == 0:
            if cur is not None:
                self.nft.delete_table(cur.table)
                self.journal.forget([cur.change_id])
                del self._blocks[session_id]
            return None
        if cur is not None:
            if (cur.flags, cur.scope_uid, cur.unscoped) == (op.flags, op.scope_uid, op.unscoped):
                return cur.change_id  # nothing changes: nft is not run
            self.nft.replace_table(cur.table, op.flags, self._all_servers(),
                              scope_uid=op.scope_uid, unscoped=op.unscoped,
                              mark=self.mark(session_id))
            cur.flags, cur.scope_uid, cur.unscoped = op.flags, op.scope_uid, op.unscoped
            return cur.change_id
        for k in range(self.nft.TABLE_ATTEMPTS):
            name = self.nft.table_name(session_id, k)
            change = self.journal.record(session_id, TableRecord.KIND, {"table": name})
            try:
                self.nft.create_table(name, op.flags, self._all_servers(),
                                 scope_uid=op.scope_uid, unscoped=op.unscoped,
                                 mark=self.mark(session_id))
            except OSError as exc:
                self.journal.forget([change])
                if exc.errno == errno.EEXIST:
                    continue
                raise
            self._blocks[session_id] = _Block(name, op.flags, change, op.scope_uid, op.unscoped)
            return change
        raise BackendError(errno.EEXIST, f"iservice_{session_id} and its variants exist")

    def set_servers(self, session_id: int, uid: int, servers: Sequence[str]) -> None:
        """The VPN server addresses of a session: every table lets the user's packets to
        them through.  The tables are remade only if the whole set changed."""
        before = self._all_servers()
        if servers:
            self._servers[session_id] = (uid, tuple(servers))
        else:
            self._servers.pop(session_id, None)
        if self._all_servers() != before:
            self._sync()

    def _sync(self) -> None:
        servers = self._all_servers()
        for sid, block in self._blocks.items():
            try:
                self.nft.replace_table(block.table, block.flags, servers,
                                  scope_uid=block.scope_uid, unscoped=block.unscoped,
                                  mark=self.mark(sid))
            except OSError as exc:
                log.error("event=block-sync-failed session=%d table=%s error=%r", sid,
                          block.table, str(exc))

    # -- a per-user session's DNS (route_scope = user) ------------------------------

    def set_dns_redirect(self, session_id: int, uid: int, tun: str, table: int,
                         state: DnsState) -> int | None:
        """Send ``uid``'s DNS packets to the state's first servers (none: stop); the
        record's id.  linux/firewall.py ``dns_redirect_body`` says how."""
        s4 = next((str(a) for a in (*state.servers4, *_nrpt(state, 4))), None)
        s6 = next((str(a) for a in (*state.servers6, *_nrpt(state, 6))), None)
        cur = self._redirects.get(session_id)
        if s4 is None and s6 is None:
            if cur is not None:
                self.nft.delete_table(cur[0])
                self.journal.forget([cur[1]])
                del self._redirects[session_id]
            return None
        if cur is not None:
            self.nft.replace_dns_redirect(cur[0], uid, tun, s4, s6, table, self.mark(session_id))
            return cur[1]
        for k in range(self.nft.TABLE_ATTEMPTS):
            name = self.nft.dns_redirect_table_name(session_id, k)
            change = self.journal.record(session_id, TableRecord.KIND, {"table": name})
            try:
                self.nft.create_dns_redirect(name, uid, tun, s4, s6, table, self.mark(session_id))
            except OSError as exc:
                self.journal.forget([change])
                if exc.errno == errno.EEXIST:
                    continue
                raise
            self._redirects[session_id] = (name, change)
            return change
        raise BackendError(errno.EEXIST, f"{self.nft.dns_redirect_table_name(session_id)} "
                           "and its variants exist")

    def undo(self, rec: TableRecord) -> None:
        self.nft.delete_table(rec.table)

    def session_ended(self, session_id: int) -> None:
        self._redirects.pop(session_id, None)
        self._blocks.pop(session_id, None)
        if self._servers.pop(session_id, None) and self._blocks:
            self._sync()
