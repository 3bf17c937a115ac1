"""Service channel codec: ``openvpn-msg.h`` of OpenVPN 2.7 (SPEC §5), and iservice's
own extension messages.

Pure functions over frozen dataclasses: bytes in, a typed message or a typed
error out; no sockets, no clocks.  Native x64 layout of the C structs,
little-endian, no packing (the padding is written as zeros and ignored when
read).  ``AF_INET`` is 2 and ``AF_INET6`` 23 on the wire (the Windows values);
the dataclasses use Python's ``socket.AF_INET``/``socket.AF_INET6`` (or imply
the family from the ``ipaddress`` type).

Every layout is declared once, as data: ``LAYOUTS`` below, one ``Layout`` per C
struct with its fields' offsets and kinds (``wire.layout`` says what derives from
it: the struct format, the size check, encoding, decoding, the documentation table
in ``docs/architecture.md`` and the plugin's C header).  ``interface_t`` is
``uint32 index`` + ``char name[256]`` (260 bytes); an address is the 16-byte
``inet_address_t`` union: IPv4 in the first 4 bytes, network order, the rest zero
when encoded and ignored when decoded.

Types 9/10 (nbt, never handled by the original) and 16 (deprecated ring buffers)
are unknown here, as are 0 (an ack is not a request) and 21 and up, except
iservice's extensions from 0x100 on (``ISERVICE_*``; docs/architecture.md,
"The channel's extension messages"): openvpn.exe never sends them and the Windows
original answers them ``ERROR_MESSAGE_TYPE``.

``decode_message`` rules, in order (SPEC §5 plus stricter ones):

* longer than ``MAX_MESSAGE_SIZE`` (1696) → ``MessageTooLargeError`` (the
  session ends: CVE-2024-27459);
* shorter than the 24-byte header → ``MessageDataError`` with message_id -1;
* header ``size`` != received length → ``MessageDataError`` (the id read);
* unknown type → ``MessageTypeError``;
* length != the type's fixed size → ``MessageDataError`` (the original skips
  this check for dns, nrpt, wins and register_dns; we do not);
* then each field in offset order: a text field is read up to its first NUL, never
  past its end; no NUL in the field → ``MessageDataError`` ("unterminated");
  invalid UTF-8 → ``MessageDataError``; a family other than 2/23, dns/wins
  ``addr_len`` > 4, an unknown extension event or flag → ``MessageDataError``.

Fields the original ignores are ignored here too: dns/wins address slots
beyond ``addr_len``; nrpt address entries from the first empty one on (the
original stops there, so later entries are neither read nor validated);
nrpt ``flags`` bits other than dnssec.

Semantic ranges (prefix_len ≤ 32, MTU, which interface) are policy, not
format: the dataclasses only check what the wire format itself needs (ints
fit their C type, text fits its field with room for the NUL, addresses match
the family), so ``encode_message`` never produces bytes ``decode_message``
rejects, and ``decode_message(encode_message(m)) == m``.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol, TypeAlias

from iservice.errors import MessageDataError, MessageTooLargeError, MessageTypeError
from iservice.wire import layout as lay
from iservice.wire.layout import (
    INT32,
    UINT32,
    Bits,
    Bytes,
    Count,
    Field,
    Flag,
    Kind,
    Layout,
    OneOf,
    Text,
    Wire,
)

__all__ = [
    "ACK_SIZE",
    "ENV_DATA_SIZE",
    "ENV_EVENTS",
    "ENV_FIRST",
    "ENV_LAST",
    "EVENT_DOWN",
    "EVENT_ROUTE_PREDOWN",
    "EVENT_ROUTE_UP",
    "EVENT_UP",
    "HEADER_SIZE",
    "IFACE_INDEX_INVALID",
    "LAYOUTS",
    "MAX_ENV_BYTES",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_SIZES",
    "WIRE_AF_INET",
    "WIRE_AF_INET6",
    "Ack",
    "AddressMsg",
    "CreateAdapterMsg",
    "DelTunRoutesMsg",
    "DnsCfgMsg",
    "EnableDhcpMsg",
    "EnvChunkMsg",
    "EnvResultMsg",
    "FlushNeighborsMsg",
    "Interface",
    "Message",
    "MsgType",
    "NrptCfgMsg",
    "RegisterDnsMsg",
    "RouteMsg",
    "SetMtuMsg",
    "WfpBlockMsg",
    "WinsCfgMsg",
    "ack_bytes",
    "c_header",
    "decode_ack",
    "decode_env_result",
    "decode_message",
    "encode_ack",
    "encode_env_result",
    "encode_message",
    "env_chunks",
    "layout_table",
    "peek_message_id",
]


class MsgType(enum.IntEnum):
    """``message_type_t`` of OpenVPN 2.7 (2.6 numbers differ; see the notes §4)."""

    ACK = 0
    ADD_ADDRESS = 1
    DEL_ADDRESS = 2
    ADD_ROUTE = 3
    DEL_ROUTE = 4
    ADD_DNS_CFG = 5
    DEL_DNS_CFG = 6
    ADD_NRPT_CFG = 7
    DEL_NRPT_CFG = 8
    FLUSH_NEIGHBORS = 11
    ADD_WFP_BLOCK = 12
    DEL_WFP_BLOCK = 13
    REGISTER_DNS = 14
    ENABLE_DHCP = 15
    SET_MTU = 17
    ADD_WINS_CFG = 18
    DEL_WINS_CFG = 19
    CREATE_ADAPTER = 20
    # iservice's extensions (Linux), never sent by openvpn.exe (the Windows original
    # answers them ERROR_MESSAGE_TYPE); docs/architecture.md describes them.
    # Header only: "openvpn is taking its routes down without telling which"
    # (route-pre-down without route_* variables, after a persist-tun restart whose
    # pushed options changed).
    ISERVICE_DEL_TUN_ROUTES = 0x100
    # openvpn's environment at one event, in pieces: the service makes the requests.
    ISERVICE_ENV = 0x101
    # The service's one answer to a whole environment (service → openvpn's side).
    ISERVICE_ENV_RESULT = 0x102


WIRE_AF_INET = 2
WIRE_AF_INET6 = 23
IFACE_INDEX_INVALID = 0xFFFFFFFF  # TUN_ADAPTER_INDEX_INVALID: use the name
HEADER_SIZE = lay.HEADER_SIZE
ACK_SIZE = 32

# Field sizes and flag values of openvpn-msg.h.
IFACE_NAME_SIZE = 256
DOMAINS_SIZE = 512
NRPT_ADDR_NUM = 8
NRPT_ADDR_SIZE = 48
MAX_DNS_ADDRS = 4
MAX_WINS_ADDRS = 4
WFP_BLOCK_LOCAL = 1
WFP_BLOCK_DNS = 2
NRPT_DNSSEC = 1
ADAPTER_TYPE_DCO = 0
ADAPTER_TYPE_TAP = 1

# ISERVICE_ENV: openvpn's plugin event numbers (openvpn-plugin.h's OPENVPN_PLUGIN_*), the
# chunk flags, and the bound on one environment: 8 MiB, ~85,000 IPv4 routes (30,000 are
# ~3 MB).  The service parses an environment into ~9× its size for a moment (one at a
# time: it is done in the event loop), so the bound is the service's memory too.
EVENT_UP = 0
EVENT_DOWN = 1
EVENT_ROUTE_UP = 2
EVENT_ROUTE_PREDOWN = 12
ENV_EVENTS: dict[int, str] = {EVENT_UP: "up", EVENT_DOWN: "down", EVENT_ROUTE_UP: "route-up",
                              EVENT_ROUTE_PREDOWN: "route-pre-down"}
ENV_FIRST = 1  # the chunk starts an environment
ENV_LAST = 2  # the chunk ends it: the service makes the requests and answers once
MAX_ENV_BYTES = 8 << 20
MAX_MESSAGE_SIZE = 1696  # sizeof(pipe_message_t) = the nrpt message
ENV_DATA_OFFSET = 36
ENV_DATA_SIZE = MAX_MESSAGE_SIZE - ENV_DATA_OFFSET  # an environment chunk is the largest size

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT16_MIN, _INT16_MAX = -(2**15), 2**15 - 1
_UINT32_MAX = 2**32 - 1

_FAMILY_FROM_WIRE: dict[int, int] = {
    WIRE_AF_INET: socket.AF_INET,
    WIRE_AF_INET6: socket.AF_INET6,
}
_FAMILY_TO_WIRE: dict[int, int] = {v: k for k, v in _FAMILY_FROM_WIRE.items()}
_FAMILY_NAMES = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6"}
_IP_TYPES = (IPv4Address, IPv6Address)
_S_INT32 = struct.Struct("<i")


# --------------------------------------------------------------------------- validation
# These raise TypeError/ValueError: building an invalid message is the caller's bug.


def _check_int(value: object, what: str, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} {value} does not fit its C field ({lo}..{hi})")


def _check_text(value: object, what: str, size: int) -> None:
    """``value`` fits ``char field[size]`` as UTF-8 with its terminating NUL."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} contains NUL")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not encodable as UTF-8 (unpaired surrogate)") from None
    if n >= size:
        raise ValueError(f"{what} is {n} bytes of UTF-8; the field holds {size - 1}")


def _check_ip(value: object, what: str, version: int | None = None) -> None:
    # Exact types: IPv4Interface is a subclass and would not round-trip.
    if not isinstance(value, IPv4Address | IPv6Address) or type(value) not in _IP_TYPES:
        raise TypeError(f"{what} must be IPv4Address or IPv6Address, not {type(value).__name__}")
    if version is not None and value.version != version:
        raise ValueError(f"{what} is IPv{value.version}, expected IPv{version}")
    if isinstance(value, IPv6Address) and value.scope_id is not None:
        raise ValueError(f"{what} has a scope id, which the wire format cannot carry")


def _check_type(msg_type: object, allowed: tuple[MsgType, ...], cls: str) -> None:
    # isinstance first: 3.0 or True would compare equal to a member.
    if not isinstance(msg_type, int) or isinstance(msg_type, bool) or msg_type not in allowed:
        names = "/".join(t.name for t in allowed)
        raise ValueError(f"{cls}.type must be {names}, not {msg_type!r}")


def _check_family(value: object, what: str) -> None:
    if value not in _FAMILY_TO_WIRE:
        raise ValueError(f"{what} must be socket.AF_INET or socket.AF_INET6, not {value!r}")


def _check_tuple(value: object, what: str, max_len: int) -> tuple[object, ...]:
    if not isinstance(value, tuple):
        raise TypeError(f"{what} must be a tuple, not {type(value).__name__}")
    if len(value) > max_len:
        raise ValueError(f"{what} has {len(value)} entries; at most {max_len} fit")
    return value


def _check_head(msg: _HasHead, allowed: tuple[MsgType, ...]) -> None:
    _check_type(msg.type, allowed, type(msg).__name__)
    # Normalise a plain int to the enum member so equality and repr are stable.
    object.__setattr__(msg, "type", MsgType(msg.type))
    _check_int(msg.message_id, "message_id", _INT32_MIN, _INT32_MAX)


class _HasHead(Protocol):
    # Typing aid for _check_head: every message dataclass has these two fields first.
    @property
    def type(self) -> MsgType: ...
    @property
    def message_id(self) -> int: ...


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class Interface:
    """``interface_t``: an index (``IFACE_INDEX_INVALID`` = use the name) and a name."""

    index: int
    name: str

    def __post_init__(self) -> None:
        _check_int(self.index, "iface.index", 0, _UINT32_MAX)
        _check_text(self.name, "iface.name", IFACE_NAME_SIZE)


def _check_iface(value: object) -> None:
    if type(value) is not Interface:
        raise TypeError(f"iface must be Interface, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class AddressMsg:
    """add/del_address; the family is the address's version."""

    type: MsgType
    message_id: int
    address: IPv4Address | IPv6Address
    prefix_len: int
    iface: Interface

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ADD_ADDRESS, MsgType.DEL_ADDRESS))
        _check_ip(self.address, "address")
        _check_int(self.prefix_len, "prefix_len", _INT32_MIN, _INT32_MAX)
        _check_iface(self.iface)


@dataclass(frozen=True, slots=True)
class RouteMsg:
    """add/del_route; prefix and gateway share one family field, so one version."""

    type: MsgType
    message_id: int
    prefix: IPv4Address | IPv6Address
    prefix_len: int
    gateway: IPv4Address | IPv6Address
    iface: Interface
    metric: int  # -1 = unset

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ADD_ROUTE, MsgType.DEL_ROUTE))
        _check_ip(self.prefix, "prefix")
        _check_ip(self.gateway, "gateway", self.prefix.version)
        _check_int(self.prefix_len, "prefix_len", _INT32_MIN, _INT32_MAX)
        _check_iface(self.iface)
        _check_int(self.metric, "metric", _INT32_MIN, _INT32_MAX)


@dataclass(frozen=True, slots=True)
class DnsCfgMsg:
    """add/del_dns_cfg: up to 4 servers of ``family`` and a comma list of domains.

    ``family`` is on the wire even when there are no addresses (openvpn sends
    AF_INET for a domains-only message), so it is kept.
    """

    type: MsgType
    message_id: int
    iface: Interface
    domains: str
    family: int
    addresses: tuple[IPv4Address | IPv6Address, ...]

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ADD_DNS_CFG, MsgType.DEL_DNS_CFG))
        _check_iface(self.iface)
        _check_text(self.domains, "domains", DOMAINS_SIZE)
        _check_family(self.family, "family")
        version = 4 if self.family == socket.AF_INET else 6
        for i, a in enumerate(_check_tuple(self.addresses, "addresses", MAX_DNS_ADDRS)):
            _check_ip(a, f"addresses[{i}]", version)


@dataclass(frozen=True, slots=True)
class NrptCfgMsg:
    """add/del_nrpt_cfg: DNS server addresses as text, domains as comma lists."""

    type: MsgType
    message_id: int
    iface: Interface
    addresses: tuple[str, ...]  # non-empty entries, in wire order
    resolve_domains: str
    search_domains: str
    dnssec: bool

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ADD_NRPT_CFG, MsgType.DEL_NRPT_CFG))
        _check_iface(self.iface)
        for i, a in enumerate(_check_tuple(self.addresses, "addresses", NRPT_ADDR_NUM)):
            _check_text(a, f"addresses[{i}]", NRPT_ADDR_SIZE)
            if not a:
                # An empty entry ends the list on the wire; it could not round-trip.
                raise ValueError(f"addresses[{i}] is empty")
        _check_text(self.resolve_domains, "resolve_domains", DOMAINS_SIZE)
        _check_text(self.search_domains, "search_domains", DOMAINS_SIZE)
        if type(self.dnssec) is not bool:
            raise TypeError("dnssec must be bool")


@dataclass(frozen=True, slots=True)
class FlushNeighborsMsg:
    """flush_neighbors: drop the neighbour (ARP/ND) cache of ``family`` on the interface."""

    type: MsgType
    message_id: int
    family: int
    iface: Interface

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.FLUSH_NEIGHBORS,))
        _check_family(self.family, "family")
        _check_iface(self.iface)


@dataclass(frozen=True, slots=True)
class WfpBlockMsg:
    """add/del_wfp_block: ``flags`` = WFP_BLOCK_LOCAL | WFP_BLOCK_DNS (carried as is)."""

    type: MsgType
    message_id: int
    flags: int
    iface: Interface

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ADD_WFP_BLOCK, MsgType.DEL_WFP_BLOCK))
        _check_int(self.flags, "flags", 0, _UINT32_MAX)
        _check_iface(self.iface)


@dataclass(frozen=True, slots=True)
class RegisterDnsMsg:
    """register_dns: a bare header."""

    type: MsgType
    message_id: int

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.REGISTER_DNS,))


@dataclass(frozen=True, slots=True)
class DelTunRoutesMsg:
    """iservice extension: delete every route through the session's tun (header only)."""

    type: MsgType
    message_id: int

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ISERVICE_DEL_TUN_ROUTES,))


@dataclass(frozen=True, slots=True)
class EnableDhcpMsg:
    """enable_dhcp (Windows-only)."""

    type: MsgType
    message_id: int
    iface: Interface

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ENABLE_DHCP,))
        _check_iface(self.iface)


@dataclass(frozen=True, slots=True)
class SetMtuMsg:
    """set_mtu for ``family`` on the interface."""

    type: MsgType
    message_id: int
    iface: Interface
    family: int
    mtu: int

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.SET_MTU,))
        _check_iface(self.iface)
        _check_family(self.family, "family")
        _check_int(self.mtu, "mtu", _INT32_MIN, _INT32_MAX)


@dataclass(frozen=True, slots=True)
class WinsCfgMsg:
    """add/del_wins_cfg (Windows-only): up to 4 IPv4 WINS servers."""

    type: MsgType
    message_id: int
    iface: Interface
    addresses: tuple[IPv4Address, ...]

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ADD_WINS_CFG, MsgType.DEL_WINS_CFG))
        _check_iface(self.iface)
        for i, a in enumerate(_check_tuple(self.addresses, "addresses", MAX_WINS_ADDRS)):
            _check_ip(a, f"addresses[{i}]", 4)


@dataclass(frozen=True, slots=True)
class CreateAdapterMsg:
    """create_adapter (Windows-only): ADAPTER_TYPE_DCO or ADAPTER_TYPE_TAP (carried as is)."""

    type: MsgType
    message_id: int
    adapter_type: int

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.CREATE_ADAPTER,))
        _check_int(self.adapter_type, "adapter_type", 0, _UINT32_MAX)


@dataclass(frozen=True, slots=True)
class EnvChunkMsg:
    """iservice extension: a piece of openvpn's environment at one ``event``.

    The environment is openvpn's ``envp``: each ``name=value`` string followed by a NUL,
    back to back, cut into pieces of at most ``ENV_DATA_SIZE`` bytes (a string may go on
    in the next piece).  ``flags``: ``ENV_FIRST`` on the first piece, ``ENV_LAST`` on the
    last one (both on a single piece).  All pieces carry the same message_id and event.
    """

    type: MsgType
    message_id: int
    event: int
    flags: int
    data: bytes

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ISERVICE_ENV,))
        if self.event not in ENV_EVENTS or isinstance(self.event, bool):
            raise ValueError(f"event must be one of {sorted(ENV_EVENTS)}, not {self.event!r}")
        _check_int(self.flags, "flags", 0, ENV_FIRST | ENV_LAST)
        if not isinstance(self.data, bytes):
            raise TypeError(f"data must be bytes, not {type(self.data).__name__}")
        if len(self.data) > ENV_DATA_SIZE:
            raise ValueError(f"data is {len(self.data)} bytes; a piece holds {ENV_DATA_SIZE}")


@dataclass(frozen=True, slots=True)
class EnvResultMsg:
    """iservice extension, the service's answer to a whole environment (not a request).

    ``error_number``: 0 when every request made from it was done, else the first
    refusal's error (or the environment's own: ``ERROR_MESSAGE_DATA`` when it is
    malformed).  ``requests``: how many requests it made; ``refused``: how many of them
    were refused; ``refused_type``: the type of the first refused one (0 = none).
    """

    type: MsgType
    message_id: int
    error_number: int
    requests: int
    refused: int
    refused_type: int

    def __post_init__(self) -> None:
        _check_head(self, (MsgType.ISERVICE_ENV_RESULT,))
        _check_int(self.error_number, "error_number", _INT32_MIN, _INT32_MAX)
        _check_int(self.requests, "requests", 0, _UINT32_MAX)
        _check_int(self.refused, "refused", 0, _UINT32_MAX)
        _check_int(self.refused_type, "refused_type", 0, _UINT32_MAX)


@dataclass(frozen=True, slots=True)
class Ack:
    """The service's answer to every request; ``error_number`` 0 = ok."""

    message_id: int
    error_number: int

    def __post_init__(self) -> None:
        _check_int(self.message_id, "message_id", _INT32_MIN, _INT32_MAX)
        _check_int(self.error_number, "error_number", _INT32_MIN, _INT32_MAX)


Message: TypeAlias = (
    AddressMsg
    | RouteMsg
    | DnsCfgMsg
    | NrptCfgMsg
    | FlushNeighborsMsg
    | WfpBlockMsg
    | RegisterDnsMsg
    | DelTunRoutesMsg
    | EnableDhcpMsg
    | SetMtuMsg
    | WinsCfgMsg
    | CreateAdapterMsg
    | EnvChunkMsg
)


# --------------------------------------------------------------------------- field kinds
# openvpn-msg.h's own kinds (the generic ones are in wire.layout).  Decoding raises only
# MessageDataError; what the kinds feed the dataclasses is valid by construction, so no
# constructor can raise on decoded values.


def _family(wire: int, mid: int) -> int:
    family = _FAMILY_FROM_WIRE.get(wire)
    if family is None:
        raise MessageDataError(f"family {wire} is neither AF_INET (2) nor AF_INET6 (23)", mid)
    return family


def _ip(family: int, raw16: bytes) -> IPv4Address | IPv6Address:
    return IPv4Address(raw16[:4]) if family == socket.AF_INET else IPv6Address(raw16)


@dataclass(frozen=True)
class Family(Kind):
    """``short family``: 2/23 on the wire, ``socket.AF_INET``/``AF_INET6`` in Python.
    ``of``: not an attribute, the family of the address attribute ``of`` (it decides
    how the addresses after it are read)."""
    of: str | None = None
    codes: str = "h"
    c_type: str = "int16"

    @property
    def attribute(self) -> bool:  # type: ignore[override]
        return self.of is None

    def describe(self) -> str:
        return "int16 family (2 = AF_INET, 23 = AF_INET6)" + \
            (f" of {self.of}" if self.of else "")

    def decode(self, raw: Sequence[Any], i: int, wire: Wire, name: str, mid: int) -> Any:
        return _family(raw[i], mid)

    def encode(self, msg: Any, name: str) -> tuple[Any, ...]:
        if self.of is not None:
            a: IPv4Address | IPv6Address = getattr(msg, self.of)
            return (WIRE_AF_INET if a.version == 4 else WIRE_AF_INET6,)
        return (_FAMILY_TO_WIRE[getattr(msg, name)],)


@dataclass(frozen=True)
class Addr(Kind):
    """``inet_address_t`` (16 bytes): an address of the family in field ``family``."""
    family: str = "family"
    codes: str = "16s"

    def describe(self) -> str:
        return "inet_address_t (16 bytes)"

    def decode(self, raw: Sequence[Any], i: int, wire: Wire, name: str, mid: int) -> Any:
        return _ip(wire[self.family], raw[i])

    def encode(self, msg: Any, name: str) -> tuple[Any, ...]:
        return (getattr(msg, name).packed,)


# Decoded interfaces, by their raw fields: a session sends thousands of messages naming
# the same tun (profiled: building and checking the Interface was ~0.6 µs a route).
_IFACE_CACHE: dict[tuple[int, bytes], Interface] = {}
_IFACE_CACHE_MAX = 64


def _iface(index: int, name: bytes, mid: int) -> Interface:
    iface = _IFACE_CACHE.get((index, name))
    if iface is None:
        iface = Interface(index, lay.decode_text(name, "iface.name", mid))
        if len(_IFACE_CACHE) >= _IFACE_CACHE_MAX:
            _IFACE_CACHE.clear()
        _IFACE_CACHE[(index, name)] = iface
    return iface


@dataclass(frozen=True)
class Iface(Kind):
    """``interface_t``: ``uint32 index`` + ``char name[256]``."""
    codes: str = f"I{IFACE_NAME_SIZE}s"

    def describe(self) -> str:
        return "interface_t (uint32 index, char name[256])"

    def decode(self, raw: Sequence[Any], i: int, wire: Wire, name: str, mid: int) -> Any:
        return _iface(raw[i], raw[i + 1], mid)

    def encode(self, msg: Any, name: str) -> tuple[Any, ...]:
        iface: Interface = getattr(msg, name)
        return iface.index, iface.name.encode()


@dataclass(frozen=True)
class Addrs(Kind):
    """``inet_address_t addr[n]``, the first ``wire[count]`` of them read, of the family
    in field ``family`` (None: IPv4 only)."""
    n: int = 4
    count: str = "addr_len"
    family: str | None = None

    @property
    def codes(self) -> str:  # type: ignore[override]
        return f"{16 * self.n}s"

    def describe(self) -> str:
        return f"inet_address_t[{self.n}] (the first {self.count})"

    def decode(self, raw: Sequence[Any], i: int, wire: Wire, name: str, mid: int) -> Any:
        data: bytes = raw[i]
        family = socket.AF_INET if self.family is None else wire[self.family]
        return tuple(_ip(family, data[16 * k:16 * k + 16]) for k in range(wire[self.count]))

    def encode(self, msg: Any, name: str) -> tuple[Any, ...]:
        return (b"".join(a.packed.ljust(16, b"\0") for a in getattr(msg, name)),)


@dataclass(frozen=True)
class Texts(Kind):
    """``char name[n][length]``: the entries up to the first empty one (the original's
    loop stops there, so later entries are neither read nor validated)."""
    n: int = NRPT_ADDR_NUM
    length: int = NRPT_ADDR_SIZE

    @property
    def codes(self) -> str:  # type: ignore[override]
        return f"{self.n * self.length}s"

    def describe(self) -> str:
        return f"char[{self.n}][{self.length}] (texts up to the first empty one)"

    def decode(self, raw: Sequence[Any], i: int, wire: Wire, name: str, mid: int) -> Any:
        data: bytes = raw[i]
        entries: list[str] = []
        for k in range(self.n):
            piece = data[self.length * k:self.length * (k + 1)]
            if piece[0] == 0:
                break
            entries.append(lay.decode_text(piece, f"nrpt {name}[{k}]", mid))
        return tuple(entries)

    def encode(self, msg: Any, name: str) -> tuple[Any, ...]:
        return (b"".join(a.encode().ljust(self.length, b"\0") for a in getattr(msg, name)),)


# --------------------------------------------------------------------------- the layouts
# One declaration per C struct: (offset, field name, kind).  Field names are the
# dataclass attributes (plus the wire-only ones: a family implied by an address, a
# count).  To add a type: a MsgType member, a dataclass, a Layout row here
# (docs/architecture.md, "How to add a message type").

T = MsgType
IFACE = Iface()
LAYOUTS: tuple[Layout, ...] = (
    Layout("address", AddressMsg, (T.ADD_ADDRESS, T.DEL_ADDRESS), 312, (
        Field(24, "family", Family(of="address")), Field(28, "address", Addr()),
        Field(44, "prefix_len", INT32), Field(48, "iface", IFACE))),
    Layout("route", RouteMsg, (T.ADD_ROUTE, T.DEL_ROUTE), 328, (
        Field(24, "family", Family(of="prefix")), Field(28, "prefix", Addr()),
        Field(44, "prefix_len", INT32), Field(48, "gateway", Addr()), Field(64, "iface", IFACE),
        Field(324, "metric", INT32)),
        trusted=True, doc="metric -1 = unset"),
    Layout("dns_cfg", DnsCfgMsg, (T.ADD_DNS_CFG, T.DEL_DNS_CFG), 872, (
        Field(24, "iface", IFACE), Field(284, "domains", Text(length=DOMAINS_SIZE)),
        Field(796, "family", Family()),
        Field(800, "addr_len", Count(of="addresses", limit=MAX_DNS_ADDRS)),
        Field(804, "addresses", Addrs(n=MAX_DNS_ADDRS, family="family"))),
        doc="domains: comma list"),
    Layout("nrpt_cfg", NrptCfgMsg, (T.ADD_NRPT_CFG, T.DEL_NRPT_CFG), 1696, (
        Field(24, "iface", IFACE), Field(284, "addresses", Texts()),
        Field(668, "resolve_domains", Text(length=DOMAINS_SIZE)),
        Field(1180, "search_domains", Text(length=DOMAINS_SIZE)),
        Field(1692, "dnssec", Flag(bit=NRPT_DNSSEC)))),
    Layout("flush_neighbors", FlushNeighborsMsg, (T.FLUSH_NEIGHBORS,), 288, (
        Field(24, "family", Family()), Field(28, "iface", IFACE))),
    Layout("wfp_block", WfpBlockMsg, (T.ADD_WFP_BLOCK, T.DEL_WFP_BLOCK), 288, (
        Field(24, "flags", UINT32), Field(28, "iface", IFACE)),
        doc="flags: 1 block non-VPN traffic, 2 block DNS outside the VPN"),
    Layout("register_dns", RegisterDnsMsg, (T.REGISTER_DNS,), 24, ()),
    Layout("enable_dhcp", EnableDhcpMsg, (T.ENABLE_DHCP,), 288, (Field(24, "iface", IFACE),)),
    Layout("set_mtu", SetMtuMsg, (T.SET_MTU,), 296, (
        Field(24, "iface", IFACE), Field(284, "family", Family()), Field(288, "mtu", INT32))),
    Layout("wins_cfg", WinsCfgMsg, (T.ADD_WINS_CFG, T.DEL_WINS_CFG), 352, (
        Field(24, "iface", IFACE),
        Field(284, "addr_len", Count(of="addresses", limit=MAX_WINS_ADDRS)),
        Field(288, "addresses", Addrs(n=MAX_WINS_ADDRS)))),
    Layout("create_adapter", CreateAdapterMsg, (T.CREATE_ADAPTER,), 32, (
        Field(24, "adapter_type", UINT32),)),
    Layout("del_tun_routes", DelTunRoutesMsg, (T.ISERVICE_DEL_TUN_ROUTES,), 24, ()),
    Layout("env", EnvChunkMsg, (T.ISERVICE_ENV,), MAX_MESSAGE_SIZE, (
        Field(24, "event", OneOf(allowed=tuple(ENV_EVENTS))),
        Field(28, "flags", Bits(mask=ENV_FIRST | ENV_LAST)),
        Field(32, "length", Count(of="data", limit=ENV_DATA_SIZE)),
        Field(ENV_DATA_OFFSET, "data", Bytes(length=ENV_DATA_SIZE, count="length"))),
        doc="flags: 1 first piece, 2 last piece"),
    # Answers (service → openvpn's side): never decoded as requests.
    Layout("ack", None, (T.ACK,), ACK_SIZE, (Field(24, "error_number", INT32),)),
    Layout("env_result", EnvResultMsg, (T.ISERVICE_ENV_RESULT,), 40, (
        Field(24, "error_number", INT32), Field(28, "requests", UINT32),
        Field(32, "refused", UINT32), Field(36, "refused_type", UINT32))),
)
LAYOUT_OF: dict[MsgType, Layout] = {MsgType(t): x for x in LAYOUTS for t in x.types}
_ANSWERS = (MsgType.ACK, MsgType.ISERVICE_ENV_RESULT)

# Request types only (an ack is not something openvpn may send us); the SPEC's table.
MESSAGE_SIZES: dict[MsgType, int] = {t: x.size for t, x in LAYOUT_OF.items() if t not in _ANSWERS}
if max(MESSAGE_SIZES.values()) != MAX_MESSAGE_SIZE:
    raise lay.LayoutError("MAX_MESSAGE_SIZE is not the largest request")

# The closed table: wire type -> (enum member, layout).  No row = unknown type.
_DECODERS: dict[int, tuple[MsgType, Layout]] = {int(t): (t, LAYOUT_OF[t]) for t in MESSAGE_SIZES}
_ENCODERS: dict[type, Layout] = {x.cls: x for x in LAYOUTS if x.cls is not None}

_S_HEADER = struct.Struct("<I4xQi4x")
_ROUTE = LAYOUT_OF[MsgType.ADD_ROUTE]
_S_ACK = LAYOUT_OF[MsgType.ACK].struct
_S_RESULT = LAYOUT_OF[MsgType.ISERVICE_ENV_RESULT].struct
# peek_ipv4_add_route unpacks the route layout by position: a changed declaration must
# fail here, at import, not on the wire.
if _ROUTE.value_names() != ("type", "size", "message_id", "family", "prefix", "prefix_len",
                            "gateway", "iface.0", "iface.1", "metric"):
    raise lay.LayoutError(f"route layout changed: {_ROUTE.value_names()}")


def layout_table() -> str:
    """Every layout as a markdown table (docs/architecture.md carries it)."""
    return "\n".join(lay.table_rows(LAYOUTS, {int(t): t.name.lower() for t in MsgType}))


def c_header() -> str:
    """The C header the plugin is built with (``setup.py`` writes it)."""
    return lay.c_header(LAYOUTS, {int(t): t.name.lower() for t in MsgType},
                        {"MAX_MESSAGE_SIZE": MAX_MESSAGE_SIZE, "ENV_FIRST": ENV_FIRST,
                         "ENV_LAST": ENV_LAST, "MAX_ENV_BYTES": MAX_ENV_BYTES},
                        source="iservice/wire/msg.py")


# --------------------------------------------------------------------------- decoding


def decode_message(raw: bytes) -> Message:
    """Decode one request from openvpn's side of the channel.

    Raises only ``MessageTooLargeError`` (end the session), ``MessageDataError``
    or ``MessageTypeError`` (ack with the carried error number and message_id).
    """
    n = len(raw)
    if n > MAX_MESSAGE_SIZE:
        raise MessageTooLargeError(f"message of {n} bytes exceeds {MAX_MESSAGE_SIZE}")
    if n < HEADER_SIZE:
        raise MessageDataError(f"message of {n} bytes is shorter than the header", -1)
    mtype, size, mid = _S_HEADER.unpack_from(raw)
    if size != n:
        raise MessageDataError(f"header size {size} != received {n} bytes", mid)
    row = _DECODERS.get(mtype)
    if row is None:
        raise MessageTypeError(f"unknown message type {mtype}", mid)
    t, layout = row
    if n != layout.size:
        raise MessageDataError(f"{t.name.lower()}: {n} bytes, expected {layout.size}", mid)
    msg: Message = layout.decode(raw, t, mid)
    return msg


_ROUTE_SIZE = _ROUTE.size
_ADD_ROUTE = int(MsgType.ADD_ROUTE)
_S_ROUTE = _ROUTE.struct


def peek_ipv4_add_route(raw: bytes) -> tuple[int, int, int, Interface, int] | None:
    """(message_id, prefix as an integer, prefix_len, iface, metric) of an IPv4 add_route
    message naming an interface decoded before, else None: a shortcut for the request
    that comes by the thousand, never a verdict (None means "decode it fully", which
    also finds every error).  The interface is ``_iface``'s cached one, so it was checked
    (text, NUL) exactly as ``decode_message`` checks it; the gateway is not decoded (a
    route through the tun ignores it).  tests/unit/test_fast_route.py compares this path
    with the full one on arbitrary messages."""
    if len(raw) != _ROUTE_SIZE:
        return None
    t, size, mid, fam, prefix, plen, _gw, idx, name, metric = _S_ROUTE.unpack(raw)
    if t != _ADD_ROUTE or size != _ROUTE_SIZE or fam != WIRE_AF_INET:
        return None
    iface = _IFACE_CACHE.get((idx, name))
    if iface is None:
        return None
    return mid, int.from_bytes(prefix[:4], "big"), plen, iface, metric


def unchecked_route(t: MsgType, mid: int, prefix: IPv4Address | IPv6Address, prefix_len: int,
                    gateway: IPv4Address | IPv6Address, iface: Interface,
                    metric: int) -> RouteMsg:
    """A RouteMsg from values the caller has already checked (an int32 ``mid``,
    ``prefix_len`` and ``metric``; exact ``IPv4Address``/``IPv6Address`` objects of one
    version without a scope id; a checked ``Interface``), without ``__post_init__``:
    routes come by the thousand and the checks cost ~1 µs each.  The decoder and the
    producer use it; their tests compare it with the checked constructor."""
    msg = _new(RouteMsg)  # unrolled: Layout.build_trusted's loop cost ~1 µs a route
    _set(msg, "type", t)
    _set(msg, "message_id", mid)
    _set(msg, "prefix", prefix)
    _set(msg, "prefix_len", prefix_len)
    _set(msg, "gateway", gateway)
    _set(msg, "iface", iface)
    _set(msg, "metric", metric)
    return msg


_new = object.__new__
_set = object.__setattr__
if _ROUTE.attribute_names() != ("type", "message_id", "prefix", "prefix_len", "gateway",
                                "iface", "metric"):
    raise lay.LayoutError("unchecked_route does not set the route's attributes")


# --------------------------------------------------------------------------- encoding


def encode_message(msg: Message) -> bytes:
    """Encode a request (what openvpn, or our hook, sends); size field filled in."""
    layout = _ENCODERS.get(type(msg))
    if layout is None or msg.type in _ANSWERS:
        raise TypeError(f"not a channel message: {type(msg).__name__}")
    return layout.encode(msg)


def env_chunks(env: bytes, event: int, message_id: int) -> list[bytes]:
    """An environment (``name=value`` strings, each followed by a NUL) as the
    ``ISERVICE_ENV`` messages that carry it, the first flagged ``ENV_FIRST``, the last
    ``ENV_LAST``.  Raises ValueError when it is longer than ``MAX_ENV_BYTES``."""
    if len(env) > MAX_ENV_BYTES:
        raise ValueError(f"the environment is {len(env)} bytes; at most {MAX_ENV_BYTES} go")
    pieces = [env[i:i + ENV_DATA_SIZE] for i in range(0, len(env), ENV_DATA_SIZE)] or [b""]
    layout = LAYOUT_OF[MsgType.ISERVICE_ENV]
    out = []
    for i, piece in enumerate(pieces):
        flags = (ENV_FIRST if i == 0 else 0) | (ENV_LAST if i == len(pieces) - 1 else 0)
        out.append(layout.struct.pack(MsgType.ISERVICE_ENV, layout.size, message_id, event,
                                      flags, len(piece), piece))
    return out


def encode_ack(ack: Ack) -> bytes:
    """``{header{type=0, size=32, message_id}, int32 error_number}``."""
    return _S_ACK.pack(MsgType.ACK, ACK_SIZE, ack.message_id, ack.error_number)


def ack_bytes(message_id: int, error_number: int) -> bytes:
    """``encode_ack(Ack(message_id, error_number))`` for values the caller knows fit
    int32 (a decoded message_id, an error number): one per route, without the Ack."""
    return _S_ACK.pack(0, ACK_SIZE, message_id, error_number)


def decode_ack(raw: bytes) -> Ack:
    """Decode an ack (what openvpn, or our hook, reads back); raises only MessageDataError."""
    mid = peek_message_id(raw)
    if len(raw) != ACK_SIZE:
        raise MessageDataError(f"ack of {len(raw)} bytes, expected {ACK_SIZE}", mid)
    mtype, size, mid, error_number = _S_ACK.unpack(raw)
    if mtype != MsgType.ACK:
        raise MessageDataError(f"ack has type {mtype}, expected 0", mid)
    if size != ACK_SIZE:
        raise MessageDataError(f"ack header size {size} != {ACK_SIZE}", mid)
    return Ack(mid, error_number)


def encode_env_result(result: EnvResultMsg) -> bytes:
    return LAYOUT_OF[MsgType.ISERVICE_ENV_RESULT].encode(result)


def decode_env_result(raw: bytes) -> EnvResultMsg:
    """Decode the service's answer to an environment; raises only MessageDataError."""
    mid = peek_message_id(raw)
    layout = LAYOUT_OF[MsgType.ISERVICE_ENV_RESULT]
    if len(raw) != layout.size:
        raise MessageDataError(f"env result of {len(raw)} bytes, expected {layout.size}", mid)
    mtype, size, _ = _S_HEADER.unpack_from(raw)
    if mtype != MsgType.ISERVICE_ENV_RESULT or size != layout.size:
        raise MessageDataError(f"not an env result: type {mtype}, size {size}", mid)
    result: EnvResultMsg = layout.decode(raw, MsgType.ISERVICE_ENV_RESULT, mid)
    return result


def with_message_id(raw: bytes, message_id: int) -> bytes:
    """An encoded request with its header's message_id set to ``message_id``.

    Numbering thousands of pre-encoded messages: patching the encoded header costs
    ~0.2 µs, rebuilding each message with ``dataclasses.replace`` (which re-validates) ~5 µs.
    """
    if len(raw) < HEADER_SIZE:
        raise MessageDataError(f"message of {len(raw)} bytes is shorter than the header", -1)
    buf = bytearray(raw)
    try:
        _S_INT32.pack_into(buf, 16, message_id)
    except struct.error:
        raise ValueError(f"message_id {message_id!r} is not an int32") from None
    return bytes(buf)


def peek_message_id(raw: bytes) -> int:
    """The header's message_id, or -1 if there is no whole header to read it from."""
    if len(raw) < HEADER_SIZE:
        return -1
    mid: int = _S_INT32.unpack_from(raw, 16)[0]
    return mid
