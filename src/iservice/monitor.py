"""The privileged part: a closed set of typed jobs, journaled, served fairly, in one thread.

Like OpenSSH's monitor, this is the only code that changes the system.  It runs the jobs
below and nothing else — there is no way to hand it a function — each through one row
of ``Monitor._run`` (a ``match`` that mypy checks for exhaustiveness with
``assert_never``).  A job carries values the request policy already checked (ifindexes,
``ipaddress`` objects, ranged ints), never wire bytes or names a client supplied; the
effect modules (``iservice/effects``) journal each change *before* making it and undo it
from the journal alone.

* ``StartSession``: journal the session, its cgroup and tun; make them; spawn openvpn
  into the cgroup; journal its pid; send the PID reply → ``Started`` (or ``StartFailed``);
* ``Apply``: a session's decided operations, in order (routes in netlink batches) → one
  ``Applied`` per operation;
* ``SetInfo``: the session's journaled details (openvpn's start time) → ``None``;
* ``SetServers``: a session's VPN servers, which every kill switch lets through → ``None``;
* ``Undo``: end the session's processes, undo every record newest first → ``Undone``;
* ``Recover``: at start, ``Undo`` every session a killed service left → ``Recovered``s;
* ``QueryDefaultRoute``: the default route of a family (bypass-route decisions).

**Fairness.**  Jobs are queued per *lane* (one per session, one per pending connection,
one for the service's own jobs) and served round robin, one *turn* per lane: a turn is
one job, or at most ``TURN_OPS`` operations of a large ``Apply`` (a flood of 100,000
routes is served 512 at a time, another session's start or ack gets the next turn), or
one backend operation (``nft``, DNS), which is the slow kind.  Nothing a session sends can
make the thread work for it longer than a turn while another lane waits.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never

from iservice import audit, errors
from iservice.effects import address, cgroup, decode_record, orphans, route, rule, tun
from iservice.effects import dns as dns_effect
from iservice.effects import firewall as fw_effect
from iservice.effects.cgroup import CgroupRecord
from iservice.effects.tun import TunRecord
from iservice.errors import BackendError, JournalDataError, JournalError
from iservice.journal import Change, Journal, SessionRecord
from iservice.policy.requests import (
    AddAddress,
    AddRoute,
    AddTunRoutes,
    DefaultRoute,
    DelAddress,
    DelRoute,
    DelTunRoutes,
    FlushDns,
    FlushNeighbors,
    Nothing,
    Operation,
    SetBlock,
    SetDns,
    SetMtu,
)
from iservice.ports import (
    Child,
    DnsBackend,
    LauncherPort,
    NetworkOps,
    Platform,
    ProcessGroups,
    UserIdentity,
)
from iservice.wire import startup as w

log = logging.getLogger("iservice.monitor")

TURN_OPS = 512  # operations of one Apply per turn (~3-4 ms of netlink and journal)

# What goes with a session's tun when the device is deleted: its addresses and the
# routes through it (the undo query leaves them out; their records go with the tun's).
GOES_WITH_TUN_SQL = f"kind = 'addr' OR ({route.THROUGH_TUN_SQL})"
TUN_ROUTES6_SQL = f"({route.THROUGH_TUN_SQL}) AND instr(json_extract(data, '$.dst'), ':') > 0"


def errno_to_ack(err: int) -> int:
    """The ack's error_number for a kernel errno (openvpn reads 5010 as "exists")."""
    return route.ack_error(err)


# -- the jobs -----------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the monitor needs to spawn a session's openvpn (all checked values)."""
    exe: str
    user_argv: tuple[str, ...]  # the approved options, before the service's own
    hook_kind: str  # "plugin" | "script"
    hook_path: str
    user: UserIdentity
    workdir: str
    nice: int
    stdin: bytes
    channel_fd: int  # openvpn's end of the session channel
    output_fd: int  # the write end of the session's output pipe

    def argv(self, tun_name: str, launcher: LauncherPort) -> list[str]:
        return [*self.user_argv, *launcher.service_options(
            self.hook_kind, self.hook_path, tun_name, self.channel_fd)]


@dataclass(frozen=True)
class StartSession:
    uid: int
    gid: int
    client_pid: int
    info: dict[str, Any] = field(hash=False)
    launch: LaunchSpec = field(hash=False)
    reply_to: socket.socket | None = field(hash=False)  # the client: the PID reply
    who: dict[str, Any] = field(hash=False)  # the audit line's who-fields
    user_scope: bool = False  # route_scope = user, non-admin: a routing table of its own


@dataclass(frozen=True)
class Apply:
    session_id: int
    tun_ifindex: int
    ops: tuple[Operation, ...]


@dataclass(frozen=True)
class SetInfo:
    session_id: int
    info: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class SetServers:
    session_id: int
    uid: int
    servers: tuple[str, ...]


@dataclass(frozen=True)
class Undo:
    session_id: int


@dataclass(frozen=True)
class Recover:
    """Undo the sessions a killed service left in the journal."""


@dataclass(frozen=True)
class QueryDefaultRoute:
    family: int


Job = StartSession | Apply | SetInfo | SetServers | Undo | Recover | QueryDefaultRoute


@dataclass(frozen=True)
class Started:
    """What ``StartSession`` made: the journaled session, its tun, openvpn."""
    session_id: int
    tun_name: str
    tun_ifindex: int
    child: Child
    info: dict[str, Any]  # as journaled; "start_time" still None
    argv: tuple[str, ...]  # openvpn's full command line
    replied: bool  # the PID reply went out from the monitor thread
    table: int | None  # the session's own routing table (route_scope = user)
    grouped: bool = False  # openvpn runs in the session's cgroup (recovery ends it there)


class StartFailed(Exception):
    """``StartSession`` failed at ``stage`` (``"journal"``, ``"cgroup"``, ``"tun"`` or
    ``"spawn"``).

    ``session_id`` is the journaled session (None if even that failed), with whatever
    was made, and ``child`` is openvpn if it was started: the caller's undo ends and
    removes them.
    """

    def __init__(self, session_id: int | None, stage: str, error: BaseException,
                 child: Child | None = None) -> None:
        super().__init__(session_id, stage, error)
        self.session_id = session_id
        self.stage = stage
        self.error = error
        self.child = child


@dataclass(frozen=True)
class Applied:
    """Result of one operation: ack error number (0 = done) and its journal id.  For
    ``AddTunRoutes``: ``errors`` has each route's error (None: each got ``error``), and
    route i was journaled as ``change_id + i`` (None: none was)."""
    error: int
    change_id: int | None = None
    errors: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Undone:
    """``Undo``'s answer: what went wrong, and whether the session left the journal
    (False: records stay, to be tried again — ``Server`` retries while it runs)."""
    problems: tuple[str, ...]
    complete: bool


@dataclass(frozen=True)
class Recovered:
    session_id: int
    uid: int
    pid: object
    killed: bool
    problems: tuple[str, ...]


# -- the scheduler ------------------------------------------------------------------


@dataclass
class _Task:
    job: Job
    future: concurrent.futures.Future[Any]
    pos: int = 0  # Apply: the next operation
    results: list[Applied] = field(default_factory=list)
    taken: bool = False  # the monitor has begun it


def _deliver(task: _Task, value: Any, error: BaseException | None = None) -> None:
    """A job's result to its caller, unless the caller's wait was cancelled before the
    job began (nobody waits for it then).  Never raises: a result that cannot be
    delivered must not end the monitor thread, which serves every session."""
    try:
        if error is not None:
            task.future.set_exception(error)
        else:
            task.future.set_result(value)
    except concurrent.futures.InvalidStateError:
        log.info("event=monitor-result-dropped job=%s: its caller stopped waiting",
                 type(task.job).__name__)


class _Lanes:
    """Round robin over lanes, each a FIFO of tasks (module docstring: fairness)."""

    def __init__(self) -> None:
        self._lanes: dict[Hashable, collections.deque[_Task]] = {}
        self._ready: collections.deque[Hashable] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, lane: Hashable, task: _Task) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the monitor is closed")
            q = self._lanes.get(lane)
            if q is None:
                self._lanes[lane] = q = collections.deque()
                self._ready.append(lane)
            q.append(task)
            self._cond.notify()

    def take(self) -> tuple[Hashable, _Task] | None:
        """The next lane's first task (it stays queued until ``turn_done``)."""
        with self._cond:
            while not self._ready:
                if self._closed:
                    return None
                self._cond.wait()
            lane = self._ready.popleft()
            return lane, self._lanes[lane][0]

    def turn_done(self, lane: Hashable, finished: bool) -> None:
        with self._cond:
            q = self._lanes[lane]
            if finished:
                q.popleft()
            if q:
                self._ready.append(lane)  # to the back: the others go first
            else:
                del self._lanes[lane]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


DnsFactory = Callable[[Callable[[int, dict[str, Any]], None]], DnsBackend]


class Monitor:
    """The privileged thread.  ``journal_path``'s journal must open (``JournalError``,
    ``JournalDataError`` otherwise, raised here)."""

    def __init__(self, journal_path: str, *, platform: Platform,
                 cgroups: ProcessGroups | None,
                 rtnl_factory: Callable[[], NetworkOps] | None = None,
                 dns_factory: DnsFactory | None = None, instance: str = "") -> None:
        self.platform = platform
        self._lanes = _Lanes()
        self.cgroups = cgroups
        self.instance = instance
        self.journal: Journal
        self.rtnl: NetworkOps
        self.dns: dns_effect.Dns
        self.firewall: fw_effect.Firewall
        self._tuns: dict[int, int] = {}  # tun ifindex of each live session
        self._tun_names: dict[int, str] = {}
        opened: concurrent.futures.Future[None] = concurrent.futures.Future()

        def main() -> None:
            try:
                self.journal = Journal(journal_path)
                self.rtnl = (rtnl_factory or platform.network)()
                backend = platform.dns.make_backend(
                    "none", resolv_conf="", resolvconf_exe=None,
                    update_record=self.journal.update) if dns_factory is None \
                    else dns_factory(self.journal.update)
                self.dns = dns_effect.Dns(self.journal, backend, platform.dns)
                self.firewall = fw_effect.Firewall(self.journal, platform.firewall, instance)
            except BaseException as exc:
                opened.set_exception(exc)
                return
            opened.set_result(None)
            self._serve()

        self._thread = threading.Thread(target=main, name="monitor", daemon=True)
        self._thread.start()
        opened.result()

    @property
    def dns_backend(self) -> DnsBackend:
        return self.dns.backend

    # -- the loop's side ------------------------------------------------------

    def submit(self, lane: Hashable, job: Job) -> asyncio.Future[Any]:
        """Queue ``job`` in ``lane`` now (not at the caller's next await, as a coroutine
        would), so it runs while the caller goes on; the result comes as a future."""
        return asyncio.wrap_future(self.submit_sync(lane, job))

    def submit_sync(self, lane: Hashable, job: Job) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._lanes.put(lane, _Task(job, fut))
        return fut

    async def call(self, lane: Hashable, job: Job) -> Any:
        return await self.submit(lane, job)

    def close(self) -> None:
        self._lanes.close()
        self._thread.join()
        self.dns.backend.close()
        self.rtnl.close()
        self.journal.close()

    # -- the thread -----------------------------------------------------------

    def _serve(self) -> None:
        while True:
            taken = self._lanes.take()
            if taken is None:
                return
            lane, task = taken
            if not task.taken:
                # From now on the caller cannot cancel it (a cancelled wait — a session
                # ending while its batch is applied — drops the result, below); one
                # cancelled while queued still runs: every queued job is carried out.
                task.taken = True
                task.future.set_running_or_notify_cancel()
            finished = True
            try:
                if isinstance(task.job, Apply):
                    finished = self._apply_turn(task)
                    if finished:
                        _deliver(task, task.results)
                else:
                    _deliver(task, self._run(task.job))
            except BaseException as exc:  # the caller gets it; the thread goes on
                _deliver(task, None, exc)
                finished = True
            self._lanes.turn_done(lane, finished)

    def _run(self, job: Job) -> Any:
        """The closed dispatch table: one row per job type."""
        match job:
            case StartSession():
                return self._start(job)
            case Apply():
                task = _Task(job, concurrent.futures.Future())
                while not self._apply_turn(task):
                    pass
                return task.results
            case SetInfo():
                self.journal.update_session_info(job.session_id, job.info)
                return None
            case SetServers():
                self.firewall.set_servers(job.session_id, job.uid, job.servers)
                return None
            case Undo():
                problems = self._undo(job.session_id)
                return Undone(tuple(problems), not self.journal.has_session(job.session_id))
            case Recover():
                return self._recover()
            case QueryDefaultRoute():
                return self._default_route(job.family)
            case _:
                assert_never(job)

    # -- start ----------------------------------------------------------------

    def _start(self, job: StartSession) -> Started:
        """A session's whole start in one turn: journal, cgroup, tun, openvpn, its pid.

        Journal order: the session, its cgroup's path and its tun's name and mark are
        committed *before* anything exists, so a crash at any later moment leaves
        records that find everything (the cgroup holds openvpn and all it forks, from
        before it runs as the user; the tun carries the mark).  openvpn's pid is
        journaled right after the spawn, before the client learns it; the PID reply is
        sent from this thread (waking the event loop first cost 0.1-1.6 ms).
        """
        try:
            with self.journal.transaction():
                session_id: int = self.journal.new_session(job.uid, job.client_pid, job.info)
                group = None
                if self.cgroups is not None:
                    group = CgroupRecord(self.cgroups.path_for(session_id))
                    self.journal.record(session_id, group.KIND, group.to_data())
                first = TunRecord(tun.names(session_id)[0], None,
                                  tun.alias_for(self.instance, session_id))
                change = self.journal.record(session_id, first.KIND, first.to_data())
        except Exception as exc:
            raise StartFailed(None, "journal", exc) from None
        group_fd: int | None = None
        try:
            if group is not None:
                assert self.cgroups is not None
                self.cgroups.create(group.path)
                group_fd = self.cgroups.open_dir(group.path)
        except Exception as exc:
            raise StartFailed(session_id, "cgroup", exc) from None
        try:
            try:
                rec, ifindex, change = self._make_tun(session_id, job.uid, job.gid, first,
                                                      change)
                table = None
                if job.user_scope:
                    table = rule.add(self.journal, self.rtnl, session_id, job.uid, ifindex)
                    # the user's redirected DNS queries may come from loopback
                    self.platform.tuns.route_localnet(rec.name)
            except Exception as exc:
                raise StartFailed(session_id, "tun", exc) from None
            spec = job.launch
            argv = spec.argv(rec.name, self.platform.launcher)
            try:
                child = self.platform.launcher.start_openvpn(
                    spec.exe, argv, user=spec.user, workdir=spec.workdir, nice=spec.nice,
                    stdin=spec.stdin, channel_fd=spec.channel_fd, output_fd=spec.output_fd,
                    cgroup_fd=group_fd)
            except Exception as exc:
                raise StartFailed(session_id, "spawn", exc) from None
        finally:
            if group_fd is not None:
                os.close(group_fd)
        full = {**job.info, "tun": rec.name, "pid": child.pid, "start_time": None}
        try:
            with self.journal.transaction():
                done = TunRecord(rec.name, ifindex, rec.alias)
                self.journal.update(change, done.to_data())
                self.journal.update_session_info(session_id, full)
        except Exception as exc:
            raise StartFailed(session_id, "journal", exc, child) from None
        self._tuns[session_id] = ifindex
        self._tun_names[session_id] = rec.name
        audit.record(logging.INFO, "started", **job.who, session=session_id, pid=child.pid,
                     verdict="allowed", tun=rec.name, argv=" ".join(argv))
        replied = False
        if job.reply_to is not None:
            try:
                # Non-blocking; a first small message on a fresh connection fits.
                job.reply_to.send(w.encode_reply(w.PidReply(child.pid)))
                replied = True
            except BlockingIOError:
                pass  # the loop sends it
            except OSError:
                replied = True  # the client is gone: nothing to send
        return Started(session_id, rec.name, ifindex, child, full, tuple(argv), replied, table,
                       grouped=group is not None)

    def _make_tun(self, session_id: int, uid: int, gid: int, first: TunRecord,
                  change: int) -> tuple[TunRecord, int, int]:
        """The session's tun under the first free name; (record, ifindex, record id).
        ``change`` is the record of the first name, already written."""
        rec = first
        for k, name in enumerate(tun.names(session_id)):
            if k:
                rec = TunRecord(name, None, tun.alias_for(self.instance, session_id))
                change = self.journal.record(session_id, rec.KIND, rec.to_data())
            try:
                return rec, tun.create(self.rtnl, self.platform.tuns, rec, uid, gid), change
            except FileExistsError:
                self.journal.forget([change])
                continue
            except OSError:
                self.journal.forget([change])
                raise
        raise FileExistsError(errno.EEXIST, f"istun{session_id} and its variants all exist")

    def _default_route(self, family: int) -> DefaultRoute | None:
        r = self.rtnl.default_route(family)
        if r is None or r.gateway is None or r.oif is None:
            return None
        return DefaultRoute(gateway=r.gateway, oif=r.oif)

    # -- apply ----------------------------------------------------------------

    def _apply_turn(self, task: _Task) -> bool:
        """Up to ``TURN_OPS`` operations of an Apply (or one backend operation); True
        when the job is done."""
        job = task.job
        assert isinstance(job, Apply)
        ops, sid, tun_ifindex = job.ops, job.session_id, job.tun_ifindex
        budget = TURN_OPS
        i = task.pos
        while i < len(ops) and budget > 0:
            op = ops[i]
            if isinstance(op, AddTunRoutes):
                if len(op.run) > budget and budget < TURN_OPS:
                    break  # the next turn: a turn stays within TURN_OPS routes
                task.results.append(self._guarded(self._tun_routes, 1, sid, op)[0])
                budget -= len(op.run)
                i += 1
                continue
            if isinstance(op, AddRoute | DelRoute):
                j = i
                while j < len(ops) and j - i < budget and isinstance(ops[j], AddRoute | DelRoute):
                    j += 1
                task.results.extend(self._guarded(self._routes, j - i, sid, ops[i:j]))
                budget -= j - i
                i = j
                continue
            if isinstance(op, DelTunRoutes):
                done = self._guarded(self._routes, len(op.routes), sid, op.routes) \
                    if op.routes else []
                task.results.append(Applied(next((r.error for r in done if r.error), 0)))
                budget -= max(1, len(op.routes))
            else:
                task.results.append(self._guarded(self._one, 1, sid, tun_ifindex, op)[0])
                budget -= TURN_OPS if isinstance(op, SetDns | SetBlock | FlushDns) else 1
            i += 1
        task.pos = i
        return i >= len(ops)

    @staticmethod
    def _guarded(fn: Callable[..., list[Applied]], count: int, *args: Any) -> list[Applied]:
        """A change that cannot be journaled is not made: its ack carries why."""
        try:
            return fn(*args)
        except JournalError as exc:
            log.error("event=journal-failed reason=%r", exc.reason)
            return [Applied(exc.ack_error)] * count

    def _routes(self, session_id: int, ops: Sequence[Operation]) -> list[Applied]:
        return [Applied(err, cid) for err, cid in route.apply(self.journal, self.rtnl,
                                                               session_id, ops)]

    def _tun_routes(self, session_id: int, op: AddTunRoutes) -> list[Applied]:
        first, errs = route.apply_run(self.journal, self.rtnl, session_id, op)
        if errs is None:
            return [Applied(0, first)]
        return [Applied(next(e for e in errs if e), first, errs)]

    def _one(self, session_id: int, tun_ifindex: int, op: Operation) -> list[Applied]:
        return [self._one_op(session_id, tun_ifindex, op)]

    def _one_op(self, session_id: int, tun_ifindex: int, op: Operation) -> Applied:
        try:
            match op:
                case AddAddress():
                    return Applied(0, address.add(self.journal, self.rtnl, session_id,
                                                  tun_ifindex, op))
                case DelAddress():
                    address.delete(self.journal, self.rtnl, tun_ifindex, op, op.table)
                    return Applied(0)
                case SetMtu():
                    # Not journaled: the tun is ours and is deleted at the end.
                    self.rtnl.link_set(tun_ifindex, mtu=op.mtu)
                    return Applied(0)
                case FlushNeighbors():
                    self.rtnl.neigh_flush(tun_ifindex, op.family)
                    return Applied(0)
                case Nothing():
                    return Applied(0)
                case SetDns() if op.redirect_uid is not None:
                    return Applied(0, self.firewall.set_dns_redirect(
                        session_id, op.redirect_uid, self._tun_names[session_id],
                        rule.table_for(tun_ifindex), op.state))
                case SetDns():
                    return Applied(0, self.dns.set(session_id, tun_ifindex, op))
                case FlushDns():
                    self.dns.flush()
                    return Applied(0)
                case SetBlock():
                    return Applied(0, self.firewall.set_block(session_id, op))
                case AddRoute() | DelRoute() | DelTunRoutes() | AddTunRoutes():
                    raise AssertionError("routes are applied in batches")
                case _:
                    assert_never(op)
        except BackendError as exc:
            log.warning("event=backend-failed session=%d error=%r", session_id, str(exc))
            return Applied(errors.ERROR_GEN_FAILURE)
        except OSError as exc:
            return Applied(errno_to_ack(exc.errno or errno.EIO))

    # -- undo -----------------------------------------------------------------

    def _undo(self, session_id: int) -> list[str]:
        """Undo everything the journal holds for the session; returns problems seen.

        First every process of the session ends (its cgroup), so nothing of it runs
        while its state goes.  Then the records, newest first, each by its own
        effect module; a record goes only once its undo succeeded or its object is
        verifiably gone; one whose undo failed stays in the journal with its session,
        and the next start tries it again.  What goes with the tun (its addresses and
        routes) goes when the tun is verifiably gone.
        """
        problems: list[str] = []
        try:
            changes = self.journal.changes_except(session_id, GOES_WITH_TUN_SQL)
        except JournalDataError as exc:
            return [f"journal: {exc}"]
        records = []
        for c in changes:
            try:
                records.append((c, decode_record(c.kind, c.data)))
            except JournalDataError as exc:
                problems.append(f"record {c.id}: {exc}")
        for _c, rec in records:  # the processes first
            if isinstance(rec, CgroupRecord) and self.cgroups is not None:
                try:
                    cgroup.end(self.cgroups, rec)
                except OSError as exc:
                    problems.append(f"cgroup {rec.path}: {exc}")
        kept: set[int] = {c.id for c in changes} - {c.id for c, _ in records}
        tun_gone = True
        for c, rec in records:
            seen = len(problems)
            try:
                problem = self._undo_record(session_id, rec)
                if problem is not None:
                    problems.append(problem)
            except OSError as exc:
                if exc.errno not in route.GONE:
                    problems.append(f"{c.kind} {c.data}: {exc}")
            if len(problems) > seen:
                kept.add(c.id)
                if isinstance(rec, TunRecord):
                    tun_gone = False
        self._tuns.pop(session_id, None)
        self._tun_names.pop(session_id, None)
        self.dns.session_ended(session_id)
        self.firewall.session_ended(session_id)
        try:
            if kept or not tun_gone:
                # What went with the tun stays journaled while the tun does.
                self.journal.forget(c.id for c in changes if c.id not in kept)
                problems.append(f"{len(kept)} change(s) kept in the journal for the next start")
            else:
                self.journal.end_session(session_id)
        except JournalError as exc:
            problems.append(f"journal: {exc.reason} (the undone records are removed at the "
                            "next start)")
        return problems

    def _undo_record(self, session_id: int, rec: Any) -> str | None:
        match rec:
            case route.RouteRecord():
                return route.undo(self.rtnl, rec)
            case dns_effect.DnsRecord():
                self.dns.undo(session_id, rec)
            case fw_effect.TableRecord():
                self.firewall.undo(rec)
            case TunRecord():
                route.drop_tun_routes6(self.rtnl,
                                       self.journal.data_where(session_id, TUN_ROUTES6_SQL))
                tun.undo(self.rtnl, rec)
            case CgroupRecord():
                if self.cgroups is None:
                    return f"cgroup {rec.path}: no cgroup hierarchy to remove it from"
                cgroup.undo(self.cgroups, rec)
            case rule.RuleRecord():
                rule.undo(self.rtnl, rec)
            case address.AddressRecord():
                pass  # goes with the tun
            case _:
                return f"unexpected record {rec!r}"
        return None

    # -- recovery -------------------------------------------------------------

    def _recover(self) -> list[Recovered]:
        """Undo every session the journal holds (a killed service's), then remove what
        this instance's marks show in the kernel with no record (``effects/orphans.py``:
        the journal may have been lost)."""
        out = []
        for rec in self.journal.sessions():
            pid, start = rec.info.get("pid"), rec.info.get("start_time")
            # Sessions of a version without cgroups: end the openvpn it started, only if
            # it is the very process (pid and start time), never a recycled pid.
            grouped = self._has_cgroup(rec)
            killed = (not grouped and isinstance(pid, int)
                      and isinstance(start, int)
                      and self.platform.launcher.kill_if_same(pid, start))
            problems = self._undo(rec.id)
            out.append(Recovered(rec.id, rec.uid, pid, killed or grouped, tuple(problems)))
        orphans.sweep(self.journal, self.rtnl, self.platform.firewall, self.cgroups,
                      self.instance)
        return out

    def _has_cgroup(self, rec: SessionRecord) -> bool:
        return any(c.kind == CgroupRecord.KIND for c in self._changes(rec.id))

    def _changes(self, session_id: int) -> list[Change]:
        try:
            return self.journal.changes(session_id)
        except JournalDataError:
            return []


def family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


__all__ = ["Applied", "Apply", "LaunchSpec", "Monitor", "QueryDefaultRoute", "Recover",
           "Recovered", "SetInfo", "SetServers", "StartFailed", "StartSession", "Started",
           "Undo", "Undone", "errno_to_ack", "family_name"]
