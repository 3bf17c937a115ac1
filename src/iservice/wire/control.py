"""Control socket codec (``docs/control.md``): requests and replies, declared once.

Pure: bytes in, typed values out, typed values in, bytes out; no sockets, no
asyncio, no clocks.  The control server (``iservice.control``) and the clients
(``iservice.client``, ``cli``, ``connect``) both use it, so the two sides cannot
drift apart.

* ``Request`` is one request; its constructor validates every field, so a
  ``Request`` that exists is valid.  ``decode_request`` raises only
  ``ControlError`` with code ``bad-request`` (the client's fault).
* Replies are frozen dataclasses (``ErrorReply``, ``SessionsReply``,
  ``StatusReply``, ``ProfilesReply``, ``DisconnectReply``, ``LogLines``,
  ``LogEnd``, ``Done``); ``encode_reply`` turns one into one message.
  ``decode_reply`` (for clients) raises only ``ReplyError`` (the service's fault:
  a reply that does not follow this format).  Unknown keys in a reply are ignored,
  so a newer service can add fields; unknown fields in a request are refused, so a
  typo never silently means something else.
* ``ControlError`` is a refusal the service sends back (``code`` from ``CODES``).

Names (``profile_name``, ``session_name``) live here too: the client derives a
profile's name from a path exactly as the service does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeAlias

__all__ = [
    "CODES",
    "MAX_LINES",
    "MAX_MESSAGE",
    "MAX_NAME",
    "MAX_REQUEST",
    "OPS",
    "ControlError",
    "DisconnectReply",
    "Done",
    "ErrorReply",
    "ImportReply",
    "LogEnd",
    "LogLines",
    "Profile",
    "ProfilesReply",
    "RemoveReply",
    "Reply",
    "ReplyError",
    "Request",
    "SessionInfo",
    "SessionsReply",
    "StatusReply",
    "chunk_lines",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "profile_name",
    "session_name",
]

MAX_REQUEST = 4096  # bytes of one request message
MAX_MESSAGE = 60000  # a reply above this is split (log lines), well below wmem limits
MAX_REPLY = MAX_MESSAGE * 2 + 65536  # what a client reads per message (a session list)
MAX_NAME = 256
MAX_LINES = 100000
PROFILE_SUFFIXES = (".ovpn", ".conf")

OPS = ("sessions", "status", "log", "disconnect", "profiles", "import", "remove")
CODES = ("bad-request", "forbidden", "not-found", "ambiguous", "timeout", "busy", "exists",
         "invalid", "failed")
MAX_PATH = 1024

_REQUEST_FIELDS = frozenset({"op", "name", "all", "follow", "lines", "path", "replace"})


class ControlError(Exception):
    """A request is refused; ``code`` is one of ``CODES``, ``message`` a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ReplyError(Exception):
    """A reply from the service does not follow the control format (the service's fault)."""


def _bad(message: str) -> ControlError:
    return ControlError("bad-request", message)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """One control request.  ``name``: a session (``work-3``, ``3`` or ``work``), or for
    ``import``/``remove`` a profile of the caller's own; ``path``: the file to import."""

    op: str
    name: str | None = None
    all: bool = False
    follow: bool = False
    lines: int = 200
    path: str | None = None
    replace: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise _bad(f"op must be one of {', '.join(sorted(OPS))}")
        if self.name is not None and (not isinstance(self.name, str)
                                      or not 0 < len(self.name) <= MAX_NAME):
            raise _bad(f"name must be a non-empty string of at most {MAX_NAME} characters")
        if not all(isinstance(x, bool) for x in (self.all, self.follow, self.replace)):
            raise _bad("all, follow and replace must be true or false")
        if self.path is not None and (not isinstance(self.path, str)
                                      or not self.path.startswith("/")
                                      or not 1 < len(self.path) <= MAX_PATH
                                      or "\0" in self.path):
            raise _bad(f"path must be an absolute path of at most {MAX_PATH} characters")
        if (self.op == "import") != (self.path is not None):
            raise _bad("path is for import, and import needs it")
        if self.op == "remove" and self.name is None:
            raise _bad("remove needs a profile name")
        if isinstance(self.lines, bool) or not isinstance(self.lines, int) \
                or not 0 <= self.lines <= MAX_LINES:
            raise _bad(f"lines must be an integer 0 ... {MAX_LINES}")
        if self.op in ("status", "log") and self.name is None:
            raise _bad(f"{self.op} needs a session name")
        if self.op == "disconnect" and self.name is None and not self.all:
            raise _bad("disconnect needs a session name or all")

    def to_json(self) -> dict[str, Any]:
        """Only what differs from the defaults (``op`` always)."""
        obj: dict[str, Any] = {"op": self.op}
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value != f.default:
                obj[f.name] = value
        return obj


def encode_request(req: Request) -> bytes:
    return _dump(req.to_json())


def decode_request(raw: bytes) -> Request:
    """One request message → ``Request``; ``ControlError("bad-request")`` otherwise."""
    if len(raw) > MAX_REQUEST:
        raise _bad(f"requests are at most {MAX_REQUEST} bytes")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("the request is not JSON text") from None
    if not isinstance(obj, dict):
        raise _bad("the request must be a JSON object")
    unknown = set(obj) - _REQUEST_FIELDS
    if unknown:
        raise _bad("unknown field(s): " + ", ".join(sorted(_printable(k) for k in unknown)))
    if "op" not in obj or not isinstance(obj["op"], str):
        raise _bad(f"op must be one of {', '.join(sorted(OPS))}")
    return Request(**obj)


# --------------------------------------------------------------------------- values


def _check(cls: str, name: str, value: object, kinds: tuple[type, ...],
           optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) and bool not in kinds:
        raise ReplyError(f"{cls}.{name} has the wrong type (bool)")
    if not isinstance(value, kinds):
        raise ReplyError(f"{cls}.{name} has the wrong type ({type(value).__name__})")


@dataclass(frozen=True)
class SessionInfo:
    """One session as the control socket shows it (docs/control.md, "SESSION object")."""

    name: str
    id: int
    user: str
    uid: int
    profile: str
    config: str | None
    state: str
    detail: str = ""
    state_since: float | None = None
    started: float | None = None
    tun: str | None = None
    addresses: tuple[str, ...] = ()
    bytes_in: int | None = None
    bytes_out: int | None = None
    pid: int | None = None
    management: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            kinds, optional = _SESSION_TYPES[f.name]
            _check("session", f.name, getattr(self, f.name), kinds, optional)
        if not all(isinstance(a, str) for a in self.addresses):
            raise ReplyError("session.addresses must be strings")

    def to_json(self) -> dict[str, Any]:
        obj = {f.name: getattr(self, f.name) for f in fields(self)}
        obj["addresses"] = list(self.addresses)
        return obj

    @property
    def waits_for_credentials(self) -> bool:
        return self.state == "AUTH" and self.detail == "waiting for credentials"

    @classmethod
    def from_json(cls, obj: object) -> SessionInfo:
        if not isinstance(obj, dict):
            raise ReplyError("a session must be a JSON object")
        missing = [n for n in ("name", "id", "user", "uid", "profile", "state") if n not in obj]
        if missing:
            raise ReplyError(f"a session lacks {', '.join(missing)}")
        values = {f.name: obj[f.name] for f in fields(cls) if f.name in obj}
        addresses = values.get("addresses", [])
        if not isinstance(addresses, list):
            raise ReplyError("session.addresses must be a list")
        values["addresses"] = tuple(addresses)
        values.setdefault("config", None)
        return cls(**values)


_NUM = (int, float)
_SESSION_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False), "id": ((int,), False), "user": ((str,), False),
    "uid": ((int,), False), "profile": ((str,), False), "config": ((str,), True),
    "state": ((str,), False), "detail": ((str,), False), "state_since": (_NUM, True),
    "started": (_NUM, True), "tun": ((str,), True), "addresses": ((tuple,), False),
    "bytes_in": ((int,), True), "bytes_out": ((int,), True), "pid": ((int,), True),
    "management": ((str,), True),
}


@dataclass(frozen=True)
class Profile:
    """A profile the caller may use: its name, the config file's path, and whether it
    is the caller's own (imported with ``iservice import``) rather than approved."""

    name: str
    path: str
    own: bool = False

    def __post_init__(self) -> None:
        _check("profile", "name", self.name, (str,))
        _check("profile", "path", self.path, (str,))
        _check("profile", "own", self.own, (bool,))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "own": self.own}

    @classmethod
    def from_json(cls, obj: object) -> Profile:
        if not isinstance(obj, dict) or "name" not in obj or "path" not in obj:
            raise ReplyError("a profile must be an object with name and path")
        return cls(obj["name"], obj["path"], obj.get("own", False))


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class ErrorReply:
    """``{"ok": false, "code": C, "error": "sentence"}``."""

    code: str
    error: str

    def __post_init__(self) -> None:
        _check("error", "code", self.code, (str,))
        _check("error", "error", self.error, (str,))

    def raise_(self) -> None:
        raise ControlError(self.code, self.error)


@dataclass(frozen=True)
class SessionsReply:
    sessions: tuple[SessionInfo, ...]


@dataclass(frozen=True)
class StatusReply:
    session: SessionInfo


@dataclass(frozen=True)
class ProfilesReply:
    config_dir: str
    profiles: tuple[Profile, ...]


@dataclass(frozen=True)
class DisconnectReply:
    disconnected: tuple[str, ...]


@dataclass(frozen=True)
class ImportReply:
    """``{"ok": true, "profile": PROFILE}``: the profile as stored."""

    profile: Profile


@dataclass(frozen=True)
class RemoveReply:
    """``{"ok": true, "removed": NAME}``."""

    removed: str

    def __post_init__(self) -> None:
        _check("remove", "removed", self.removed, (str,))


@dataclass(frozen=True)
class LogLines:
    """Lines of a session's output; ``first``: the first message of a ``log`` reply
    (it carries ``"ok": true``)."""

    lines: tuple[str, ...]
    first: bool = False


@dataclass(frozen=True)
class LogEnd:
    """``{"end": true}``: the followed session has ended."""


@dataclass(frozen=True)
class Done:
    """``{"ok": true}`` and nothing else."""

    extra: Mapping[str, Any] = field(default_factory=dict)


Reply: TypeAlias = (ErrorReply | SessionsReply | StatusReply | ProfilesReply | DisconnectReply
                    | ImportReply | RemoveReply | LogLines | LogEnd | Done)


def encode_reply(reply: Reply) -> bytes:
    return _dump(reply_json(reply))


def reply_json(reply: Reply) -> dict[str, Any]:
    """The JSON object of a reply (also what ``--json`` prints, less ``ok``)."""
    if isinstance(reply, ErrorReply):
        return {"ok": False, "code": reply.code, "error": reply.error}
    if isinstance(reply, SessionsReply):
        return {"ok": True, "sessions": [s.to_json() for s in reply.sessions]}
    if isinstance(reply, StatusReply):
        return {"ok": True, "session": reply.session.to_json()}
    if isinstance(reply, ProfilesReply):
        return {"ok": True, "config_dir": reply.config_dir,
                "profiles": [p.to_json() for p in reply.profiles]}
    if isinstance(reply, DisconnectReply):
        return {"ok": True, "disconnected": list(reply.disconnected)}
    if isinstance(reply, ImportReply):
        return {"ok": True, "profile": reply.profile.to_json()}
    if isinstance(reply, RemoveReply):
        return {"ok": True, "removed": reply.removed}
    if isinstance(reply, LogLines):
        return {"ok": True, "lines": list(reply.lines)} if reply.first else \
            {"lines": list(reply.lines)}
    if isinstance(reply, LogEnd):
        return {"end": True}
    return {"ok": True, **reply.extra}


def decode_reply(raw: bytes, op: str, *, first: bool = True) -> Reply:
    """One reply message to a request of ``op`` → a ``Reply``; ``ReplyError`` otherwise.

    ``first``: the first message of the reply (later messages of ``log`` carry no
    ``ok``)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReplyError("the service's reply is not JSON text") from None
    if not isinstance(obj, dict):
        raise ReplyError("the service's reply is not a JSON object")
    try:
        return _reply_from(obj, op, first)
    except (TypeError, KeyError) as exc:  # a field of the wrong shape
        raise ReplyError(f"malformed {op} reply: {exc}") from None


def _reply_from(obj: dict[str, Any], op: str, first: bool) -> Reply:
    if obj.get("ok") is False:
        return ErrorReply(obj.get("code", "?"), obj.get("error", ""))
    if op == "log" and not first:
        if obj.get("end") is True:
            return LogEnd()
        return LogLines(_strings(obj, "lines"))
    if obj.get("ok") is not True:
        raise ReplyError(f"the {op} reply has no \"ok\"")
    if op == "sessions":
        return SessionsReply(tuple(SessionInfo.from_json(s) for s in _list(obj, "sessions")))
    if op == "status":
        return StatusReply(SessionInfo.from_json(obj.get("session")))
    if op == "profiles":
        config_dir = obj.get("config_dir")
        _check("profiles", "config_dir", config_dir, (str,))
        return ProfilesReply(str(config_dir),
                             tuple(Profile.from_json(p) for p in _list(obj, "profiles")))
    if op == "disconnect":
        return DisconnectReply(_strings(obj, "disconnected"))
    if op == "import":
        return ImportReply(Profile.from_json(obj.get("profile")))
    if op == "remove":
        return RemoveReply(obj.get("removed"))  # type: ignore[arg-type]
    if op == "log":
        return LogLines(_strings(obj, "lines"), first=True)
    return Done({k: v for k, v in obj.items() if k != "ok"})


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ReplyError(f"{key} must be a list")
    return value


def _strings(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = _list(obj, key)
    if not all(isinstance(x, str) for x in value):
        raise ReplyError(f"{key} must hold strings")
    return tuple(value)


def _dump(obj: dict[str, Any]) -> bytes:
    # ASCII with \u escapes: always valid UTF-8, even for a lone surrogate in a path
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _printable(text: str) -> str:
    return text if text.isprintable() and len(text) <= 40 else repr(text[:40])


def chunk_lines(lines: Sequence[str], limit: int = MAX_MESSAGE) -> Iterator[tuple[str, ...]]:
    """Split lines into groups whose JSON stays below ``limit`` bytes."""
    group: list[str] = []
    size = _ENVELOPE
    for line in lines:
        # worst case: every UTF-16 unit escaped as \uXXXX (a character beyond the BMP is
        # two: \ud835\udce3), then the quotes and the comma
        n = len(line.encode("utf-16-le", "surrogatepass")) * 3 + 3
        if group and size + n > limit:
            yield tuple(group)
            group, size = [], _ENVELOPE
        group.append(line)
        size += n
    if group:
        yield tuple(group)


_ENVELOPE = len('{"ok":true,"lines":[]}') + 1  # what a LogLines reply adds to its lines


# --------------------------------------------------------------------------- names


def profile_name(config: str | None) -> str:
    """``/etc/openvpn/client/work.ovpn`` → ``work``; no config → ``-``."""
    if not config:
        return "-"
    base = os.path.basename(config)
    for suffix in PROFILE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def session_name(profile: str, session_id: int) -> str:
    return f"{profile if profile != '-' else 'session'}-{session_id}"
