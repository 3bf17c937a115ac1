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
import fcntl
import gc
import grp
import hashlib
import logging
import os
import pwd
import signal
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from iservice import audit, errors
from iservice import profiles as own_profiles
from iservice.aio import readable
from iservice.control import ControlServer
from iservice.errors import BackendError, JournalDataError, JournalError, StartupDataError
from iservice.monitor import Monitor, Recover, Recovered, Undo
from iservice.platform import current as current_platform
from iservice.plugin import plugin_path
from iservice.policy.ownership import Owners
from iservice.ports import DnsBackend, Hook, Platform, ProcessGroups
from iservice.session import Phase, Session
from iservice.settings import Settings
from iservice.wire import startup as w

log = logging.getLogger("iservice.server")

_MAX_DRAINING = 64  # see Server._too_many
SERVICE_LANE = ("service", 0)  # the monitor lane of the service's own jobs
UNDO_RETRY, UNDO_RETRY_MAX = 5.0, 300.0  # seconds between tries of an unfinished undo

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


def systemd_listeners() -> dict[str, socket.socket]:
    """The listening sockets systemd passed (``LISTEN_PID``, ``LISTEN_FDS``), by role.

    ``LISTEN_FDNAMES`` carries each socket unit's ``FileDescriptorName=``: ``control``
    is the control socket (``iservice-control.socket``); any other name (``service``,
    or the unit's own name when none is set), or no names at all, is the service socket.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    count = int(os.environ.get("LISTEN_FDS", "0") or "0")
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    found: dict[str, socket.socket] = {}
    for i in range(count):
        sock = socket.socket(fileno=3 + i)  # SD_LISTEN_FDS_START
        role = "control" if i < len(names) and names[i] == "control" else "service"
        if sock.type != socket.SOCK_SEQPACKET or sock.family != socket.AF_UNIX:
            raise StartupError(f"the {role} socket from systemd is not an AF_UNIX "
                               "SOCK_SEQPACKET one")
        if role in found:
            raise StartupError(f"systemd passed two {role} sockets (LISTEN_FDNAMES="
                               f"{os.environ.get('LISTEN_FDNAMES', '')!r})")
        sock.setblocking(False)
        found[role] = sock
    return found


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


def make_private_dir(path: str, what: str, mode: int) -> None:
    """A directory the service trusts (``state_dir``, ``log_dir``): made when missing,
    then held to ``check_private_dir``'s rule.

    Root keeps its journal in ``state_dir`` and writes every session's log in
    ``log_dir``, so a user who could write in either (or rename it) could plant a link
    where the next file goes.  What is missing is made one level at a time with
    ``mkdir`` (which never follows a link), and only below a directory that already
    passes the parents' rule: root never makes a directory where a user's link points,
    nor leaves one behind in a user's directory.  Any problem is a ``StartupError``
    naming the directory.
    """
    try:
        missing: list[str] = []
        probe = path = os.path.normpath(path)
        while not os.path.lexists(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        if missing:
            parent = probe
            while True:
                pst = os.stat(parent)
                if pst.st_uid != 0 or (pst.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
                                       and not pst.st_mode & stat.S_ISVTX):
                    raise StartupError(
                        f"{what} {path}: cannot be made in {parent}, which must be owned by "
                        f"root and not writable by group or others (it is uid {pst.st_uid}, "
                        f"mode {pst.st_mode & 0o7777:o})")
                if parent == "/":
                    break
                parent = os.path.dirname(parent)
            for directory in reversed(missing):
                os.mkdir(directory, mode)
        check_private_dir(path, what)
    except OSError as exc:
        raise StartupError(f"{what} {path}: {exc.strerror or exc}") from None


def prepare_log_dir(path: str) -> None:
    """``log_dir`` (mode 0750 when made: its group may read the session logs)."""
    make_private_dir(path, "log_dir", 0o750)


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


def owner_id(settings: Settings) -> str:
    """What iservice's marks (a tun's alias, a table's comment) name as their owner: the
    instance and its state directory (two services of one instance name with their own
    state directories, in one network namespace, must not take each other's objects for
    leftovers: effects/orphans.py)."""
    key = hashlib.sha256(os.path.abspath(settings.state_dir).encode()).hexdigest()[:8]
    return f"{settings.instance}#{key}"


def move_aside(journal_path: str) -> str:
    """Rename a damaged journal (and its WAL and shared-memory files) to
    ``<name>.damaged-<UTC time>``, kept for the administrator; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{journal_path}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(journal_path + suffix, aside + suffix)
    return aside


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
    """The service (module docstring); it is the ``SessionHost`` of its sessions."""

    def __init__(self, settings: Settings, platform: Platform) -> None:
        self.settings = settings
        self.platform = platform
        self.hook = select_hook(settings)
        self.sessions: set[Session] = set()
        self._conns_by_uid: Counter[int] = Counter()
        self._stopping = False
        self._draining = 0  # refused connections whose request is being taken (bounded)
        self._pending: set[Session] = set()  # connections not (yet) a running session
        self.owners = Owners()  # every live session's routes (policy/ownership.py)
        self._retrying: set[int] = set()  # sessions whose undo is tried again
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._trim: asyncio.TimerHandle | None = None  # memory give-back once idle
        self.monitor: Monitor
        self._control_listener: socket.socket
        self._activated: dict[str, socket.socket] = {}

    # -- used by sessions -----------------------------------------------------

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

    def undo_later(self, session_id: int, uid: int) -> None:
        """A session's undo left records (a backend failed, the state directory is full):
        try again while the service runs, not only at its next start (back off from
        ``UNDO_RETRY`` to ``UNDO_RETRY_MAX`` seconds)."""
        if session_id in self._retrying:
            return
        self._retrying.add(session_id)
        task = asyncio.get_running_loop().create_task(self._undo_again(session_id, uid))
        self._retry_tasks.add(task)
        task.add_done_callback(self._retry_tasks.discard)

    async def _undo_again(self, session_id: int, uid: int) -> None:
        delay = UNDO_RETRY
        try:
            while True:
                await asyncio.sleep(delay)
                undone = await self.monitor.call(SERVICE_LANE, Undo(session_id))
                log.warning("event=undo-retried session=%d uid=%d complete=%s problems=%r",
                            session_id, uid, undone.complete,
                            "; ".join(undone.problems) or "none")
                if undone.complete:
                    return
                delay = min(delay * 2, UNDO_RETRY_MAX)
        finally:
            self._retrying.discard(session_id)

    def session_running(self, session: Session) -> None:
        """The session's openvpn runs: its connection no longer counts as pending."""
        self._unpend(session)

    def _unpend(self, session: Session) -> None:
        if session in self._pending:
            self._pending.discard(session)
            uid = session.creds.uid
            self._conns_by_uid[uid] -= 1
            if not self._conns_by_uid[uid]:
                del self._conns_by_uid[uid]

    def forget(self, session: Session) -> None:
        self.sessions.discard(session)
        self._unpend(session)
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
        return self.platform.dns.make_backend(s.dns_backend, resolv_conf=s.resolv_conf,
                            resolvconf_exe=s.resolvconf_path, update_record=update_record)

    def _monitor(self, journal_path: str, cgroups: ProcessGroups) -> Monitor:
        return Monitor(journal_path, platform=self.platform, cgroups=cgroups,
                       dns_factory=self._dns_backend, instance=owner_id(self.settings))

    def _prepare_state(self) -> str:
        d = self.settings.state_dir
        make_private_dir(d, "state_dir", 0o700)
        # One service per state directory: a second one (same settings, started by hand)
        # would take the first's live sessions for a crash's leftovers and undo them.
        try:
            self._lock_fd = os.open(os.path.join(d, "lock"),
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(f"another service uses the state directory {d}") from None
        except OSError as exc:
            raise StartupError(f"state_dir {d}: {exc.strerror}") from None
        if self.settings.log_dir:
            prepare_log_dir(self.settings.log_dir)
        return os.path.join(d, "journal.sqlite3")

    def _listen(self) -> socket.socket:
        sock = self._activated.get("service")
        return sock if sock is not None else self._bind(self.settings.socket_path)

    def _bind(self, path: str) -> socket.socket:
        """A listening SEQPACKET socket at ``path`` with the configured mode and group."""
        directory = os.path.dirname(path)
        make_private_dir(directory, "socket directory", 0o755)
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
        await recover(self.monitor)

    # -- run ------------------------------------------------------------------

    async def serve(self) -> None:
        audit.set_limits(audit.RateLimiter(self.settings.audit_rate, self.settings.audit_burst))
        journal_path = self._prepare_state()
        if self.settings.user_profiles:
            for problem in own_profiles.grant_all(self.settings.state_dir):
                log.error("event=profile-access-failed reason=%r", problem)
        for problem in config_dir_warnings(self.settings.config_dir,
                                           self.settings.ovpn_admin_group):
            # CVE-2024-27903's lesson: "approved" means nothing if a user can write there.
            audit.record(logging.WARNING, "insecure-config-dir",
                         config_dir=self.settings.config_dir, reason=problem)
        try:
            cgroups = self.platform.process_groups(self.settings.state_dir)
        except OSError as exc:
            raise StartupError(f"session cgroups: {exc.strerror or exc}") from None
        try:
            try:
                self.monitor = self._monitor(journal_path, cgroups)
            except JournalDataError as exc:
                # Moved aside, never half-used: the kernel's marks then show what the
                # lost records knew (effects/orphans.py, at recovery).
                aside = move_aside(journal_path)
                log.error("event=journal-damaged path=%s moved_to=%s reason=%r: starting "
                          "with a new journal", journal_path, aside, str(exc))
                self.monitor = self._monitor(journal_path, cgroups)
        except BackendError as exc:
            raise StartupError(f"DNS: {exc.strerror}") from None
        except JournalError as exc:
            raise StartupError(f"journal: {exc.reason}") from None
        except JournalDataError as exc:
            raise StartupError(f"journal: {exc}") from None
        log.info("event=dns-backend setting=%s backend=%s block_dns=%s",
                 self.settings.dns_backend, self.monitor.dns_backend.name,
                 self.settings.block_dns)
        log.info("event=cgroups base=%s", cgroups.base)
        try:
            await self._recover()
            self._activated = systemd_listeners()
            listener = self._listen()
            try:
                # The control socket comes from systemd too when its socket unit is
                # enabled (iservice-control.socket): `iservice sessions` starts the service.
                control = self._activated.get("control")
                self._control_listener = control or self._bind(
                    self.settings.control_socket_path)
                try:
                    await self._serve(listener)
                finally:
                    self._control_listener.close()
                    if control is None:
                        with contextlib.suppress(OSError):
                            os.unlink(self.settings.control_socket_path)
            finally:
                listener.close()
                if "service" not in self._activated:
                    with contextlib.suppress(OSError):
                        os.unlink(self.settings.socket_path)
        finally:
            self.monitor.close()
            # Every session was undone, its cgroup with it: the (then empty) directory that
            # held them goes too.  One a session's leftovers still fill stays for the
            # next start, which ends them from the journal.
            cgroups.remove_base()

    async def _serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        spawner = self.platform.launcher.spawner_name()
        log.info("event=ready socket=%s instance=%r hook=%s path=%s spawner=%s",
                 self.settings.socket_path, self.settings.instance, self.hook.kind,
                 self.hook.path, spawner)
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
        audit.flush_suppressed()  # what the rate limit left out, before the last line
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
                creds = self.platform.identity.peer_credentials(conn)
                session = Session(self, conn, creds, number)
                if len(self._pending) >= self.settings.max_clients or \
                        self._conns_by_uid[creds.uid] >= self.settings.max_clients_per_user:
                    tg.create_task(self._too_many(session))
                    continue
                self.sessions.add(session)
                # Counted at admission, not when the task first runs: a burst of
                # connections is accepted before any session task starts.  Counted
                # while pending only: live sessions have their own limit, so users with
                # sessions never fill max_clients for everybody else.
                self._pending.add(session)
                self._conns_by_uid[creds.uid] += 1
                tg.create_task(self._run_session(session))
            except Exception:
                # One bad connection must never stop the accept loop.
                log.exception("event=accept-bug conn=%d", number)
                conn.close()

    async def _run_session(self, session: Session) -> None:
        try:
            await session.run()
        finally:
            self._unpend(session)

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


async def recover(mon: Monitor) -> int:
    """Undo every session left in the journal (a service that died left them), then what
    the kernel shows of lost records (``Monitor``'s ``Recover``); returns how many
    sessions kept a change for the next try."""
    done: list[Recovered] = await mon.call(SERVICE_LANE, Recover())
    for r in done:
        log.warning("event=recovered session=%d uid=%d pid=%s killed=%s problems=%r",
                    r.session_id, r.uid, r.pid, r.killed, "; ".join(r.problems) or "none")
    return sum(1 for r in done if r.problems)


def cleanup(settings: Settings, platform: Platform | None = None) -> int:
    """``iservice cleanup``: the recovery a start does (``recover``), and nothing else: no
    socket, no hook, no DNS backend probing (each record names the backend that undoes
    it).  Returns how many sessions kept a change (0: the journal is empty).  No journal,
    nothing to do: a state directory is not made for it."""
    platform = platform or current_platform()
    journal_path = os.path.join(settings.state_dir, "journal.sqlite3")
    if not os.path.exists(journal_path):
        return 0
    check_private_dir(settings.state_dir, "state_dir")
    try:
        lock = os.open(os.path.join(settings.state_dir, "lock"),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StartupError(f"a service uses the state directory {settings.state_dir}") from None
    except OSError as exc:
        raise StartupError(f"state_dir {settings.state_dir}: {exc.strerror}") from None
    try:
        try:
            cgroups: ProcessGroups | None = platform.process_groups(settings.state_dir)
        except OSError:
            cgroups = None  # the journaled cgroups cannot be ended: said per session
        try:
            mon = Monitor(journal_path, platform=platform, cgroups=cgroups,
                          instance=owner_id(settings))
        except (JournalError, JournalDataError) as exc:
            raise StartupError(f"journal: {exc}") from None
        try:
            return asyncio.run(recover(mon))
        finally:
            mon.close()
            if cgroups is not None:
                cgroups.remove_base()  # made by finding it; empty unless a session is left
    finally:
        os.close(lock)


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
        server = Server(settings, current_platform())
        asyncio.run(server.serve())
    except StartupError as exc:
        log.error("event=cannot-start reason=%r", str(exc))
        return 1
    return 0
