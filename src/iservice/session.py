"""One session's life: read the request → validate → launch → serve the channel → undo.

A session is one task.  Whatever ends it (openvpn exits or is killed, the channel
breaks or misbehaves, the service stops, a bug), its ``finally`` runs undo exactly
once, shielded from cancellation, and a failure ends only this session: ``run``
never raises into the server's task group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from iservice import audit, errors
from iservice.aio import readable
from iservice.control import VpnState
from iservice.envstream import EnvStream, Reply
from iservice.errors import ChannelError, MessageTooLargeError, StartupDataError
from iservice.facts import SessionFacts, read_option_facts
from iservice.linux import launch, mmsg
from iservice.linux.identity import (
    PeerCredentials,
    UserIdentity,
    as_fs_user,
    is_admin,
    user_identity,
)
from iservice.linux.netlink import SO_SNDBUFFORCE
from iservice.monitor import Applied, Started, StartFailed
from iservice.output import SessionOutput
from iservice.policy.dns import BlockState
from iservice.policy.options import Approved, OsPathResolver, validate_options
from iservice.policy.redirect import Facts, OptionFacts
from iservice.policy.requests import (
    AddAddress,
    AddRoute,
    DelAddress,
    DelRoute,
    DelTunRoutes,
    Limits,
    Operation,
    Refused,
    RequestPolicy,
    SessionRecords,
    SetBlock,
    SetDns,
)
from iservice.produce import Context
from iservice.wire import msg as m
from iservice.wire import startup as w
from iservice.wire.msg import WFP_BLOCK_DNS

if TYPE_CHECKING:
    from iservice.server import Server

log = logging.getLogger("iservice.session")

STARTUP_TIMEOUT = 2.0  # seconds for the startup message (the original's IO_TIMEOUT)
STARTUP_BUFSIZE = w.MAX_STARTUP_UNITS * 2 + 2  # one unit more than allowed: "too long"
CHANNEL_BATCH = 4096  # messages decided and applied together (one journal transaction)
MAX_INFLIGHT = 2  # batches handed to the monitor and not yet answered

# (message_id, ack error | decided operation, how to answer: None = an ack to the sender)
Batch = list[tuple[int, int | Operation, Reply | None]]


def _in_flight(op: Operation) -> bool:
    """Does ``op`` name a record whose add is still in flight (reserved as -1)?  Its
    outcome decides this op (a delete needs the record's id; a re-add of a failed add
    would be a new route), so it waits until that add has settled."""
    if isinstance(op, DelRoute | DelAddress):
        return op.change_id == -1
    if isinstance(op, AddRoute | AddAddress):
        return op.existing == -1
    if isinstance(op, DelTunRoutes):
        return any(d.change_id == -1 for d in op.routes)
    return False


def _names_bypass(op: Operation) -> bool:
    """Does ``op`` add or delete a bypass route (one of the kill switch's servers)?"""
    return isinstance(op, AddRoute | DelRoute) and op.key.bypass


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


CHANNEL_SNDBUF = 1 << 20  # bytes per direction, as asked (the kernel counts twice that)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """The session channel: a SEQPACKET pair (the service's end, openvpn's end).

    Every message is charged to its sender as a whole skb (~1.2 KiB for a 328-byte
    route), so the default send buffer (208 KiB) holds only ~167 requests: openvpn's
    side stalled every 167 routes until the service woke up and read them (measured:
    10,000 routes came as ~60 batches with idle gaps between).  A larger buffer lets
    ~1,600 requests (and ~3,000 acks the other way) queue; it needs CAP_NET_ADMIN
    (SO_SNDBUFFORCE), else the default stays.  It bounds what one session can make the
    kernel hold for it at 2 MiB per direction.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        with contextlib.suppress(OSError):
            end.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, CHANNEL_SNDBUF)
    return ours, theirs


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


@dataclass(eq=False)  # identity semantics: sessions live in sets
class Session:
    server: Server
    conn: socket.socket
    creds: PeerCredentials
    number: int  # connection number, for logs before a session id exists
    phase: Phase = Phase.READING
    session_id: int | None = None
    tun_name: str | None = None
    tun_ifindex: int | None = None
    user: UserIdentity | None = None
    child: launch.Child | None = None
    channel: socket.socket | None = None
    admin: bool = False
    output: SessionOutput | None = None
    _output_fd: int | None = None
    _acks: mmsg.BatchSender | None = None
    client_connected: bool = True
    # For `iservice sessions/status` (control.py): the approved config, when openvpn
    # started (wall clock), and openvpn's state as seen in its output.
    config: str | None = None
    started_at: float | None = None
    vpn: VpnState = field(default_factory=VpnState)
    records: SessionRecords = field(default_factory=lambda: SessionRecords({}, {}))
    facts: SessionFacts | None = None  # for the producer: full tunnel, block-outside-dns
    _option_facts: OptionFacts | None = None  # read while validating, used by _launch
    _servers: tuple[str, ...] = ()  # VPN server addresses the kill switch lets through
    _servers_stale = True  # not yet handed to the monitor since they may have changed
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

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
        user = user_identity(self.creds.uid, self.creds.gid)
        self.user = user
        admin = is_admin(user, settings.ovpn_admin_group)
        self.admin = admin
        self._log(logging.INFO, "request", what="startup", user=user.name, admin=admin,
                  workdir=data.workdir, options=data.options)
        self.server.check_session_limit(self)

        def check() -> tuple[Approved, OptionFacts]:
            approved = validate_options(data.options, data.workdir,
                                        config_dir=settings.config_dir,
                                        admin_group=settings.ovpn_admin_group,
                                        is_admin=admin, resolver=OsPathResolver())
            try:
                os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                raise StartupDataError(
                    "Cannot open /dev/net/tun with your rights", os.strerror(exc.errno or 0),
                    code=exc.errno or errors.ERROR_ACCESS_DENIED) from None
            # The facts for the hook are read here too, with the same rights: one thread
            # for both instead of a second one after the tun (~60 µs per start, measured).
            return approved, read_option_facts(approved.argv)

        approved, self._option_facts = await as_fs_user(user, check)
        return approved

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
        svc_end, child_end = channel_pair()
        self.channel = svc_end
        svc_end.setblocking(False)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        self._output_fd = out_r
        stdin = data.stdin.encode("utf-8", "surrogatepass")
        argv: list[str] = []

        def spawn(tun_name: str) -> launch.Child:
            # In the monitor thread, right after the tun exists (Monitor.start_session).
            argv[:] = [*approved.argv, *self.server.service_options(tun_name,
                                                                     child_end.fileno())]
            return launch.start_openvpn(
                settings.exe_path, argv, user=user, workdir=data.workdir,
                nice=settings.priority, stdin=stdin, channel_fd=child_end.fileno(),
                output_fd=out_w)

        replied: list[bool] = []

        def announce(started: Started) -> None:
            # In the monitor thread, once the pid is journaled: the audit line, then the
            # PID reply straight away (Monitor.start_session says why).  The loop does
            # not touch these attributes nor the client socket until the call returns.
            self.session_id, self.child = started.session_id, started.child
            self.tun_name = started.tun_name
            self._log(logging.INFO, "started", verdict="allowed", tun=started.tun_name,
                      argv=" ".join(argv))
            try:
                # Non-blocking; a first small message on a fresh connection fits.
                self.conn.send(w.encode_reply(w.PidReply(started.child.pid)))
            except BlockingIOError:
                return  # the loop sends it
            except OSError:
                self.client_connected = False
            replied.append(True)

        try:
            started = await self._start_in_monitor(
                user, {"user": user.name, "argv": list(approved.argv),
                       "workdir": data.workdir}, spawn, announce)
        finally:
            child_end.close()
            os.close(out_w)
        self.session_id, self.tun_name = started.session_id, started.tun_name
        self.tun_ifindex, self.child = started.tun_ifindex, started.child
        self.phase = Phase.RUNNING
        self.started_at = time.time()
        if not replied:
            await self._reply(w.PidReply(self.child.pid))
        await self._after_reply(started, facts)

    async def _after_reply(self, started: Started, facts: SessionFacts) -> None:
        """What the PID reply need not wait for: the session's log file, and openvpn's
        start time in the journal (see ``Monitor.start_session``).

        Both in one executor thread, off the loop: creating the log file in
        ``log_dir`` took 0.1 ms alone and 0.8 ms of CPU per start in a burst of 100, and
        reading ``/proc/PID/stat`` waits until the child is through its ``exec``
        (0.2-1.2 ms).  openvpn's output waits in the pipe meanwhile; the channel and
        the pidfd are watched only from ``_serve`` on, right after this.
        """
        loop = asyncio.get_running_loop()
        path = self.server.session_log_path(started.session_id)
        pid = started.child.pid

        def work() -> tuple[SessionOutput, int | None, str | None]:
            try:
                output, problem = SessionOutput(file_path=path), None
            except OSError as exc:  # keep the session, without its log file
                output, problem = SessionOutput(), f"{path}: {exc.strerror}"
            return output, launch.process_start_time(pid), problem

        job = loop.run_in_executor(None, work)
        try:
            output, start, problem = await asyncio.shield(job)
        except asyncio.CancelledError:  # the session ends: close the log file made
            await asyncio.wait([job])
            if not job.cancelled() and job.exception() is None:
                job.result()[0].close()
            raise
        output.observers.append(self.vpn.feed)
        output.observers.append(facts.observe)
        self.output = output
        if problem is not None:
            self._log(logging.WARNING, "session-log-failed", reason=problem)
        # The child is reaped only by this thread, in _serve or _undo, neither of which
        # has run yet: the pid was still openvpn's while it was read, never a recycled
        # one.  (None: it is gone already, there is nothing a recovery could end.)
        if start is None or started.child.proc.returncode is not None:
            return
        mon = self.server.monitor
        task = asyncio.ensure_future(mon.call(mon.set_session_info, started.session_id,
                                              {**started.info, "start_time": start}))
        self._tasks.add(task)  # _undo waits for it
        task.add_done_callback(self._tasks.discard)

    async def _start_in_monitor(self, user: UserIdentity, info: dict[str, object],
                                spawn: Callable[[str], launch.Child],
                                announce: Callable[[Started], None]) -> Started:
        """``Monitor.start_session``, with what it made kept for the undo even if it
        failed or this task was cancelled meanwhile (the monitor thread goes on using
        the descriptors ``spawn`` passes: they are closed only once it is done)."""
        mon = self.server.monitor
        call = asyncio.ensure_future(mon.call(mon.start_session, user.uid, user.gid,
                                              self.creds.pid, info, spawn, announce))
        try:
            try:
                return await asyncio.shield(call)
            except asyncio.CancelledError:
                await asyncio.wait([call])
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
            if not isinstance(err, OSError):
                raise err from None  # a bug: logged as such; the undo still runs
            code = err.errno or 1
            if exc.stage == "tun":
                raise StartupDataError("Cannot create the tun device", os.strerror(code),
                                       code=code) from None
            if exc.stage == "spawn":
                raise StartupDataError("Cannot start openvpn", os.strerror(code),
                                       code=code) from None
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
        await self._stop.wait()
        self.phase = Phase.STOPPING
        assert self.child is not None
        self.child.signal(signal.SIGTERM)
        await asyncio.sleep(self.server.settings.stop_grace)
        self._log(logging.WARNING, "kill", reason="did not exit after SIGTERM")
        self.child.signal(signal.SIGKILL)

    def _end_openvpn(self, reason: str) -> None:
        self._log(logging.WARNING, "channel-abort", reason=reason)
        if self.child is not None:
            self.child.signal(signal.SIGKILL)

    # -- the channel ----------------------------------------------------------

    def _policy(self) -> RequestPolicy:
        assert self.tun_ifindex is not None and self.tun_name is not None
        s = self.server.settings
        return RequestPolicy(
            tun_ifindex=self.tun_ifindex, tun_name=self.tun_name,
            limits=Limits(s.max_routes, s.max_addresses, s.max_bypass_routes,
                          s.max_dns_servers),
            records=self.records, default_route=self.server.default_route,
            shadows_other_session=lambda a: self.server.shadows(self, a),
            forced_block=WFP_BLOCK_DNS if s.block_dns else 0,
            block_scope_uid=self._block_scope())

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
        """Read, decide and apply openvpn's requests.  Batches go to the monitor as soon as
        they are decided and are answered in order as they complete, so the monitor's
        journal + rtnetlink work overlaps the reading and deciding of the next batch."""
        sock = self.channel
        assert sock is not None
        # Buffers for many requests per syscall (~150 KB) only once openvpn uses the channel:
        # a session that never does (a stand-in, openvpn waiting at a prompt) keeps none.
        await readable(sock.fileno())
        reader = mmsg.BatchReader(sock, m.MAX_MESSAGE_SIZE)
        queued: collections.deque[tuple[int, bytes]] = collections.deque()  # read, undecided
        policy = self._policy()
        # a message to decide again once nothing is in flight (bytes, or one made from an
        # environment), with its reply
        held: list[tuple[bytes | m.Message, Reply | None]] = []
        envs = EnvStream(self._env_context, self._log)  # forwarded environments
        inflight: collections.deque[tuple[Batch, asyncio.Future[list[Applied]]]] = \
            collections.deque()
        while True:
            # Answer what is done, in order; at most MAX_INFLIGHT batches queued in the
            # monitor (a flood waits here, unread, instead of piling up in memory).
            while inflight and (inflight[0][1].done() or len(inflight) >= MAX_INFLIGHT):
                await self._settle_batch(*inflight.popleft())
            self._drain_output()
            batch, eof, wait = self._read_batch(reader, queued, policy, held, envs)
            if batch:
                inflight.append((batch, self._submit(batch)))
            if wait:  # a held message: everything before it must have settled
                while inflight:
                    await self._settle_batch(*inflight.popleft())
                continue
            if batch:
                continue
            if eof or self.channel is None:
                while inflight:
                    await self._settle_batch(*inflight.popleft())
                return
            await readable(sock.fileno(), until=inflight[0][1] if inflight else None)

    def _read_batch(self, reader: mmsg.BatchReader, queued: collections.deque[tuple[int, bytes]],
                    policy: RequestPolicy, held: list[tuple[bytes | m.Message, Reply | None]],
                    envs: EnvStream) -> tuple[Batch, bool, bool]:
        """Decide what is queued, up to ``CHANNEL_BATCH`` messages: first the requests
        made from a forwarded environment (``envs``), then what came over the channel.

        Returns (batch, eof, wait).  ``wait``: a message names a change that is still in
        flight (an add whose outcome the monitor has not reported yet); it is held back
        and decided again once everything before it has been applied and settled.
        """
        batch: Batch = []  # (message_id, ack error | op, reply)
        while len(batch) < CHANNEL_BATCH:
            retried = bool(held)
            reply: Reply | None = None
            item: bytes | m.Message | None
            if held:
                item, reply = held.pop()
            elif (made := envs.next()) is not None:
                mid, item, reply = made
                if item is None:  # the environment's end: its one answer, in order
                    batch.append((mid, 0, reply))
                    continue
            else:
                if not queued:
                    queued.extend(reader.read())
                    if not queued:
                        return batch, False, False
                n, item = queued.popleft()
                if n == 0:
                    return batch, True, False
                fast = policy.decide_fast(item) if n == len(item) else None
                if fast is not None:  # a new route through the tun: nothing in flight
                    self._reserve(fast[1])
                    batch.append((*fast, None))
                    continue
                if n > m.MAX_MESSAGE_SIZE:
                    # CVE-2024-27459: an oversize message ends the session.
                    self._end_openvpn(f"message of {n} bytes")
                    return batch, True, False
            if isinstance(item, bytes):
                try:
                    msg = m.decode_message(item)
                except MessageTooLargeError as exc:
                    self._end_openvpn(str(exc))
                    return batch, True, False
                except ChannelError as exc:
                    self._log(logging.WARNING, "bad-message", what="channel message",
                              verdict="malformed", reason=exc.reason, mid=exc.message_id,
                              error=exc.error_number)
                    batch.append((exc.message_id, exc.error_number, None))
                    continue
                if isinstance(msg, m.EnvChunkMsg):  # a piece of openvpn's environment
                    batch += envs.take(msg)
                    continue
            else:
                msg = item
                route = None if retried else policy.decide_route_fast(msg)
                if route is not None:  # made from an environment: the same shortcut
                    self._reserve(route)
                    batch.append((msg.message_id, route, reply))
                    continue
            try:
                op = policy.decide(msg)
            except Refused as exc:
                self._log(logging.WARNING, "denied", what=audit.describe(msg),
                          verdict="denied", reason=exc.reason, mid=msg.message_id,
                          error=exc.error_number)
                batch.append((msg.message_id, exc.error_number, reply))
                continue
            if _in_flight(op):
                if retried:  # nothing is in flight now: a bug, not openvpn's fault
                    self._log(logging.ERROR, "session-bug", what=audit.describe(op),
                              reason="still in flight after settling", mid=msg.message_id)
                    batch.append((msg.message_id, errors.ERROR_GEN_FAILURE, reply))
                    continue
                held.append((item, reply))
                return batch, False, True
            self._reserve(op)
            batch.append((msg.message_id, op, reply))
        return batch, False, False

    def _reserve(self, op: Operation) -> None:
        """Mirror a decided op in the records now, so the rest of a batch sees it."""
        if isinstance(op, AddRoute):
            self.records.routes[op.key] = -1 if op.existing is None else op.existing
        elif isinstance(op, DelRoute):
            self.records.routes.pop(op.key, None)
        elif isinstance(op, DelTunRoutes):
            # What could not be deleted stays in the journal; undo retries it.
            for d in op.routes:
                self.records.routes.pop(d.key, None)
        elif isinstance(op, AddAddress):
            self.records.addresses[op.key] = -1 if op.existing is None else op.existing
        elif isinstance(op, DelAddress):
            self.records.addresses.pop(op.key, None)
        elif isinstance(op, SetDns):
            self.records.dns.dns = op.state
        elif isinstance(op, SetBlock):
            self.records.dns.block = BlockState(op.flags)

    def _settle(self, op: Operation, result: Applied) -> None:
        if isinstance(op, AddRoute):
            if op.existing is not None:
                pass  # the record stays whatever the kernel said
            elif result.error or result.change_id is None:
                self.records.routes.pop(op.key, None)
            else:
                self.records.routes[op.key] = result.change_id
        elif isinstance(op, DelRoute) and result.error:
            self.records.routes[op.key] = op.change_id
        elif isinstance(op, AddAddress) and op.existing is None:
            if result.error or result.change_id is None:
                self.records.addresses.pop(op.key, None)
            else:
                self.records.addresses[op.key] = result.change_id
        elif isinstance(op, DelAddress) and result.error:
            self.records.addresses[op.key] = op.change_id
        elif isinstance(op, SetDns) and result.error:
            self.records.dns.dns = op.previous
        elif isinstance(op, SetBlock) and result.error:
            self.records.dns.block = BlockState(op.previous)

    def _submit(self, batch: Batch) -> asyncio.Future[list[Applied]]:
        """Hand a batch's operations to the monitor (its queue keeps the order)."""
        ops = [item for _, item, _ in batch if not isinstance(item, int)]
        mon = self.server.monitor
        assert self.session_id is not None and self.tun_ifindex is not None
        if not ops:
            done: asyncio.Future[list[Applied]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        # Queued now: the monitor works on it while the loop reads the next batch.
        return mon.submit(mon.apply, self.session_id, self.tun_ifindex, ops)

    async def _settle_batch(self, batch: Batch, applying: asyncio.Future[list[Applied]]) -> None:
        """Wait for a batch's results: settle the records, audit, answer every message."""
        ops = [item for _, item, _ in batch if not isinstance(item, int)]
        results = iter(await applying)
        acks = bytearray()
        answers: list[bytes] = []  # the answers to forwarded environments
        # The audit trail: one line per decided message (denials are logged where they
        # are decided), written as one record per batch (audit.record_lines).
        who = self._who()
        applied: list[str] = []
        failed: list[str] = []
        for message_id, item, reply in batch:
            if isinstance(item, int):
                error = item
            else:
                result = next(results)
                self._settle(item, result)
                error = result.error
                what = audit.quote(audit.describe(item))
                if error:
                    failed.append(f"event=failed {who} what={what} verdict=failed "
                                  f"mid={message_id} error={error}")
                else:
                    applied.append(f"event=applied {who} what={what} verdict=applied "
                                   f"mid={message_id}")
            if reply is None:
                acks += m.ack_bytes(message_id, error)
            elif answer := reply(error):
                answers.append(answer)
        audit.record_lines(logging.INFO, applied)
        audit.record_lines(logging.WARNING, failed)
        await self._after_apply(ops)
        loop = asyncio.get_running_loop()
        assert self.channel is not None
        # SEQPACKET keeps boundaries: one datagram per ack, many per syscall (sendmmsg)
        # while the socket takes them; an await only when it is full (an await per ack
        # cost ~15 µs, one send() per ack ~2.4 µs of the loop's time at 10,000 routes).
        sock = self.channel
        if self._acks is None:
            self._acks = mmsg.BatchSender(sock, m.ACK_SIZE)
        try:
            sent = self._acks.send(acks)
            for i in range(sent * m.ACK_SIZE, len(acks), m.ACK_SIZE):
                await loop.sock_sendall(sock, bytes(acks[i:i + m.ACK_SIZE]))
            for answer in answers:
                await loop.sock_sendall(sock, answer)
        except OSError:
            return

    async def _after_apply(self, ops: list[Operation]) -> None:
        """The service's own part: the kill switch's server list, and ``block_dns``."""
        # Only when a bypass route came or went: the list is made from all the
        # session's routes, and remaking it after every batch was quadratic in the
        # routes (at 30,000: ~100 batches × up to 30,000 keys).
        if self._servers_stale or any(_names_bypass(op) for op in ops):
            self._sync_servers()
        forced = WFP_BLOCK_DNS if self.server.settings.block_dns else 0
        flags = self.records.dns.block.flags
        if forced and not flags & forced and self.records.addresses and \
                any(isinstance(op, AddAddress) for op in ops):
            # The tunnel is up: from now on DNS goes through it or nowhere.
            mon = self.server.monitor
            assert self.session_id is not None and self.tun_ifindex is not None
            op = SetBlock(flags | forced, flags, self._block_scope(), forced)
            self._reserve(op)
            [result] = await mon.call(mon.apply, self.session_id, self.tun_ifindex, [op])
            self._settle(op, result)
            self._log(logging.INFO if not result.error else logging.ERROR, "block-dns",
                      what=audit.describe(op), verdict="failed" if result.error else "applied",
                      error=result.error or None)

    def _sync_servers(self) -> None:
        """Tell the monitor which VPN servers this session uses (openvpn's output and its
        bypass routes): every kill switch must let the tunnels' own traffic through."""
        if self.session_id is None or self.facts is None:
            self._servers_stale = True  # the next applied batch sends them
            return
        self._servers_stale = False
        servers = tuple(dict.fromkeys(
            [*self.facts.watcher.servers,
             *(str(k.dst.network_address) for k in self.records.routes if k.bypass)]))
        if servers == self._servers:
            return
        self._servers = servers
        mon = self.server.monitor
        task = asyncio.ensure_future(mon.call(mon.set_servers, self.session_id,
                                              self.creds.uid, servers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the end --------------------------------------------------------------

    async def _finish(self) -> None:
        """Runs exactly once per session, shielded: stop openvpn, undo, close."""
        self.phase = Phase.UNDOING
        task = asyncio.ensure_future(self._undo())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
        finally:
            self.phase = Phase.DONE

    async def _undo(self) -> None:
        if self.child is not None:
            if self.child.proc.returncode is None:
                self.child.signal(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await self.child.wait()
            self.child.close()
        if self.facts is not None:
            self.facts.on_servers = None  # nothing reaches the monitor after the undo
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self.session_id is not None:
            mon = self.server.monitor
            try:
                problems = await mon.call(mon.undo_session, self.session_id)
            except Exception:
                log.exception("undo failed")
                problems = ["undo raised"]
            self._log(logging.INFO if not problems else logging.ERROR, "undone",
                      problems="; ".join(problems) or "none")
        if self.channel is not None:
            self.channel.close()
        if self.output is not None:
            self.output.close()
        if self._output_fd is not None:
            os.close(self._output_fd)
        self.conn.close()
        self.server.forget(self)

