"""One session's life: read the request → validate → launch → serve the channel → undo.

A session is one task.  Whatever ends it (openvpn exits or is killed, the channel
breaks or misbehaves, the service stops, a bug), its ``finally`` runs undo exactly
once, shielded from cancellation, and a failure ends only this session: ``run``
never raises into the server's task group.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from iservice import audit, errors
from iservice.aio import readable, shielded
from iservice.control import VpnState, management_socket, profile_name, read_counter, session_name
from iservice.envstream import EnvStream
from iservice.errors import StartupDataError
from iservice.facts import SessionFacts, read_option_facts
from iservice.monitor import (
    Applied,
    Apply,
    LaunchSpec,
    Monitor,
    QueryDefaultRoute,
    SetInfo,
    SetServers,
    Started,
    StartFailed,
    StartSession,
    Undo,
    Undone,
)
from iservice.output import SessionOutput
from iservice.pipeline import Batch, Pipeline
from iservice.policy.options import Approved, OsPathResolver, validate_options
from iservice.policy.ownership import Owners, RouteTable, scope_for
from iservice.policy.redirect import Facts, OptionFacts
from iservice.policy.requests import (
    Limits,
    RequestPolicy,
    SessionRecords,
    SetBlock,
)
from iservice.ports import BatchSender, Child, Hook, PeerCredentials, Platform, UserIdentity
from iservice.produce import Context
from iservice.profiles import profile_dir
from iservice.settings import Settings
from iservice.wire import control as wc
from iservice.wire import msg as m
from iservice.wire import startup as w
from iservice.wire.msg import WFP_BLOCK_DNS

log = logging.getLogger("iservice.session")

STARTUP_TIMEOUT = 2.0  # seconds for the startup message (the original's IO_TIMEOUT)
STARTUP_BUFSIZE = w.MAX_STARTUP_UNITS * 2 + 2  # one unit more than allowed: "too long"
MAX_INFLIGHT = 2  # batches handed to the monitor and not yet answered
SERVERS_PACE = 0.1  # seconds between two server-list updates of one session (_sync_servers)
SIGTERM_REPEAT = 1.0  # seconds between two SIGTERMs to an openvpn asked to end (_stop_on_request)


AFTER_REPLY_NICE = 5  # added to the service's nice value for the after-reply thread
_after_reply: concurrent.futures.ThreadPoolExecutor | None = None


def _after_reply_pool() -> concurrent.futures.ThreadPoolExecutor:
    """One thread, at a lower CPU priority, for what the PID reply need not wait for
    (``Session._after_reply``).  Creating a file costs 0.25-0.7 ms of kernel CPU on the
    test machines' ext4: in a burst of 100 starts the default executor's threads took
    that from the monitor and the loop (P3's p99, docs/performance.md "Start, where the
    time goes"); here it yields the CPU to them and runs when they wait."""
    global _after_reply
    if _after_reply is None:
        _after_reply = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="after-reply", initializer=_lower_priority)
    return _after_reply


def _lower_priority() -> None:
    # Linux: the nice value is per thread (setpriority with the thread's id).
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + AFTER_REPLY_NICE))


class Phase(enum.Enum):
    READING = "reading"
    VALIDATING = "validating"
    LAUNCHING = "launching"
    RUNNING = "running"
    STOPPING = "stopping"
    UNDOING = "undoing"
    DONE = "done"


async def _readable(sock: socket.socket) -> None:
    await readable(sock.fileno())


def recv_packet(sock: socket.socket, buf: bytearray) -> tuple[int, bytes] | None:
    """One message from a non-blocking SEQPACKET socket: (true length, data), or None.

    ``MSG_TRUNC`` makes recv report the message's real length even when it was
    longer than ``buf``, so an oversize message is seen as such, never cut silently.
    """
    try:
        n = sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
    except BlockingIOError:
        return None
    return n, bytes(buf[: min(n, len(buf))])


class SessionHost(Protocol):
    """What a session needs of the service that runs it (``Server`` is one), and no more."""

    @property
    def settings(self) -> Settings: ...
    @property
    def platform(self) -> Platform: ...
    @property
    def monitor(self) -> Monitor: ...
    @property
    def owners(self) -> Owners: ...
    @property
    def hook(self) -> Hook: ...

    def check_session_limit(self, session: Session) -> None:
        """Raise ``StartupDataError`` if the user has too many sessions already."""

    def session_log_path(self, session_id: int) -> str | None:
        """Where the session's openvpn output goes (``log_dir``), if anywhere."""

    def session_running(self, session: Session) -> None:
        """openvpn runs: the connection is no longer pending."""

    def undo_later(self, session_id: int, uid: int) -> None:
        """The undo left records: try again while the service runs."""

    def forget(self, session: Session) -> None:
        """The session is over."""


@dataclass(eq=False)  # identity semantics: sessions live in sets
class Session:
    server: SessionHost
    conn: socket.socket
    creds: PeerCredentials
    number: int  # connection number, for logs before a session id exists
    phase: Phase = Phase.READING
    session_id: int | None = None
    tun_name: str | None = None
    tun_ifindex: int | None = None
    user: UserIdentity | None = None
    child: Child | None = None
    channel: socket.socket | None = None
    admin: bool = False
    output: SessionOutput | None = None
    _output_fd: int | None = None
    _acks: BatchSender | None = None
    client_connected: bool = True
    # For `iservice sessions/status` (control.py): the approved config, when openvpn
    # started (wall clock), and openvpn's state as seen in its output.
    config: str | None = None
    user_argv: tuple[str, ...] = ()
    started_at: float | None = None
    vpn: VpnState = field(default_factory=VpnState)
    records: SessionRecords = field(default_factory=lambda: SessionRecords(RouteTable(), {}))
    facts: SessionFacts | None = None  # for the producer: full tunnel, block-outside-dns
    _option_facts: OptionFacts | None = None  # read while validating, used by _launch
    _servers: tuple[str, ...] = ()  # VPN server addresses the kill switch lets through
    _servers_stale = True  # not yet handed to the monitor since they may have changed
    _servers_job: asyncio.Future[Any] | None = None  # a SetServers in the monitor
    _servers_timer: asyncio.TimerHandle | None = None  # the next one, paced (_sync_servers)
    _pipeline: Pipeline | None = None
    route_table: int | None = None  # route_scope = user: the session's own routing table
    _tasks: set[asyncio.Future[Any]] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    # -- what the control socket sees (control.py) ---------------------------

    def info(self) -> wc.SessionInfo:
        """The view of one live session (docs/control.md, "SESSION object")."""
        assert self.session_id is not None
        profile = profile_name(self.config)
        vpn = self.vpn
        addresses = tuple(sorted(f"{k.address}/{k.prefix_len}"
                                 for k in self.records.addresses))
        return wc.SessionInfo(
            name=session_name(profile, self.session_id),
            id=self.session_id,
            user=self.user.name if self.user else str(self.creds.uid),
            uid=self.creds.uid,
            profile=profile,
            config=self.config,
            state=vpn.name if self.phase is Phase.RUNNING else self.phase.value.upper(),
            detail=vpn.detail,
            state_since=round(vpn.since, 3),
            started=round(self.started_at, 3) if self.started_at else None,
            tun=self.tun_name,
            addresses=addresses,
            # rx on the tun = what came out of the tunnel = bytes in
            bytes_in=read_counter(self.tun_name, "rx_bytes"),
            bytes_out=read_counter(self.tun_name, "tx_bytes"),
            pid=self.child.pid if self.child else None,
            management=management_socket(self.user_argv),
        )

    @property
    def finished(self) -> bool:
        return self.phase is Phase.DONE

    # -- logging --------------------------------------------------------------

    def _log(self, level: int, event: str, **kv: object) -> None:
        """One audit line (``audit.py``): who, then what, verdict and reason."""
        audit.record(level, event, uid=self.creds.uid, client_pid=self.creds.pid,
                     conn=self.number, session=self.session_id,
                     pid=None if self.child is None else self.child.pid, **kv)

    def _who(self) -> str:
        """The who-part of this session's audit lines, as ``_log`` writes it."""
        return audit.who(uid=self.creds.uid, client_pid=self.creds.pid, conn=self.number,
                         session=self.session_id,
                         pid=None if self.child is None else self.child.pid)

    # -- replies --------------------------------------------------------------

    async def _reply(self, reply: w.Reply) -> None:
        if not self.client_connected:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await loop.sock_sendall(self.conn, w.encode_reply(reply))
        except (OSError, TimeoutError):
            self.client_connected = False

    # -- the life -------------------------------------------------------------

    def request_stop(self) -> None:
        """Service stop: end openvpn (SIGTERM, then SIGKILL after the grace period)."""
        self._stop.set()

    async def run(self) -> None:
        try:
            await self._run()
        except Exception:
            self._log(logging.ERROR, "session-bug", phase=self.phase.value)
            log.exception("unexpected error in session")
        finally:
            await self._finish()

    async def _run(self) -> None:
        try:
            data = await self._read_startup()
            approved = await self._validate(data)
            await self._launch(data, approved)
        except StartupDataError as exc:
            self._log(logging.WARNING, "refused", verdict="refused", reason=exc.func,
                      code=f"0x{exc.code:08x}", message=exc.message or None)
            await self._reply(w.error_reply(exc))
            return
        await self._serve()

    async def _read_startup(self) -> w.StartupData:
        buf = bytearray(STARTUP_BUFSIZE)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                while True:
                    got = recv_packet(self.conn, buf)
                    if got is not None:
                        break
                    await _readable(self.conn)
        except TimeoutError:
            raise StartupDataError(w.FUNC_TIMEOUT) from None
        n, raw = got
        if n > len(buf):
            raise StartupDataError(w.FUNC_TOO_LONG)
        return w.decode_startup(raw)

    async def _validate(self, data: w.StartupData) -> Approved:
        self.phase = Phase.VALIDATING
        settings = self.server.settings
        identity = self.server.platform.identity
        user = identity.user_identity(self.creds.uid, self.creds.gid)
        self.user = user
        admin = identity.is_admin(user, settings.ovpn_admin_group)
        self.admin = admin
        self._log(logging.INFO, "request", what="startup", user=user.name, admin=admin,
                  workdir=data.workdir, options=data.options)
        self.server.check_session_limit(self)
        # The caller's own imported profiles are approved for the caller alone.
        own_profiles = profile_dir(settings.state_dir, user.uid) \
            if settings.user_profiles else None

        def check() -> tuple[Approved, OptionFacts]:
            approved = validate_options(data.options, data.workdir,
                                        config_dir=settings.config_dir,
                                        admin_group=settings.ovpn_admin_group,
                                        is_admin=admin, resolver=OsPathResolver(),
                                        user_profile_dir=own_profiles)
            try:
                os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                raise StartupDataError(
                    "Cannot open /dev/net/tun with your rights", os.strerror(exc.errno or 0),
                    code=exc.errno or errors.ERROR_ACCESS_DENIED) from None
            # The facts for the hook are read here too, with the same rights: one thread
            # for both instead of a second one after the tun (~60 µs per start, measured).
            return approved, read_option_facts(approved.argv)

        try:
            approved, self._option_facts = await identity.as_fs_user(
                user, check, timeout=settings.check_timeout)
        except TimeoutError:
            raise StartupDataError(
                "Checking your request took too long",
                f"a path it names did not answer within {settings.check_timeout:g} s",
                code=errors.ERROR_TIMEOUT) from None
        except errors.StillStuck:
            raise StartupDataError(
                "An earlier request of yours is still waiting for the file system",
                "try again once the paths it names answer", code=errors.ERROR_TIMEOUT) \
                from None
        return approved

    @property
    def lane(self) -> tuple[str, int]:
        """This session's lane in the monitor (one per connection: served fairly)."""
        return ("conn", self.number)

    async def _launch(self, data: w.StartupData, approved: Approved) -> None:
        if self._stop.is_set():  # the service began to stop while we validated
            raise StartupDataError("The service is stopping", code=errors.ERROR_OPENVPN_STARTUP)
        # Again, now without an await before the phase changes: concurrent requests of
        # one user all passed the first check while none of them was launching yet.
        self.server.check_session_limit(self)
        self.phase = Phase.LAUNCHING
        assert self.user is not None and self._option_facts is not None
        user = self.user
        opts = self._option_facts
        settings = self.server.settings
        self.facts = facts = SessionFacts(opts)
        facts.on_servers = lambda _servers: self._sync_servers()
        if not opts.push_visible:
            self._log(logging.INFO, "push-not-visible",
                      reason="openvpn's output does not show PUSH_REPLY (--verb < 3 or --log): "
                             "a pushed redirect-gateway or block-outside-dns is not seen")
        self.config = approved.config
        self.user_argv = approved.argv  # control.py: the management socket, for iservice auth
        svc_end, child_end = self.server.platform.channel.channel_pair()
        self.channel = svc_end
        svc_end.setblocking(False)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        self._output_fd = out_r
        hook = self.server.hook
        spec = LaunchSpec(
            exe=settings.exe_path, user_argv=tuple(approved.argv), hook_kind=hook.kind,
            hook_path=hook.path, user=user, workdir=data.workdir, nice=settings.priority,
            stdin=data.stdin.encode("utf-8", "surrogatepass"), channel_fd=child_end.fileno(),
            output_fd=out_w)
        job = StartSession(
            uid=user.uid, gid=user.gid, client_pid=self.creds.pid,
            info={"user": user.name, "argv": list(approved.argv), "workdir": data.workdir},
            launch=spec, reply_to=self.conn,
            who={"uid": self.creds.uid, "client_pid": self.creds.pid, "conn": self.number},
            user_scope=settings.route_scope == "user" and not self.admin)
        try:
            started = await self._start_in_monitor(job)
        finally:
            child_end.close()
            os.close(out_w)
        self.session_id, self.tun_name = started.session_id, started.tun_name
        self.tun_ifindex, self.child = started.tun_ifindex, started.child
        self.route_table = started.table
        self.phase = Phase.RUNNING
        self.server.session_running(self)
        self.started_at = time.time()
        if not started.replied:
            await self._reply(w.PidReply(self.child.pid))
        await self._after_reply(started, facts)

    async def _after_reply(self, started: Started, facts: SessionFacts) -> None:
        """What the PID reply need not wait for: the session's log file, and openvpn's
        start time in the journal — only for a session without a cgroup, where recovery
        needs it to end a leftover openvpn (``Monitor._recover``); with one, recovery ends
        the cgroup's processes and the start time is neither read nor journaled (a
        monitor turn and a ``/proc`` read less per start: P3, docs/performance.md).

        Both in one executor thread, off the loop: creating the log file in
        ``log_dir`` took 0.1 ms alone and 0.8 ms of CPU per start in a burst of 100, and
        reading ``/proc/PID/stat`` waits until the child is through its ``exec``
        (0.2-1.2 ms).  openvpn's output waits in the pipe meanwhile; the channel and
        the pidfd are watched only from ``_serve`` on, right after this.
        """
        loop = asyncio.get_running_loop()
        path = self.server.session_log_path(started.session_id)
        pid = started.child.pid
        launcher = self.server.platform.launcher

        def work() -> tuple[SessionOutput, int | None, str | None]:
            try:
                output, problem = SessionOutput(file_path=path), None
            except OSError as exc:  # keep the session, without its log file
                output, problem = SessionOutput(), f"{path}: {exc.strerror}"
            start = None if started.grouped else launcher.process_start_time(pid)
            return output, start, problem

        if path is None and started.grouped:
            output, start, problem = SessionOutput(), None, None  # nothing to wait for
        else:
            output, start, problem = await self._off_loop(loop, work)
        output.observers.append(self.vpn.feed)
        output.observers.append(facts.observe)
        self.output = output
        if problem is not None:
            self._log(logging.WARNING, "session-log-failed", reason=problem)
        # The child is reaped only by this thread, in _serve or _undo, neither of which
        # has run yet: the pid was still openvpn's while it was read, never a recycled
        # one.  (None: it is gone already, there is nothing a recovery could end.)
        if start is None or started.child.returncode is not None:
            return
        self._keep(self.server.monitor.submit(
            self.lane, SetInfo(started.session_id, {**started.info, "start_time": start})))

    @staticmethod
    async def _off_loop(loop: asyncio.AbstractEventLoop,
                        work: Callable[[], tuple[SessionOutput, int | None, str | None]],
                        ) -> tuple[SessionOutput, int | None, str | None]:
        """``work`` in an executor thread; a log file it made is closed if the session
        ends meanwhile."""
        job = loop.run_in_executor(_after_reply_pool(), work)
        try:
            return await shielded(job)
        except asyncio.CancelledError:  # the session ends: close the log file made
            if not job.cancelled() and job.exception() is None:
                job.result()[0].close()
            raise

    def _keep(self, fut: asyncio.Future[Any]) -> None:
        """A monitor job the session does not wait for now; ``_undo`` waits for it."""
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    async def _start_in_monitor(self, job: StartSession) -> Started:
        """``StartSession``, with what it made kept for the undo even if it failed or this
        task was cancelled meanwhile (the monitor thread goes on using the descriptors
        it was given: they are closed only once it is done)."""
        # The user's lane, not the connection's: one user's many starts take one turn
        # in the monitor's round robin, not one each (a burst of 64 would otherwise
        # queue another user's start behind all of them).
        call = self.server.monitor.submit(("start", self.creds.uid), job)
        try:
            try:
                started: Started = await shielded(call)
                return started
            except asyncio.CancelledError:
                error = None if call.cancelled() else call.exception()
                if error is None and not call.cancelled():
                    self.session_id, self.child = call.result().session_id, call.result().child
                elif isinstance(error, StartFailed):
                    self.session_id, self.child = error.session_id, error.child
                raise
        except StartFailed as exc:
            self.session_id = exc.session_id
            self.child = exc.child
            err = exc.error
            if isinstance(err, errors.JournalError):
                self._log(logging.ERROR, "journal-failed", reason=err.reason)
                raise StartupDataError("Cannot record the session", err.reason,
                                       code=err.ack_error) from None
            if not isinstance(err, OSError):
                raise err from None  # a bug: logged as such; the undo still runs
            code = err.errno or 1
            if exc.stage == "tun":
                raise StartupDataError("Cannot create the tun device", os.strerror(code),
                                       code=code) from None
            if exc.stage == "spawn":
                raise StartupDataError("Cannot start openvpn", os.strerror(code),
                                       code=code) from None
            if exc.stage == "cgroup":
                raise StartupDataError("Cannot create the session's cgroup",
                                       os.strerror(code), code=code) from None
            raise err from None

    async def _serve(self) -> None:
        assert self.child is not None
        child = self.child
        assert self.output is not None and self._output_fd is not None
        async with asyncio.TaskGroup() as tg:
            channel = tg.create_task(self._serve_channel())
            stopper = tg.create_task(self._stop_on_request())
            pump = tg.create_task(self.output.pump(self._output_fd))
            status = await child.wait()
            channel.cancel()
            stopper.cancel()
            # A child openvpn left behind may hold the pipe open: take what is there.
            pump.cancel()
        self.output.drain(self._output_fd)
        self._log(logging.INFO, "exited", status=status)
        if status != 0 and not self._stop.is_set():
            await self._reply(w.exit_error_reply(status))

    async def _stop_on_request(self) -> None:
        """``iservice disconnect`` or the service's stop: SIGTERM; again every
        ``SIGTERM_REPEAT`` seconds while openvpn's output does not show that it is
        exiting; SIGKILL once ``stop_grace`` is over.

        openvpn 2.6 loses a SIGTERM that comes while it is inside a plugin call at
        route-up (its start): sent once, such a disconnect waited the whole grace period
        and ended in SIGKILL, without the exit notification to the server.  Not sent
        again once openvpn says it is exiting ("process exiting", "sending exit
        notification to peer"): a second SIGTERM would cut ``explicit-exit-notify``'s
        wait short.
        """
        await self._stop.wait()
        self.phase = Phase.STOPPING
        assert self.child is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.server.settings.stop_grace
        self.child.signal(signal.SIGTERM)
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(SIGTERM_REPEAT, left))
            if self.vpn.name != "EXITING" and deadline > loop.time():
                self._log(logging.INFO, "sigterm-again",
                          reason="openvpn does not show that it is exiting")
                self.child.signal(signal.SIGTERM)
        self._log(logging.WARNING, "kill", reason="did not exit after SIGTERM")
        self.child.signal(signal.SIGKILL)

    def _end_openvpn(self, reason: str) -> None:
        self._log(logging.WARNING, "channel-abort", reason=reason)
        if self.child is not None:
            self.child.signal(signal.SIGKILL)

    # -- the channel ----------------------------------------------------------

    def _policy(self) -> RequestPolicy:
        assert self.tun_ifindex is not None and self.tun_name is not None
        assert self.session_id is not None
        s = self.server.settings
        return RequestPolicy(
            tun_ifindex=self.tun_ifindex, tun_name=self.tun_name,
            limits=Limits(s.max_routes, s.max_addresses, s.max_bypass_routes,
                          s.max_dns_servers, s.max_routes_per_user, s.max_addresses_per_user),
            records=self.records, owners=self.server.owners, scope=self.scope,
            session_id=self.session_id, uid=self.creds.uid, admin=self.admin,
            route_table=self.route_table,
            forced_block=WFP_BLOCK_DNS if s.block_dns else 0,
            block_scope_uid=self._block_scope())

    @property
    def scope(self) -> object:
        """The scope of this session's routes (``policy/ownership.py``)."""
        return scope_for(self.creds.uid, self.admin, self.server.settings.route_scope)

    def _block_scope(self) -> int | None:
        """A non-admin's kill switch covers only that user's traffic (it must not cut
        other users off); an admin's covers the machine, as in the original."""
        return None if self.admin else self.creds.uid

    def _drain_output(self) -> None:
        """Read openvpn's pending output now: a PUSH_REPLY printed before the hook ran
        is in the facts before the hook's messages are decided (see ``facts.py``)."""
        if self.output is not None and self._output_fd is not None:
            os.set_blocking(self._output_fd, False)
            self.output.drain(self._output_fd)

    def _env_context(self) -> Context:
        """For the producer (``envstream.py``): openvpn's output read up to now first, so
        a PUSH_REPLY printed before openvpn called the plugin is in the facts."""
        self._drain_output()
        assert self.tun_name is not None and self.tun_ifindex is not None
        facts = self.facts.watcher.facts if self.facts is not None else Facts()
        # more routes than max_routes would be refused: not even made (memory)
        return Context(self.tun_name, self.tun_ifindex, facts,
                       self.server.settings.max_routes + 64)

    async def _serve_channel(self) -> None:
        """Move openvpn's requests through the pipeline (``pipeline.py``): read, decide,
        hand each decided batch to the monitor as soon as it is decided, answer the
        batches in order as they complete — so the monitor's journal + rtnetlink work
        overlaps the reading and deciding of the next batch."""
        sock = self.channel
        assert sock is not None and self.session_id is not None
        # Buffers for many requests per syscall (~150 KB) only once openvpn uses the channel:
        # a session that never does (a stand-in, openvpn waiting at a prompt) keeps none.
        await readable(sock.fileno())
        reader = self.server.platform.channel.reader(sock, m.MAX_MESSAGE_SIZE)
        pipe = self._pipeline = Pipeline(self._policy(), owners=self.server.owners,
                                         scope=self.scope, session_id=self.session_id,
                                         uid=self.creds.uid,
                                         envs=EnvStream(self._env_context, self._log))
        inflight: collections.deque[tuple[Batch, asyncio.Future[list[Applied]]]] = \
            collections.deque()
        while True:
            # Answer what is done, in order; at most MAX_INFLIGHT batches queued in the
            # monitor (a flood waits here, unread, instead of piling up in memory).
            while inflight and (inflight[0][1].done() or len(inflight) >= MAX_INFLIGHT):
                await self._settle_batch(*inflight.popleft())
            self._drain_output()
            if not pipe.queued:
                pipe.feed(reader.read())
            step = pipe.next_batch(time.monotonic())
            self._audit_denials(pipe)
            if step.batch.items:
                inflight.append((step.batch, self._submit(step.batch)))
            if step.abort is not None:
                self._end_openvpn(step.abort)  # CVE-2024-27459: an oversize message
            if step.need_default_route is not None:
                mon = self.server.monitor
                route = await mon.call(self.lane, QueryDefaultRoute(step.need_default_route))
                pipe.set_default_route(step.need_default_route, route, time.monotonic())
                continue
            if step.wait:  # a held message: everything before it must have settled
                while inflight:
                    await self._settle_batch(*inflight.popleft())
                continue
            if step.eof or self.channel is None:
                while inflight:
                    await self._settle_batch(*inflight.popleft())
                return
            if step.batch.items or pipe.queued:
                continue
            await readable(sock.fileno(), until=inflight[0][1] if inflight else None)

    def _audit_denials(self, pipe: Pipeline) -> None:
        for event, fields in pipe.denials:
            level = logging.ERROR if event == "session-bug" else logging.WARNING
            self._log(level, event, **fields)
        pipe.denials.clear()

    def _submit(self, batch: Batch) -> asyncio.Future[list[Applied]]:
        """Hand a batch's operations to the monitor (the session's lane keeps the order)."""
        ops = batch.ops
        assert self.session_id is not None and self.tun_ifindex is not None
        if not ops:
            done: asyncio.Future[list[Applied]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        # Queued now: the monitor works on it while the loop reads the next batch.
        return self.server.monitor.submit(
            self.lane, Apply(self.session_id, self.tun_ifindex, tuple(ops)))

    async def _settle_batch(self, batch: Batch, applying: asyncio.Future[list[Applied]]) -> None:
        """Wait for a batch's results: settle the records, audit, answer every message."""
        assert self._pipeline is not None
        settled = self._pipeline.settle(batch, await applying, self._who())
        audit.record_lines(logging.INFO, settled.applied, uid=self.creds.uid)
        audit.record_lines(logging.WARNING, settled.failed, uid=self.creds.uid)
        await self._after_apply(settled.bypass_changed, settled.address_added)
        loop = asyncio.get_running_loop()
        assert self.channel is not None
        # SEQPACKET keeps boundaries: one datagram per ack, many per syscall (sendmmsg)
        # while the socket takes them; an await only when it is full (an await per ack
        # cost ~15 µs, one send() per ack ~2.4 µs of the loop's time at 10,000 routes).
        sock = self.channel
        acks = settled.acks
        if self._acks is None:
            self._acks = self.server.platform.channel.sender(sock, m.ACK_SIZE)
        try:
            sent = self._acks.send(acks)
            for i in range(sent * m.ACK_SIZE, len(acks), m.ACK_SIZE):
                await loop.sock_sendall(sock, bytes(acks[i:i + m.ACK_SIZE]))
            for answer in settled.answers:  # to forwarded environments, after the acks
                await loop.sock_sendall(sock, answer)
        except OSError:
            return

    async def _after_apply(self, bypass_changed: bool, address_added: bool) -> None:
        """The service's own part: the kill switch's server list, and ``block_dns``."""
        # Only when a bypass route came or went: the list is made from all the
        # session's routes, and remaking it after every batch was quadratic in the
        # routes (at 30,000: ~100 batches × up to 30,000 keys).
        if self._servers_stale or bypass_changed:
            self._sync_servers()
        forced = WFP_BLOCK_DNS if self.server.settings.block_dns else 0
        flags = self.records.dns.block.flags
        if forced and not flags & forced and self.records.addresses and address_added:
            # The tunnel is up: from now on DNS goes through it or nowhere.
            assert self.session_id is not None and self.tun_ifindex is not None
            assert self._pipeline is not None
            op = SetBlock(flags | forced, flags, self._block_scope(), forced)
            self._pipeline.reserve(op)
            batch = Batch([(-1, op, None)])
            [result] = await self.server.monitor.call(
                self.lane, Apply(self.session_id, self.tun_ifindex, (op,)))
            self._pipeline.settle(batch, [result], self._who())
            self._log(logging.INFO if not result.error else logging.ERROR, "block-dns",
                      what=audit.describe(op), verdict="failed" if result.error else "applied",
                      error=result.error or None)

    def _sync_servers(self) -> None:
        """Tell the monitor which VPN servers this session uses (openvpn's output and its
        bypass routes): every kill switch must let the tunnels' own traffic through.
        Coalesced and paced: at most one update of a session is in the monitor at a
        time, and the next follows it by ``SERVERS_PACE`` at the earliest; what changes
        meanwhile goes with it.  One update is an ``nft`` run of 8-28 ms on the test
        machines, in the thread every session shares: a flood of output lines may cost
        the others one such run per pace, not one per line (bench "noisy neighbour").
        The first change after a quiet spell goes at once (a reconnect to a new server
        is not delayed)."""
        if self.session_id is None or self.facts is None:
            self._servers_stale = True  # the next applied batch sends them
            return
        self._servers_stale = False
        if self._servers_job is not None or self._servers_timer is not None:
            self._servers_stale = True  # sent when the pending one is done
            return
        servers = tuple(dict.fromkeys(
            [*self.facts.watcher.servers,
             *(str(k.dst.network_address) for k in self.records.routes.bypass_keys())]))
        if servers == self._servers:
            return
        self._servers = servers
        job = self.server.monitor.submit(self.lane,
                                         SetServers(self.session_id, self.creds.uid, servers))
        self._servers_job = job
        self._keep(job)

        def again() -> None:
            self._servers_timer = None
            if self._servers_stale and self.facts is not None and \
                    self.facts.on_servers is not None:
                self._sync_servers()

        def done(_: asyncio.Future[Any]) -> None:
            self._servers_job = None
            if self._servers_stale and self.facts is not None and \
                    self.facts.on_servers is not None:
                self._servers_timer = asyncio.get_running_loop().call_later(
                    SERVERS_PACE, again)

        job.add_done_callback(done)

    # -- the end --------------------------------------------------------------

    async def _finish(self) -> None:
        """Runs exactly once per session, shielded: stop openvpn, undo, close."""
        self.phase = Phase.UNDOING
        try:
            await shielded(self._undo())
        finally:
            self.phase = Phase.DONE

    async def _undo(self) -> None:
        if self.child is not None:
            if self.child.returncode is None:
                self.child.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await self.child.wait()
            self.child.close()
        if self.facts is not None:
            self.facts.on_servers = None  # nothing reaches the monitor after the undo
        if self._servers_timer is not None:
            self._servers_timer.cancel()
            self._servers_timer = None
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self.session_id is not None:
            try:
                undone: Undone = await self.server.monitor.call(self.lane,
                                                                Undo(self.session_id))
                problems, complete = list(undone.problems), undone.complete
            except Exception:
                log.exception("undo failed")
                problems, complete = ["undo raised"], False
            self._log(logging.INFO if not problems else logging.ERROR, "undone",
                      problems="; ".join(problems) or "none")
            if not complete:
                self.server.undo_later(self.session_id, self.creds.uid)
        if self._pipeline is not None:
            self._pipeline.release()
        if self.channel is not None:
            self.channel.close()
        if self.output is not None:
            self.output.close()
        if self._output_fd is not None:
            os.close(self._output_fd)
        self.conn.close()
        self.server.forget(self)
