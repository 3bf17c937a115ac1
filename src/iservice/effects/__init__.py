"""One module per journaled effect: what it changes, what its journal record holds, how
it is undone.

Every change the service makes on a session's behalf is one of these effects.  Each
module owns three things, and nothing else knows them:

* its **record**: a frozen dataclass with ``KIND`` (the journal's ``kind`` column) and
  ``to_data()`` / ``from_data()`` (the journal's JSON ``data``, checked on the way back:
  a journal is a file and may be damaged);
* how it is **applied** (called by the monitor's dispatch table, ``monitor.py``), journal
  first;
* how it is **undone** from the record alone (also at the next start after a crash),
  and when the record may go: only once the undo succeeded or the object is verifiably
  gone — a record whose undo failed stays and is tried again.

| module | record kind | effect |
|---|---|---|
| ``cgroup`` | ``cgroup`` | the session's processes (openvpn and all it forks) |
| ``tun`` | ``tun`` | the session's tun device (its addresses and routes go with it) |
| ``address`` | ``addr`` | an address on the tun |
| ``route`` | ``route`` | a route through the tun, or a bypass host route |
| ``rule`` | ``rule`` | a policy-routing rule of a per-user session (``route_scope = user``) |
| ``dns`` | ``dns`` | the session's DNS configuration (a backend's own undo data) |
| ``firewall`` | ``nft`` | the session's nftables table (kill switch, per-user DNS) |

The effects act on the machine only through the platform's ports (``ports.py``); they
never see wire bytes or names a client supplied.
"""

from __future__ import annotations

from typing import Any

from iservice.effects.address import AddressRecord
from iservice.effects.cgroup import CgroupRecord
from iservice.effects.dns import DnsRecord
from iservice.effects.firewall import TableRecord
from iservice.effects.route import RouteRecord
from iservice.effects.rule import RuleRecord
from iservice.effects.tun import TunRecord
from iservice.errors import JournalDataError

Record = (CgroupRecord | TunRecord | AddressRecord | RouteRecord | RuleRecord | DnsRecord
          | TableRecord)

_BY_KIND: dict[str, Any] = {cls.KIND: cls for cls in (
    CgroupRecord, TunRecord, AddressRecord, RouteRecord, RuleRecord, DnsRecord, TableRecord)}


def decode_record(kind: str, data: dict[str, Any]) -> Record:
    """The typed record of a journal row; JournalDataError if the row is not one."""
    cls = _BY_KIND.get(kind)
    if cls is None:
        raise JournalDataError(f"unknown journal record kind {kind!r}")
    record: Record = cls.from_data(data)
    return record


__all__ = ["AddressRecord", "CgroupRecord", "DnsRecord", "Record", "RouteRecord",
           "RuleRecord", "TableRecord", "TunRecord", "decode_record"]
