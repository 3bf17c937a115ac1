"""The service: listening socket, accept loop, limits, recovery, stop, systemd glue.

``Server.serve`` owns one task group; each accepted connection is one
``Session`` task, which handles its own failures (a session never takes the
server down).  On SIGTERM/SIGINT the listener closes, every session is asked to
stop (SIGTERM to openvpn, SIGKILL after ``stop_grace``), and the service exits
once every session has undone its changes.  At start, sessions left in the
journal by a service that was killed are undone before the socket opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import grp
import logging
import os
import pwd
import signal
import socket
import stat
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from iservice import audit, errors
from iservice.aio import readable
from iservice.control import ControlServer
from iservice.errors import StartupDataError
from iservice.linux import launch
from iservice.linux.dns import DnsBackend, DnsError, make_backend
from iservice.linux.identity import peer_credentials
from iservice.linux.netlink import Rtnl
from iservice.monitor import Monitor
from iservice.plugin import plugin_path
from iservice.policy.requests import DefaultRoute
from iservice.session import Phase, Session
from iservice.settings import Settings
from iservice.wire import startup as w

log = logging.getLogger("iservice.server")

_MAX_DRAINING = 64  # see Server._too_many

# Errors from accept() that mean "out of resources now", not "listener broken".
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class StartupError(Exception):
    """The service cannot start; the message says why (shown to the administrator)."""


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state, when it asked to be told."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(state.encode(), addr)


def check_private_dir(path: str, what: str) -> None:
    """A directory the service trusts must be root-owned and not writable by others.

    Its parents too: whoever can rename a parent can put another directory in
    its place.  A parent writable by others is accepted only with the sticky
    bit (``/tmp``), where nobody can rename a directory root owns.
    """
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"{what} {path} is not a directory")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StartupError(f"{what} {path} must be owned by root and not writable by "
                           f"group or others (it is uid {st.st_uid}, mode {st.st_mode & 0o7777:o})")
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        pst = os.stat(parent)
        if pst.st_uid != 0 or (pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                               and not pst.st_mode & stat.S_ISVTX):
            raise StartupError(f"{what} {path}: its parent {parent} must be owned by root and "
                               f"not writable by group or others (it is uid {pst.st_uid}, "
                               f"mode {pst.st_mode & 0o7777:o})")
        if parent == "/":
            break
        parent = os.path.dirname(parent)


_MAX_CONFIG_ENTRIES = 10000  # entries looked at by config_dir_warnings


def config_dir_warnings(config_dir: str, admin_group: str) -> list[str]:
    """Why "approved" may mean nothing: config_dir or something in it writable by a non-admin.

    Admins are root and the members of ``admin_group``; a file or directory owned
    by anyone else, writable by others, or writable by a group other than root's
    and the admin group's, could be changed by a non-admin.  The parents of
    config_dir count too.  Symbolic links are not followed (the validator
    resolves them and refuses a config that leaves config_dir).
    """
    try:
        admin = grp.getgrnam(admin_group)
        admin_gids, admin_uids = {0, admin.gr_gid}, {0}
        for name in admin.gr_mem:
            with contextlib.suppress(KeyError):
                admin_uids.add(pwd.getpwnam(name).pw_uid)
    except KeyError:
        admin_gids, admin_uids = {0}, {0}
    problems: list[str] = []

    def judge(path: str, st: os.stat_result, parent: bool = False) -> None:
        mode = st.st_mode
        if parent and mode & stat.S_ISVTX:
            return  # /tmp-like: nobody renames root's entries
        if st.st_uid not in admin_uids:
            problems.append(f"{path} is owned by uid {st.st_uid}, who is not an admin")
        elif mode & stat.S_IWOTH:
            problems.append(f"{path} is writable by every user (mode {mode & 0o7777:o})")
        elif mode & stat.S_IWGRP and st.st_gid not in admin_gids:
            problems.append(f"{path} is writable by group {st.st_gid}, which is not an "
                            f"admin group (mode {mode & 0o7777:o})")

    try:
        top = os.lstat(config_dir)
    except OSError as exc:
        return [f"config_dir {config_dir} cannot be examined: {exc.strerror}"]
    parent = os.path.dirname(os.path.abspath(config_dir))
    while True:
        with contextlib.suppress(OSError):
            judge(parent, os.stat(parent), parent=True)
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    judge(config_dir, top)
    seen = 0
    for root, dirs, files in os.walk(config_dir):
        for name in dirs + files:
            seen += 1
            if seen > _MAX_CONFIG_ENTRIES:
                return problems
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode):
                    judge(path, st)
    return problems


def _check_usable_by_others(path: str, what: str, mode_bit: int, need: str) -> None:
    """openvpn runs as the user: the file needs ``mode_bit`` for others, and every
    directory on the way o+x."""
    probe = path
    while True:
        st = os.stat(probe)
        bit = mode_bit if probe == path else stat.S_IXOTH
        if not st.st_mode & bit:
            lacks = need if probe == path else "o+x"
            raise StartupError(
                f"{what} {path} cannot be used by other users: {probe} lacks {lacks} (is the "
                "service installed under /root? install it into a venv such as /opt/iservice)")
        if probe == "/":
            break
        probe = os.path.dirname(probe)


IDLE_TRIM_DELAY = 2.0  # seconds without any session before memory is given back


def _give_back_memory() -> None:
    """When the last session has ended: free what a burst left behind and return the
    free heap to the system, so the service's RSS goes back to its idle figure (P3:
    after 100 sessions 28.6 MB vs 26.0 MB idle without this)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc; elsewhere nothing to do


def hook_command(settings: Settings) -> str:
    """The hook executable; it must be runnable by any user (openvpn runs as the user)."""
    path = settings.hook_path or os.path.join(os.path.dirname(sys.executable), "iservice-hook")
    if not os.path.isabs(path) or any(c.isspace() or c in "\"'\\" for c in path):
        raise StartupError(f"hook path {path!r} must be absolute, without spaces or quotes")
    if not os.access(path, os.X_OK):
        raise StartupError(f"hook {path} does not exist or is not executable")
    _check_usable_by_others(path, "hook", stat.S_IXOTH, "o+x")
    return path


@dataclass(frozen=True)
class Hook:
    """How openvpn sends its requests: the plugin (``--plugin path FD``) or the script."""
    kind: str  # "plugin" | "script"
    path: str


def select_hook(settings: Settings) -> Hook:
    """``hook = auto``: the plugin when it was built (``pip install`` with a compiler),
    else the script.  The chosen file must be usable by any user; ``plugin`` without the
    plugin is a start-up error, not a silent fallback."""
    found = plugin_path()
    kind = settings.hook
    if kind == "auto":
        kind = "plugin" if found is not None else "script"
    if kind == "script":
        return Hook("script", hook_command(settings))
    if found is None:
        raise StartupError("hook = plugin, but the openvpn plugin is not installed (pip "
                           "install builds it when gcc and openvpn-plugin.h are there)")
    if any(c.isspace() or c in "\"'\\" for c in found):
        # openvpn parses --plugin's arguments again; keep the path a single token
        raise StartupError(f"plugin path {found!r} must not contain spaces or quotes")
    if not os.access(found, os.R_OK):
        raise StartupError(f"plugin {found} is not readable")
    _check_usable_by_others(found, "plugin", stat.S_IROTH, "o+r")
    return Hook("plugin", found)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hook = select_hook(settings)
        self.sessions: set[Session] = set()
        self._conns_by_uid: Counter[int] = Counter()
        self._conn_count = 0
        self._stopping = False
        self._draining = 0  # refused connections whose request is being taken (bounded)
        self._query_rtnl: Rtnl | None = None
        self._trim: asyncio.TimerHandle | None = None  # memory give-back once idle
        self.monitor: Monitor
        self._control_listener: socket.socket

    # -- used by sessions -----------------------------------------------------

    def service_options(self, tun: str, channel_fd: int) -> list[str]:
        """Appended last, so they win over the user's options (SPEC §4)."""
        if self.hook.kind == "plugin":
            # In-process: no script, so no --script-security 2; openvpn calls the plugin
            # at up, route-up, route-pre-down and down, as it would run the scripts.
            hooks = ["--plugin", self.hook.path, str(channel_fd)]
        else:
            cmd = f"{self.hook.path} {channel_fd}"
            hooks = ["--script-security", "2", "--up", cmd, "--route-up", cmd,
                     "--route-pre-down", cmd, "--down", cmd]
        return ["--dev", tun, "--dev-type", "tun", "--disable-dco",
                "--ifconfig-noexec", "--route-noexec", *hooks, "--up-restart"]

    def session_log_path(self, session_id: int) -> str | None:
        if self.settings.log_dir is None:
            return None
        return os.path.join(self.settings.log_dir, f"session-{session_id}.log")

    def check_session_limit(self, session: Session) -> None:
        uid = session.creds.uid
        # A launching session has no id yet while the monitor starts it: it counts.
        live = sum(1 for s in self.sessions
                   if s is not session and s.creds.uid == uid and
                   (s.session_id is not None or s.phase is Phase.LAUNCHING))
        if live >= self.settings.max_sessions_per_user:
            raise StartupDataError("Too many sessions for this user",
                                   f"at most {self.settings.max_sessions_per_user} at a time",
                                   code=errors.ERROR_CANT_WAIT)

    def default_route(self, family: int) -> DefaultRoute | None:
        if self._query_rtnl is None:
            self._query_rtnl = Rtnl()
        r = self._query_rtnl.default_route(family)
        if r is None or r.gateway is None or r.oif is None:
            return None
        return DefaultRoute(gateway=r.gateway, oif=r.oif)

    def shadows(self, asking: Session, addr: IPv4Address | IPv6Address) -> bool:
        """Would a host route to ``addr`` shadow a route another live session owns?"""
        for s in self.sessions:
            if s is asking:
                continue
            for key in s.records.routes:
                if not key.bypass and key.dst.version == addr.version and addr in key.dst:
                    return True
            for akey in s.records.addresses:
                if akey.address == addr:
                    return True
        return False

    def forget(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions and self._trim is None:
            # Not at once: a full collection blocks the loop for a few ms, and a user
            # who starts sessions one after another would wait for it every time.
            self._trim = asyncio.get_running_loop().call_later(IDLE_TRIM_DELAY, self._idle)

    def _idle(self) -> None:
        self._trim = None
        if not self.sessions:
            _give_back_memory()

    # -- start ----------------------------------------------------------------

    def _dns_backend(self, update_record: Callable[[int, dict[str, Any]], None]) -> DnsBackend:
        """Chosen once at start (``auto``: resolved's name on the bus, else openresolv,
        else the file); runs in the monitor thread."""
        s = self.settings
        return make_backend(s.dns_backend, resolv_conf=s.resolv_conf,
                            resolvconf_exe=s.resolvconf_path, update_record=update_record)

    def _prepare_state(self) -> str:
        d = self.settings.state_dir
        os.makedirs(d, mode=0o700, exist_ok=True)
        check_private_dir(d, "state_dir")
        if self.settings.log_dir:
            os.makedirs(self.settings.log_dir, mode=0o750, exist_ok=True)
        return os.path.join(d, "journal.sqlite3")

    def _listen(self) -> socket.socket:
        if os.environ.get("LISTEN_PID") == str(os.getpid()) and \
                int(os.environ.get("LISTEN_FDS", "0")) >= 1:
            sock = socket.socket(fileno=3)  # SD_LISTEN_FDS_START
            if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
                raise StartupError("the socket from systemd is not an AF_UNIX SOCK_SEQPACKET one")
            sock.setblocking(False)
            return sock
        return self._bind(self.settings.socket_path)

    def _bind(self, path: str) -> socket.socket:
        """A listening SEQPACKET socket at ``path`` with the configured mode and group."""
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        check_private_dir(directory, "socket directory")
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise StartupError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # stale socket of a service that died
            except OSError as exc:
                raise StartupError(f"cannot probe {path}: {exc}") from None
            else:
                raise StartupError(f"another service already listens on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket exists with mode 0600 until chmod below
        try:
            sock.bind(path)
        except OSError as exc:
            raise StartupError(f"cannot bind {path}: {exc}") from None
        finally:
            os.umask(old)
        gid = -1
        if self.settings.socket_group:
            try:
                gid = grp.getgrnam(self.settings.socket_group).gr_gid
            except KeyError:
                raise StartupError(f"socket_group {self.settings.socket_group!r} "
                                   "does not exist") from None
        os.chown(path, 0, gid)
        os.chmod(path, self.settings.socket_mode)
        # The kernel's maximum: a burst of hostile connections must not fill the
        # queue before the accept loop drains it (CVE-2025-13751).
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        return sock

    async def _recover(self) -> None:
        mon = self.monitor
        for rec in await mon.call(mon.leftover_sessions):
            # The openvpn of a session whose service died still runs as the user;
            # end it first (only if it is the very process we started).
            pid, start = rec.info.get("pid"), rec.info.get("start_time")
            killed = isinstance(pid, int) and isinstance(start, int) and \
                launch.kill_if_same(pid, start)
            problems = await mon.call(mon.undo_session, rec.id)
            log.warning("event=recovered session=%d uid=%d pid=%s killed=%s problems=%r",
                        rec.id, rec.uid, pid, killed, "; ".join(problems) or "none")

    # -- run ------------------------------------------------------------------

    async def serve(self) -> None:
        journal_path = self._prepare_state()
        for problem in config_dir_warnings(self.settings.config_dir,
                                           self.settings.ovpn_admin_group):
            # CVE-2024-27903's lesson: "approved" means nothing if a user can write there.
            audit.record(logging.WARNING, "insecure-config-dir",
                         config_dir=self.settings.config_dir, reason=problem)
        try:
            self.monitor = Monitor(journal_path, dns_factory=self._dns_backend)
        except DnsError as exc:
            raise StartupError(f"DNS: {exc.strerror}") from None
        log.info("event=dns-backend setting=%s backend=%s block_dns=%s",
                 self.settings.dns_backend, self.monitor.dns.name, self.settings.block_dns)
        try:
            await self._recover()
            listener = self._listen()
            try:
                # The control socket (sessions, status, log, disconnect) is never
                # socket-activated: without a running service there is nothing to show.
                self._control_listener = self._bind(self.settings.control_socket_path)
                try:
                    await self._serve(listener)
                finally:
                    self._control_listener.close()
                    with contextlib.suppress(OSError):
                        os.unlink(self.settings.control_socket_path)
            finally:
                listener.close()
                if not os.environ.get("LISTEN_FDS"):
                    with contextlib.suppress(OSError):
                        os.unlink(self.settings.socket_path)
        finally:
            self.monitor.close()
            if self._query_rtnl is not None:
                self._query_rtnl.close()

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        spawner = launch.SPAWNER
        log.info("event=ready socket=%s instance=%r hook=%s path=%s spawner=%s",
                 self.settings.socket_path, self.settings.instance, self.hook.kind,
                 self.hook.path, spawner.path if spawner else "popen")
        sd_notify("READY=1\nSTATUS=accepting connections")
        async with asyncio.TaskGroup() as tg:
            accept = tg.create_task(self._accept_loop(listener, tg))
            control = tg.create_task(ControlServer(self).serve(self._control_listener))
            await stop.wait()
            log.info("event=stopping sessions=%d", len(self.sessions))
            sd_notify("STOPPING=1")
            self._stopping = True
            accept.cancel()
            control.cancel()
            for s in list(self.sessions):
                s.request_stop()
        log.info("event=stopped")

    async def _accept_loop(self, listener: socket.socket, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        number = 0
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                    log.error("event=accept-failed error=%s", exc)
                    await asyncio.sleep(0.1)
                    continue
                raise
            number += 1
            try:
                conn.setblocking(False)
                creds = peer_credentials(conn)
                session = Session(self, conn, creds, number)
                if self._conn_count >= self.settings.max_clients or \
                        self._conns_by_uid[creds.uid] >= self.settings.max_clients_per_user:
                    tg.create_task(self._too_many(session))
                    continue
                self.sessions.add(session)
                # Counted at admission, not when the task first runs: a burst of
                # connections is accepted before any session task starts.
                self._conn_count += 1
                self._conns_by_uid[creds.uid] += 1
                tg.create_task(self._run_session(session))
            except Exception:
                # One bad connection must never stop the accept loop.
                log.exception("event=accept-bug conn=%d", number)
                conn.close()

    async def _run_session(self, session: Session) -> None:
        uid = session.creds.uid
        try:
            await session.run()
        finally:
            self._conn_count -= 1
            self._conns_by_uid[uid] -= 1
            if not self._conns_by_uid[uid]:
                del self._conns_by_uid[uid]

    async def _too_many(self, session: Session) -> None:
        audit.record(logging.WARNING, "too-many-clients", uid=session.creds.uid,
                     client_pid=session.creds.pid, conn=session.number, what="connection",
                     verdict="refused", reason="Too many concurrent clients")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(2):
                await loop.sock_sendall(session.conn, w.encode_reply(w.too_many_clients_reply()))
            # A client sends its request right after connecting; closing with it unread
            # would reset the connection before the client reads the reply.  Take it,
            # briefly and for a bounded number of refused connections at a time.
            if self._draining < _MAX_DRAINING:
                self._draining += 1
                try:
                    async with asyncio.timeout(0.5):
                        await readable(session.conn.fileno())
                    for _ in range(4):
                        if not session.conn.recv(1, socket.MSG_DONTWAIT | socket.MSG_TRUNC):
                            break
                finally:
                    self._draining -= 1
        except (OSError, TimeoutError):
            pass
        finally:
            session.conn.close()


def run(settings: Settings) -> int:
    # The event loop thread and the monitor thread hand the GIL to each other around
    # every syscall; with the default 5 ms switch interval the monitor often waited a
    # whole slice before it could start on a batch (10,000 routes through the channel:
    # median 169 ms with 5 ms, 156 ms with 0.5 ms; bench/bench_channel.py).
    sys.setswitchinterval(0.0005)
    # A route makes ~10 short-lived objects: with the default threshold (700) the cyclic
    # collector ran ~140 times per 10,000 routes.  What start-up made is frozen out of
    # the collections.  Service CPU for 10,000 routes 194 → 188 ms (bench_channel).
    gc.freeze()
    gc.set_threshold(20000, 20, 20)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(audit.LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        server = Server(settings)
        asyncio.run(server.serve())
    except StartupError as exc:
        log.error("event=cannot-start reason=%r", str(exc))
        return 1
    return 0
