"""Effect: the session's DNS configuration, through the backend chosen at start.

Record: the backend's own undo data (``linux/dns.py``: ``DnsBackend.undo_data``; it
names the backend, so the undo after a crash uses the one that made the change even
if the setting changed meanwhile).  One record per session, written before its first
change; a later change of the same session replaces the configuration under it.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any, ClassVar

from iservice.effects._records import text
from iservice.journal import Journal
from iservice.policy.requests import SetDns
from iservice.ports import DnsBackend, DnsPort


@dataclass(frozen=True)
class DnsRecord:
    KIND: ClassVar[str] = "dns"
    backend: str
    data: dict[str, Any] = field(hash=False, compare=True)

    def to_data(self) -> dict[str, Any]:
        return self.data

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> DnsRecord:
        return cls(text(d, "backend"), dict(d))


class Dns:
    """The DNS records of the live sessions (session id → its record's id)."""

    def __init__(self, journal: Journal, backend: DnsBackend, port: DnsPort) -> None:
        self.journal = journal
        self.backend = backend
        self.port = port
        self._changes: dict[int, int] = {}

    def set(self, session_id: int, tun_ifindex: int, op: SetDns) -> int | None:
        """Give the session's link ``op.state`` (empty: none); the record's id."""
        change = self._changes.get(session_id)
        if op.state.empty:
            if change is not None:
                self._revert(session_id, change)
            return None
        ifname = socket.if_indextoname(tun_ifindex)
        fresh = change is None
        if change is None:
            change = self.journal.record(session_id, DnsRecord.KIND,
                                         self.backend.undo_data(session_id, tun_ifindex, ifname))
            self._changes[session_id] = change
        try:
            self.backend.apply(session_id, tun_ifindex, ifname, op.state.link(), change)
        except OSError:
            if fresh:
                with contextlib.suppress(OSError):
                    self._revert(session_id, change)
            raise
        return change

    def _revert(self, session_id: int, change: int) -> None:
        rec = self.journal.get(change)
        if rec is not None:
            self.undo(session_id, DnsRecord.from_data(rec.data))
        self.journal.forget([change])
        self._changes.pop(session_id, None)

    def flush(self) -> None:
        self.backend.flush()

    def undo(self, session_id: int, rec: DnsRecord) -> None:
        self.backend_for(rec).revert(session_id, rec.data)

    def session_ended(self, session_id: int) -> None:
        self._changes.pop(session_id, None)

    def backend_for(self, rec: DnsRecord) -> DnsBackend:
        """The backend that made a record: the current one, or one made for the undo."""
        name, data = rec.backend, rec.data
        if name == self.backend.name and (name != "file" or
                                          data.get("path") == getattr(self.backend, "path", None)):
            return self.backend
        return self.port.backend_for(data, self.journal.update)
