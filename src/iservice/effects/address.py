"""Effect: an address on the session's tun.

Record: the address, its prefix length and the tun's ifindex, written before the
address is added.  Undo: it goes with the tun (the tun's record removes it with the
device); a ``del_address`` of openvpn's removes it and its record at once.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, ClassVar

from iservice.effects._records import integer, text
from iservice.errors import JournalDataError
from iservice.journal import Journal
from iservice.linux.netlink import Rtnl
from iservice.policy.requests import AddAddress, DelAddress

GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


@dataclass(frozen=True)
class AddressRecord:
    KIND: ClassVar[str] = "addr"
    address: IPv4Address | IPv6Address
    prefix_len: int
    ifindex: int

    def to_data(self) -> dict[str, Any]:
        return {"address": str(self.address), "prefix_len": self.prefix_len,
                "ifindex": self.ifindex}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> AddressRecord:
        try:
            address = ip_address(text(d, "address"))
        except ValueError:
            raise JournalDataError(f"journal record: bad address {d.get('address')!r}") from None
        return cls(address, integer(d, "prefix_len", high=address.max_prefixlen),
                   integer(d, "ifindex", low=1, high=2**31 - 1))


def add(journal: Journal, net: Rtnl, session_id: int, tun_ifindex: int,
        op: AddAddress) -> int:
    """Add the address (journal first); its record's id.  Raises OSError."""
    if op.existing is not None:  # already journaled: put it in again
        try:
            net.addr_add(tun_ifindex, op.key.address, op.key.prefix_len)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        return op.existing
    rec = AddressRecord(op.key.address, op.key.prefix_len, tun_ifindex)
    change = journal.record(session_id, rec.KIND, rec.to_data())
    try:
        net.addr_add(tun_ifindex, op.key.address, op.key.prefix_len)
    except OSError:
        journal.forget([change])
        raise
    return change


def delete(journal: Journal, net: Rtnl, tun_ifindex: int, op: DelAddress) -> None:
    try:
        net.addr_del(tun_ifindex, op.key.address, op.key.prefix_len)
    except OSError as exc:
        if exc.errno not in GONE:
            raise
    journal.forget([op.change_id])
