"""The control socket: list, inspect, follow and end sessions (``docs/control.md``).

A second ``AF_UNIX`` ``SOCK_SEQPACKET`` socket of the service (``control_socket_path``,
default ``control`` next to the service socket).  One connection = one JSON request
(one message, at most ``MAX_REQUEST`` bytes, within 2 s); the service answers with one
JSON message, or — for ``log`` with ``follow`` — a stream of messages closed by
``{"end": true}``.  The caller is known from ``SO_PEERCRED`` only: a user sees and
touches only their own sessions; ``all`` (everyone's sessions) is for root and members
of ``ovpn_admin_group``.

Pure parts (tested without a service): request decoding (``decode_request``), the
decision who may do what (``authorize``), finding sessions by name (``select``),
naming (``profile_name``, ``session_name``) and the session state derived from
openvpn's output (``VpnState``).  ``ControlServer`` is the I/O on top, inside the
service; ``request``/``stream`` are the client side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iservice.linux.identity import is_admin, peer_credentials, run_as_fs_user, user_identity

if TYPE_CHECKING:
    from iservice.server import Server
    from iservice.session import Session

log = logging.getLogger("iservice.control")

MAX_REQUEST = 4096
MAX_MESSAGE = 60000  # a reply above this is split (log lines) to stay well below wmem limits
REQUEST_TIMEOUT = 2.0
OPS = frozenset({"sessions", "status", "disconnect", "log", "profiles"})
PROFILE_SUFFIXES = (".ovpn", ".conf")
MAX_PROFILES = 1000


class ControlError(Exception):
    """A request is refused; ``code`` is one of the codes in docs/control.md."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    op: str
    name: str | None = None
    all: bool = False
    follow: bool = False
    lines: int = 200


def decode_request(raw: bytes) -> Request:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("bad-request", "the request is not JSON text") from None
    if not isinstance(obj, dict):
        raise ControlError("bad-request", "the request must be a JSON object")
    unknown = set(obj) - {"op", "name", "all", "follow", "lines"}
    if unknown:
        raise ControlError("bad-request", f"unknown field(s): {', '.join(sorted(unknown))}")
    op = obj.get("op")
    if op not in OPS:
        raise ControlError("bad-request", f"op must be one of {', '.join(sorted(OPS))}")
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 256):
        raise ControlError("bad-request", "name must be a non-empty string")
    flags = {k: obj.get(k, False) for k in ("all", "follow")}
    if any(not isinstance(v, bool) for v in flags.values()):
        raise ControlError("bad-request", "all and follow must be true or false")
    lines = obj.get("lines", 200)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines <= 100000:
        raise ControlError("bad-request", "lines must be an integer 0 ... 100000")
    req = Request(op, name, flags["all"], flags["follow"], lines)
    if op in ("status", "log") and name is None:
        raise ControlError("bad-request", f"{op} needs a session name")
    if op == "disconnect" and name is None and not req.all:
        raise ControlError("bad-request", "disconnect needs a session name or all")
    return req


def authorize(req: Request, admin: bool, admin_group: str) -> None:
    """``all`` is for admins only; everything else is scoped to the caller's sessions."""
    if req.all and not admin:
        raise ControlError("forbidden", "only root and members of the group "
                                        f'"{admin_group}" may act on all sessions (--all)')


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


@dataclass(frozen=True)
class Named:
    """What ``select`` needs to know about a session."""
    id: int
    name: str
    profile: str
    uid: int


def select(name: str, sessions: Sequence[Named]) -> Named:
    """The session ``name`` means: its full name, its id, or its profile if exactly one
    of ``sessions`` (already limited to what the caller may see) uses that profile."""
    for s in sessions:
        if name in (s.name, str(s.id)):
            return s
    by_profile = [s for s in sessions if s.profile == name]
    if len(by_profile) == 1:
        return by_profile[0]
    if by_profile:
        raise ControlError("ambiguous", f"{len(by_profile)} sessions use the profile {name!r}: "
                           + ", ".join(s.name for s in by_profile) + "; name one of them")
    raise ControlError("not-found", f"no session {name!r} of yours")


# --------------------------------------------------------------------------- state


# openvpn's log lines (verb >= 1) that mark a state; first match wins, checked in order.
_STATE_MARKS: tuple[tuple[str, str, str], ...] = (
    ("Initialization Sequence Completed With Errors", "CONNECTED", "ERROR"),
    ("Initialization Sequence Completed", "CONNECTED", "SUCCESS"),
    ("AUTH_FAILED", "AUTH_FAILED", ""),
    ("process exiting", "EXITING", ""),
    ("process restarting", "RECONNECTING", ""),
    ("Restart pause", "RECONNECTING", ""),
    ("Need hold release from management interface", "HOLD", ""),
    ("Need information from management interface", "AUTH", "waiting for credentials"),
    ("PUSH: Received control message", "GET_CONFIG", ""),
    ("Peer Connection Initiated", "AUTH", ""),
    ("TLS: Initial packet from", "WAIT", ""),
    ("link remote:", "CONNECTING", ""),
    ("Attempting to establish TCP connection", "TCP_CONNECT", ""),
)


class VpnState:
    """openvpn's state as seen in its output (the service has no management access)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.name = "STARTING"
        self.detail = ""
        self.since = clock()

    def feed(self, line: str) -> None:
        for needle, name, detail in _STATE_MARKS:
            if needle in line:
                if name == "EXITING" or name == "RECONNECTING":
                    # "SIGTERM[hard,] received, process exiting": keep the reason
                    detail = line.partition("received")[0].split()[-1] if "received" in line \
                        else detail
                if (name, detail) != (self.name, self.detail):
                    self.name, self.detail, self.since = name, detail, self._clock()
                return


# --------------------------------------------------------------------------- service side


def _read_counter(tun: str | None, name: str) -> int | None:
    if not tun:
        return None
    try:
        with open(f"/sys/class/net/{tun}/statistics/{name}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def session_info(s: Session) -> dict[str, Any]:
    """The JSON view of one live session (docs/control.md, "session object")."""
    assert s.session_id is not None
    profile = profile_name(s.config)
    vpn = s.vpn
    addresses = sorted(f"{k.address}/{k.prefix_len}" for k in s.records.addresses)
    return {
        "name": session_name(profile, s.session_id),
        "id": s.session_id,
        "user": s.user.name if s.user else str(s.creds.uid),
        "uid": s.creds.uid,
        "profile": profile,
        "config": s.config,
        "state": vpn.name if s.phase.value == "running" else s.phase.value.upper(),
        "detail": vpn.detail,
        "state_since": round(vpn.since, 3),
        "started": round(s.started_at, 3) if s.started_at else None,
        "tun": s.tun_name,
        "addresses": addresses,
        # rx on the tun = what came out of the tunnel = bytes in
        "bytes_in": _read_counter(s.tun_name, "rx_bytes"),
        "bytes_out": _read_counter(s.tun_name, "tx_bytes"),
        "pid": s.child.pid if s.child else None,
    }


def list_profiles(config_dir: str) -> list[dict[str, str]]:
    """Readable configs under ``config_dir`` (run with the caller's file-system rights)."""
    found: list[dict[str, str]] = []
    for root, dirs, files in os.walk(config_dir):
        dirs.sort()
        for f in sorted(files):
            if not f.endswith(PROFILE_SUFFIXES):
                continue
            path = os.path.join(root, f)
            if os.path.isfile(path) and os.access(path, os.R_OK, effective_ids=True):
                rel = os.path.relpath(path, config_dir)
                found.append({"name": profile_name(rel), "path": path})
                if len(found) >= MAX_PROFILES:
                    return found
    return found


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def chunks(lines: list[str], limit: int = MAX_MESSAGE) -> Iterator[list[str]]:
    """Split lines into groups whose JSON stays below ``limit`` bytes."""
    group: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode("utf-8")) * 2 + 8  # worst-case JSON escaping
        if group and size + n > limit:
            yield group
            group, size = [], 0
        group.append(line)
        size += n
    if group:
        yield group


class ControlServer:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.active = 0  # open control connections (log --follow keeps one open)

    async def serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            while True:
                try:
                    conn, _ = await loop.sock_accept(listener)
                except OSError as exc:
                    log.error("event=control-accept-failed error=%s", exc)
                    await asyncio.sleep(0.1)
                    continue
                conn.setblocking(False)
                tg.create_task(self._handle(conn))

    async def _handle(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.active += 1
        try:
            creds = peer_credentials(conn)
            try:
                if self.active > self.server.settings.max_clients:
                    raise ControlError("busy", "too many control connections; try again")
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    raw = await loop.sock_recv(conn, MAX_REQUEST + 1)
                if len(raw) > MAX_REQUEST:
                    raise ControlError("bad-request", f"requests are at most {MAX_REQUEST} bytes")
                req = decode_request(raw)
                user = user_identity(creds.uid, creds.gid)
                group = self.server.settings.ovpn_admin_group
                admin = is_admin(user, group)
                authorize(req, admin, group)
                log.info("event=control op=%s uid=%d client_pid=%d name=%r all=%s", req.op,
                         creds.uid, creds.pid, req.name, req.all)
                await self._dispatch(conn, req, creds.uid, user)
            except ControlError as exc:
                await loop.sock_sendall(conn, encode({"ok": False, "code": exc.code,
                                                      "error": exc.message}))
            except TimeoutError:
                await loop.sock_sendall(conn, encode({"ok": False, "code": "bad-request",
                                                      "error": "no request within 2 s"}))
        except OSError:
            pass  # the client went away
        except Exception:
            log.exception("event=control-bug")
        finally:
            self.active -= 1
            conn.close()

    def _visible(self, uid: int, everyone: bool) -> list[Session]:
        return sorted((s for s in self.server.sessions
                       if s.session_id is not None and s.started_at is not None
                       and (everyone or s.creds.uid == uid)),
                      key=lambda s: s.session_id or 0)

    def _find(self, name: str, uid: int, everyone: bool) -> Session:
        live = self._visible(uid, everyone)
        named = [Named(s.session_id or 0, session_name(profile_name(s.config), s.session_id or 0),
                       profile_name(s.config), s.creds.uid) for s in live]
        chosen = select(name, named)
        return next(s for s in live if s.session_id == chosen.id)

    async def _dispatch(self, conn: socket.socket, req: Request, uid: int, user: Any) -> None:
        loop = asyncio.get_running_loop()

        async def send(obj: dict[str, Any]) -> None:
            await loop.sock_sendall(conn, encode(obj))

        if req.op == "sessions":
            await send({"ok": True, "sessions": [session_info(s)
                                                  for s in self._visible(uid, req.all)]})
        elif req.op == "status":
            assert req.name is not None
            await send({"ok": True, "session": session_info(self._find(req.name, uid, req.all))})
        elif req.op == "profiles":
            config_dir = self.server.settings.config_dir
            profiles = await loop.run_in_executor(
                None, run_as_fs_user, user, lambda: list_profiles(config_dir))
            await send({"ok": True, "config_dir": config_dir, "profiles": profiles})
        elif req.op == "disconnect":
            targets = (self._visible(uid, True) if req.name is None
                       else [self._find(req.name, uid, req.all)])
            names = [session_info(s)["name"] for s in targets]
            for s in targets:
                s.request_stop()
            # Answer once every session is undone: "disconnected" means nothing is left.
            deadline = loop.time() + self.server.settings.stop_grace + 10
            while any(s.phase.value != "done" for s in targets) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            left = [session_info(s)["name"] for s in targets if s.phase.value != "done"]
            if left:
                raise ControlError("timeout", "still ending: " + ", ".join(left))
            await send({"ok": True, "disconnected": names})
        elif req.op == "log":
            assert req.name is not None
            s = self._find(req.name, uid, req.all)
            await self._log(conn, s, req)

    async def _log(self, conn: socket.socket, s: Session, req: Request) -> None:
        loop = asyncio.get_running_loop()
        output = s.output
        lines = output.lines() if output is not None else []
        lines = lines[len(lines) - req.lines:] if req.lines else []
        queue = output.follow() if (req.follow and output is not None) else None
        try:
            first = True
            for group in chunks(lines) if lines else iter([[]]):
                await loop.sock_sendall(conn, encode({"ok": True, "lines": group}
                                                     if first else {"lines": group}))
                first = False
            if queue is None:
                if req.follow:
                    await loop.sock_sendall(conn, encode({"end": True}))
                return
            hangup = asyncio.ensure_future(loop.sock_recv(conn, 1))  # EOF = client left
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, hangup},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if hangup in done:
                        getter.cancel()
                        return
                    batch = [getter.result()]
                    while not queue.empty() and len(batch) < 500:
                        batch.append(queue.get_nowait())
                    ended = None in batch
                    text = [x for x in batch if x is not None]
                    for group in chunks(text):
                        await loop.sock_sendall(conn, encode({"lines": group}))
                    if ended:
                        await loop.sock_sendall(conn, encode({"end": True}))
                        return
            finally:
                hangup.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await hangup
        finally:
            if queue is not None and output is not None:
                output.unfollow(queue)


# --------------------------------------------------------------------------- client side


class ControlUnavailable(Exception):
    """The control socket cannot be reached (the service does not run, or is not root's)."""


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ControlUnavailable(f"cannot connect to the service at {path}: "
                                 f"{exc.strerror or exc}") from None
    if peer_credentials(sock).uid != 0:
        sock.close()
        raise ControlUnavailable(f"{path} is not served by root: refusing to talk to it")
    return sock


def stream(path: str, req: dict[str, Any], *, timeout: float | None = 30.0
           ) -> Iterator[dict[str, Any]]:
    """Send one request; yield each reply message until the service closes."""
    sock = _connect(path, timeout)
    try:
        sock.send(encode(req))
        while True:
            raw = sock.recv(MAX_MESSAGE * 2 + 65536)
            if not raw:
                return
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ControlUnavailable("the service sent something that is not a JSON object")
            yield obj
    finally:
        sock.close()


def request(path: str, req: dict[str, Any], *, timeout: float | None = 30.0) -> dict[str, Any]:
    """One request, one reply."""
    for reply in stream(path, req, timeout=timeout):
        return reply
    raise ControlUnavailable("the service closed the connection without a reply")
