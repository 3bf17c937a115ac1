"""Effect: the session's tun device.

Record: its name, its ifindex (``None`` until the device exists) and the alias the
service marks it with (``linux/tun.py``, ``TunPort``: set before the device becomes persistent, and
only CAP_NET_ADMIN can change it).  The record is written before the device is made.

Undo deletes the device the record names — by its ifindex, checked to still be a tun
with the recorded name and alias — whatever its owner, group or persistence are now
(the user may change those with ``TUNSETOWNER``/``TUNSETGROUP``/``TUNSETPERSIST``).
The addresses and routes through it go with it in the kernel, so their records go
with this one, once the device is verifiably gone.  A device that does not carry the
record's mark is someone else's (or a new device at a reused index): it is left alone,
and the record goes, since the device it named is gone.
"""

from __future__ import annotations

import errno
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

from iservice.effects._records import integer, text
from iservice.errors import JournalDataError
from iservice.ports import NetworkOps, TunPort

log = logging.getLogger("iservice.effects.tun")

NAME_ATTEMPTS = 10
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True)
class TunRecord:
    KIND: ClassVar[str] = "tun"
    name: str
    ifindex: int | None
    alias: str | None  # None: journaled by a version before the marks

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "ifindex": self.ifindex, "alias": self.alias}

    @classmethod
    def from_data(cls, d: dict[str, Any]) -> TunRecord:
        name = text(d, "name")
        if not _NAME_RE.fullmatch(name) or name in (".", ".."):
            raise JournalDataError(f"journal record: bad tun name {name!r}")
        return cls(name, integer(d, "ifindex", optional=True, low=1, high=2**31 - 1),
                   text(d, "alias", optional=True))


def names(session_id: int) -> list[str]:
    """The names tried for a session's tun: ``istun<id>``, then ``istun<id>.<k>`` (another
    service instance in the namespace may have taken one)."""
    return [f"istun{session_id}" + (f".{k}" if k else "") for k in range(NAME_ATTEMPTS)]


def alias_for(instance: str, session_id: int) -> str:
    """The mark of a session's tun: its owner (the instance and its state directory:
    ``server.owner_id``), the session and a random token, so that no other service's (or
    an older journal's) device can carry it."""
    return f"{MARK_PREFIX}{instance}:{session_id}:{secrets.token_hex(6)}"


MARK_PREFIX = "iservice:"


def instance_of(alias: str | None) -> str | None:
    """The instance in a mark, or None if ``alias`` is not iservice's mark."""
    if alias is None or not alias.startswith(MARK_PREFIX):
        return None
    parts = alias[len(MARK_PREFIX):].rsplit(":", 2)
    return parts[0] if len(parts) == 3 else None


def create(net: NetworkOps, tuns: TunPort, rec: TunRecord, uid: int, gid: int) -> int:
    """Make the device the record names, marked, persistent, owned by the user, link up;
    its ifindex.  FileExistsError if the name is taken (the caller tries the next).

    The mark and the link's state go in one rtnetlink request, before the device is
    made persistent (a second request after it cost ~50 µs of the start path)."""
    alias = rec.alias
    assert alias is not None
    return tuns.create_tun(rec.name, uid, gid,
                           mark=lambda ifindex: net.link_set(ifindex, up=True, alias=alias))


def _ours(info_kind: str | None, info_name: str, info_alias: str | None,
          rec: TunRecord) -> bool:
    if info_kind != "tun" or info_name != rec.name:
        return False
    if rec.alias is not None:
        return info_alias == rec.alias
    # A record of a version before the marks: only its ifindex proves the device.
    return rec.ifindex is not None


def undo(net: NetworkOps, rec: TunRecord) -> None:
    """Delete the device; returns once it is verifiably gone (OSError otherwise: the
    record stays and is tried again)."""
    index = rec.ifindex if rec.ifindex is not None else net.link_index(rec.name)
    if index is None:
        return  # never made, or gone
    try:
        info = net.link_info(index)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return
        raise
    if not _ours(info.kind, info.name, info.alias, rec):
        log.warning("event=tun-not-ours name=%s ifindex=%d found=%s/%s/%r: left alone",
                    rec.name, index, info.kind, info.name, info.alias)
        return
    try:
        net.link_del(index)
    except OSError as exc:
        if exc.errno != errno.ENODEV:
            raise
    try:
        net.link_info(index)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return
        raise
    raise OSError(errno.EBUSY, f"tun {rec.name} ({index}) is still there after its deletion")
