"""The control socket: list, inspect, follow and end sessions (``docs/control.md``).

A second ``AF_UNIX`` ``SOCK_SEQPACKET`` socket of the service (``control_socket_path``,
default ``control`` next to the service socket).  One connection = one JSON request
(one message, at most ``MAX_REQUEST`` bytes, within 2 s); the service answers with one
JSON message, or — for ``log`` with ``follow`` — a stream of messages closed by
``{"end": true}``.  The caller is known from ``SO_PEERCRED`` only: a user sees and
touches only their own sessions; ``all`` (everyone's sessions) is for root and members
of ``ovpn_admin_group``.

The wire format (requests, replies, names) is ``iservice.wire.control``, shared
with the client.  Pure parts here (tested without a service): the decision who may
do what (``authorize``), finding sessions by name (``select``) and the session
state derived from openvpn's output (``VpnState``).  ``ControlServer`` is the I/O
on top, inside the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from iservice import audit
from iservice import profiles as own_profiles
from iservice.errors import StillStuck
from iservice.policy.profile import ProfileError, valid_profile_name
from iservice.wire import control as wc
from iservice.wire.control import (
    ControlError,
    Request,
    decode_request,
    profile_name,
    session_name,
)

T = TypeVar("T")

if TYPE_CHECKING:
    from iservice.output import SessionOutput
    from iservice.ports import PeerCredentials, Platform
    from iservice.settings import Settings


class Controlled(Protocol):
    """What the control socket sees of a session (``Session`` is one)."""

    session_id: int | None
    started_at: float | None
    creds: PeerCredentials
    config: str | None
    output: SessionOutput | None

    @property
    def finished(self) -> bool: ...

    def info(self) -> wc.SessionInfo: ...

    def request_stop(self) -> None: ...


class ControlHost(Protocol):
    """What the control socket needs of the service (``Server`` is one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def platform(self) -> Platform: ...

    @property
    def sessions(self) -> Iterable[Controlled]: ...

__all__ = ["ControlError", "ControlServer", "Named", "Request", "VpnState", "authorize",
           "decode_request", "list_profiles", "profile_name", "select",
           "session_name"]

log = logging.getLogger("iservice.control")

REQUEST_TIMEOUT = 2.0
MAX_PROFILES = 1000


def authorize(req: Request, admin: bool, admin_group: str) -> None:
    """``all`` is for admins only; everything else is scoped to the caller's sessions."""
    if req.all and not admin:
        raise ControlError("forbidden", "only root and members of the group "
                                        f'"{admin_group}" may act on all sessions (--all)')


# --------------------------------------------------------------------------- names


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
    ("sending exit notification to peer", "EXITING", ""),  # explicit-exit-notify's wait
    ("process restarting", "RECONNECTING", ""),
    ("Restart pause", "RECONNECTING", ""),
    ("Need hold release from management interface", "HOLD", ""),
    ("Need information from management interface", "AUTH", "waiting for credentials"),
    ("Need password(s) from management interface", "AUTH", "waiting for credentials"),
    ("AUTH_PENDING received", "AUTH_PENDING", "waiting for the login to complete"),
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


def read_counter(tun: str | None, name: str) -> int | None:
    if not tun:
        return None
    try:
        with open(f"/sys/class/net/{tun}/statistics/{name}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def management_socket(argv: Sequence[str]) -> str | None:
    """The unix management socket openvpn was started with (``--management PATH unix``),
    as ``iservice connect`` starts it: where ``iservice auth`` answers later prompts."""
    for i, arg in enumerate(argv[:-2]):
        if arg == "--management" and argv[i + 2] == "unix":
            return argv[i + 1]
    return None


def list_profiles(config_dir: str) -> list[wc.Profile]:
    """Readable configs under ``config_dir`` (run with the caller's file-system rights)."""
    found: list[wc.Profile] = []
    for root, dirs, files in os.walk(config_dir):
        dirs.sort()
        for f in sorted(files):
            if not f.endswith(wc.PROFILE_SUFFIXES):
                continue
            path = os.path.join(root, f)
            if os.path.isfile(path) and os.access(path, os.R_OK, effective_ids=True):
                rel = os.path.relpath(path, config_dir)
                found.append(wc.Profile(profile_name(rel), path))
                if len(found) >= MAX_PROFILES:
                    return found
    return found


SEND_TIMEOUT = 5.0  # a client that does not read for this long is dropped
MAX_CONTROL_CONNECTIONS = 1024  # all users together: bounded by file descriptors


class ClientStalled(OSError):
    """The client did not take a reply within ``SEND_TIMEOUT``: it is dropped."""


@dataclass(frozen=True)
class Budget:
    """How many control connections may be open: ``per_uid`` for each user, ``total``
    for everyone; past ``total`` a user with none open still gets one (up to ``hard``),
    so that one user's flood never locks the others out."""

    per_uid: int
    total: int
    hard: int = MAX_CONTROL_CONNECTIONS

    def admit(self, open_by_uid: int, open_total: int) -> bool:
        if open_by_uid >= self.per_uid or open_total >= self.hard:
            return False
        return open_total < self.total or open_by_uid == 0


class ControlServer:
    def __init__(self, server: ControlHost) -> None:
        self.server = server
        self.active = 0  # open control connections (log --follow keeps one open)
        self.by_uid: Counter[int] = Counter()
        s = server.settings
        # The service socket's per-user limit also bounds each user's control connections
        # (32 by default: far above what a person's terminals hold); everyone together may
        # hold 4 x max_clients, and a user with none open is admitted even past that.
        self.budget = Budget(per_uid=4 * s.max_clients_per_user,
                             total=min(4 * s.max_clients, MAX_CONTROL_CONNECTIONS))

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

    async def _send(self, conn: socket.socket, reply: wc.Reply) -> None:
        """One reply message, or ``ClientStalled`` when the client does not read: nobody
        can hold the service (or a task of it) by never reading."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await loop.sock_sendall(conn, wc.encode_reply(reply))
        except TimeoutError:
            raise ClientStalled("the client did not read the reply") from None

    async def _handle(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            identity = self.server.platform.identity
            creds = identity.peer_credentials(conn)
        except OSError:
            conn.close()
            return
        uid = creds.uid
        admitted = self.budget.admit(self.by_uid[uid], self.active)
        self.active += 1
        self.by_uid[uid] += 1
        try:
            try:
                if not admitted:
                    audit.record(logging.WARNING, "too-many-clients", uid=uid,
                                 client_pid=creds.pid, what="control connection",
                                 verdict="refused", reason="busy")
                    # take the request first (briefly): closing with it unread could reset
                    # the connection before the client reads the reply
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await loop.sock_recv(conn, wc.MAX_REQUEST + 1)
                    raise ControlError("busy", "too many control connections; try again")
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        raw = await loop.sock_recv(conn, wc.MAX_REQUEST + 1)
                except TimeoutError:
                    raise ControlError("bad-request", "no request within 2 s") from None
                req = decode_request(raw)
                user = identity.user_identity(creds.uid, creds.gid)
                group = self.server.settings.ovpn_admin_group
                admin = identity.is_admin(user, group)
                authorize(req, admin, group)
                # an audit line: a user's flood of requests counts against their rate
                # limit like their startup requests (audit.py), not the journal's space
                audit.record(logging.INFO, "control", uid=creds.uid, client_pid=creds.pid,
                             what=req.op, name=req.name, all=req.all)
                await self._dispatch(conn, req, creds.uid, user)
            except ControlError as exc:
                await self._send(conn, wc.ErrorReply(exc.code, exc.message))
        except OSError:
            pass  # the client went away, or stopped reading
        except Exception:
            log.exception("event=control-bug")
        finally:
            self.active -= 1
            self.by_uid[uid] -= 1
            if not self.by_uid[uid]:
                del self.by_uid[uid]
            conn.close()

    def _visible(self, uid: int, everyone: bool) -> list[Controlled]:
        return sorted((s for s in self.server.sessions
                       if s.session_id is not None and s.started_at is not None
                       and (everyone or s.creds.uid == uid)),
                      key=lambda s: s.session_id or 0)

    def _find(self, name: str, uid: int, everyone: bool) -> Controlled:
        live = self._visible(uid, everyone)
        named = [Named(s.session_id or 0, session_name(profile_name(s.config), s.session_id or 0),
                       profile_name(s.config), s.creds.uid) for s in live]
        chosen = select(name, named)
        return next(s for s in live if s.session_id == chosen.id)

    async def _dispatch(self, conn: socket.socket, req: Request, uid: int, user: Any) -> None:
        loop = asyncio.get_running_loop()

        async def send(reply: wc.Reply) -> None:
            await self._send(conn, reply)

        if req.op == "sessions":
            await send(wc.SessionsReply(tuple(s.info()
                                              for s in self._visible(uid, req.all))))
        elif req.op == "status":
            assert req.name is not None
            await send(wc.StatusReply(self._find(req.name, uid, req.all).info()))
        elif req.op == "profiles":
            config_dir = self.server.settings.config_dir
            profiles = await self._as_user(user, lambda: list_profiles(config_dir))
            profiles += await self._own_profiles(uid)
            await send(wc.ProfilesReply(config_dir, tuple(profiles)))
        elif req.op == "import":
            await send(wc.ImportReply(await self._import(req, uid, user)))
        elif req.op == "remove":
            assert req.name is not None
            self._user_profiles_on()
            state_dir = self.server.settings.state_dir
            name = req.name
            if not await loop.run_in_executor(None, own_profiles.remove, state_dir, uid, name):
                raise ControlError("not-found", f"no profile {name!r} of your own")
            audit.record(logging.INFO, "profile-removed", uid=uid, name=name)
            await send(wc.RemoveReply(name))
        elif req.op == "disconnect":
            targets = (self._visible(uid, True) if req.name is None
                       else [self._find(req.name, uid, req.all)])
            names = [s.info().name for s in targets]
            for s in targets:
                s.request_stop()
            # Answer once every session is undone: "disconnected" means nothing is left.
            deadline = loop.time() + self.server.settings.stop_grace + 10
            while not all(s.finished for s in targets) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            left = [s.info().name for s in targets if not s.finished]
            if left:
                raise ControlError("timeout", "still ending: " + ", ".join(left))
            await send(wc.DisconnectReply(tuple(names)))
        elif req.op == "log":
            assert req.name is not None
            s = self._find(req.name, uid, req.all)
            await self._log(conn, s, req)

    async def _as_user(self, user: Any, fn: Callable[[], T]) -> T:
        """``fn`` with the caller's file-system rights, in the service's as-user threads
        (one slot per user, ``check_timeout``): a path of the user's that never answers
        (their own FUSE mount) costs one thread, never the executor's or the others'."""
        identity = self.server.platform.identity
        timeout = self.server.settings.check_timeout
        try:
            return await identity.as_fs_user(user, fn, timeout=timeout)
        except TimeoutError:
            raise ControlError("timeout", f"a path you named did not answer within "
                                          f"{timeout:g} s") from None
        except StillStuck:
            raise ControlError("busy", "an earlier request of yours is still waiting for "
                                       "the file system; try again later") from None

    def _user_profiles_on(self) -> None:
        if not self.server.settings.user_profiles:
            raise ControlError("forbidden", "the administrator has not allowed profiles of "
                                            "your own (user_profiles = yes in iservice.conf)")

    async def _own_profiles(self, uid: int) -> list[wc.Profile]:
        if not self.server.settings.user_profiles:
            return []
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, own_profiles.list_own,
                                              self.server.settings.state_dir, uid)
        except OSError as exc:
            log.error("event=profiles-failed uid=%d error=%s", uid, exc)
            return []

    async def _import(self, req: Request, uid: int, user: Any) -> wc.Profile:
        """Read the file with the caller's rights, judge it, store it for the caller."""
        self._user_profiles_on()
        assert req.path is not None
        loop = asyncio.get_running_loop()
        settings = self.server.settings
        path = req.path
        name = req.name or profile_name(path)
        if not valid_profile_name(name):
            raise ControlError("bad-request", f"{name!r} cannot be a profile name: use 1-64 "
                               "letters, digits, '_', '.' and '-', not starting with '.' "
                               "or '-' (--name NAME)")
        approved = await self._as_user(user, lambda: list_profiles(settings.config_dir))
        if any(p.name == name for p in approved):
            raise ControlError("exists", f"an approved profile is called {name!r}: choose "
                                         "another name (--name NAME)")

        def read() -> str:
            return own_profiles.read_and_render(path)

        try:
            text = await self._as_user(user, read)
        except ProfileError as exc:
            audit.record(logging.INFO, "profile-refused", uid=uid, path=path,
                         problems=len(exc.problems))
            raise ControlError("invalid", f"{path} cannot be imported: {exc}") from None
        except OSError as exc:
            raise ControlError("not-found" if exc.errno == errno.ENOENT else "forbidden",
                               f"cannot read {path} with your rights: "
                               f"{exc.strerror or exc}") from None
        try:
            stored = await loop.run_in_executor(
                None, lambda: own_profiles.save(settings.state_dir, uid, name, text,
                                                replace=req.replace))
        except FileExistsError as exc:
            raise ControlError("exists", f"{exc.strerror}: --replace replaces it") from None
        except OSError as exc:
            log.error("event=profile-store-failed uid=%d name=%r error=%s", uid, name, exc)
            raise ControlError("failed", f"the service could not store the profile: "
                                         f"{exc.strerror or exc}") from None
        audit.record(logging.INFO, "profile-imported", uid=uid, name=name, path=path)
        return stored

    async def _log(self, conn: socket.socket, s: Controlled, req: Request) -> None:
        loop = asyncio.get_running_loop()
        output = s.output
        lines = output.lines() if output is not None else []
        lines = lines[len(lines) - req.lines:] if req.lines else []
        queue = output.follow() if (req.follow and output is not None) else None
        try:
            first = True
            for group in wc.chunk_lines(lines) if lines else iter([()]):
                await self._send(conn, wc.LogLines(group, first))
                first = False
            if queue is None:
                if req.follow:
                    await self._send(conn, wc.LogEnd())
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
                    for group in wc.chunk_lines(text):
                        await self._send(conn, wc.LogLines(group))
                    if ended:
                        await self._send(conn, wc.LogEnd())
                        return
            finally:
                hangup.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await hangup
        finally:
            if queue is not None and output is not None:
                output.unfollow(queue)
