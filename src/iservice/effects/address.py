"""Effect: an address on the session's tun.

Record: the address, its prefix length and the tun's ifindex, written before the
address is added.  Undo: it goes with the tun (the tun's record removes it with the
device); a ``del_address`` of openvpn's removes it and its record at once.

A per-user session (``route_scope = user``) adds the address without the kernel's
prefix route (which would be in the main table, steering everybody's traffic for the
tunnel's subnet into this tun) and puts that route into its own table instead; it goes
with the tun like every route through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any, ClassVar

from iservice.effects._records import integer, text
from iservice.errors import JournalDataError
from iservice.journal import Journal
from iservice.net import RouteSpec
from iservice.policy.requests import AddAddress, DelAddress
from iservice.ports import NetworkOps

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


def add(journal: Journal, net: NetworkOps, session_id: int, tun_ifindex: int,
        op: AddAddress) -> int:
    """Add the address (journal first); its record's id.  Raises OSError."""
    if op.existing is not None:  # already journaled: put it in again
        try:
            _add(net, tun_ifindex, op)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        return op.existing
    rec = AddressRecord(op.key.address, op.key.prefix_len, tun_ifindex)
    change = journal.record(session_id, rec.KIND, rec.to_data())
    try:
        _add(net, tun_ifindex, op)
    except OSError:
        journal.forget([change])
        raise
    return change


def _prefix_route(tun_ifindex: int, address: IPv4Address | IPv6Address, prefix_len: int,
                  table: int) -> RouteSpec:
    return RouteSpec(ip_network((address, prefix_len), strict=False), tun_ifindex, None, None,
                     table)


def _add(net: NetworkOps, tun_ifindex: int, op: AddAddress) -> None:
    if op.table is None:
        net.addr_add(tun_ifindex, op.key.address, op.key.prefix_len)
        return
    net.addr_add(tun_ifindex, op.key.address, op.key.prefix_len, noprefixroute=True)
    err = net.routes_apply([(True, _prefix_route(tun_ifindex, op.key.address,
                                                 op.key.prefix_len, op.table))])[0]
    if err and err != errno.EEXIST:
        with contextlib.suppress(OSError):
            net.addr_del(tun_ifindex, op.key.address, op.key.prefix_len)
        raise OSError(err, os.strerror(err))


def delete(journal: Journal, net: NetworkOps, tun_ifindex: int, op: DelAddress,
           table: int | None = None) -> None:
    try:
        net.addr_del(tun_ifindex, op.key.address, op.key.prefix_len)
    except OSError as exc:
        if exc.errno not in GONE:
            raise
    if table is not None:
        net.routes_apply([(False, _prefix_route(tun_ifindex, op.key.address,
                                                op.key.prefix_len, table))])
    journal.forget([op.change_id])
