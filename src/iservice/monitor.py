"""The privileged part: a closed set of typed operations, journaled, in one thread.

Like OpenSSH's monitor, this is the only code that changes the system.  Every
public method is one row of the allowed vocabulary; each takes values the
request policy already checked (ifindexes, ``ipaddress`` objects, ranged ints),
never wire bytes or user-supplied interface names.  All methods run in a single
worker thread (``Monitor.call``), which owns the netlink socket and the journal,
so changes are serialized and the journal is always written *before* the change.

Undo reads only the journal, newest first.  Routes and addresses on a session's
tun die with the tun, so undo deletes those implicitly by deleting the tun last;
everything else (bypass routes, later DNS and firewall state) is undone
explicitly.  Routes carry our own ``rtm_protocol``, and are deleted with it, so
undo can never remove a route the session did not add.

DNS (``SetDns``) goes to the backend chosen at start (``linux.dns``): one ``dns``
record per session, written before its first change, undone with the backend
named in the record (the setting may have changed across a crash).  The kill
switch (``SetBlock``) is one nftables table per session (``linux.firewall``), a
``nft`` record naming it.  Both are undone before the tun is deleted (newest first).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

from iservice import errors
from iservice.journal import Journal, SessionRecord
from iservice.linux import firewall, launch
from iservice.linux import tun as tundev
from iservice.linux.dns import DnsBackend, DnsError, FileDns, NoDns, ResolvconfDns, ResolvedDns
from iservice.linux.netlink import NetlinkError, Route, RouteSpec, Rtnl
from iservice.policy.requests import (
    AddAddress,
    AddRoute,
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

log = logging.getLogger("iservice.monitor")
T = TypeVar("T")

TUN_NAME_ATTEMPTS = 10

# Kernel errnos that mean "already gone" when undoing.
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


def errno_to_ack(err: int) -> int:
    """The ack's error_number for a kernel errno (openvpn reads 5010 as "exists")."""
    if err == errno.EEXIST:
        return errors.ERROR_OBJECT_ALREADY_EXISTS
    if err in (errno.ENOENT, errno.ESRCH):
        return errors.ERROR_NOT_FOUND
    if err in (errno.EPERM, errno.EACCES):
        return errors.ERROR_ACCESS_DENIED
    return err


DnsFactory = Callable[[Callable[[int, dict[str, Any]], None]], DnsBackend]


@dataclass
class _Block:
    table: str
    flags: int
    change_id: int
    scope_uid: int | None = None
    unscoped: int = 0


@dataclass(frozen=True)
class Started:
    """What ``Monitor.start_session`` made: the journaled session, its tun, openvpn."""
    session_id: int
    tun_name: str
    tun_ifindex: int
    child: launch.Child
    info: dict[str, Any]  # as journaled; "start_time" still None


class StartFailed(Exception):
    """``start_session`` failed at ``stage`` (``"tun"``, ``"spawn"`` or ``"journal"``).

    The session exists in the journal (``session_id``) with whatever was made, and
    ``child`` is openvpn if it was started: the caller's undo ends and removes them.
    """

    def __init__(self, session_id: int, stage: str, error: BaseException,
                 child: launch.Child | None = None) -> None:
        super().__init__(session_id, stage, error)
        self.session_id = session_id
        self.stage = stage
        self.error = error
        self.child = child


@dataclass(frozen=True)
class Applied:
    """Result of one operation: ack error number (0 = done) and its journal id."""
    error: int
    change_id: int | None = None


def _route_json(op: AddRoute) -> str:
    """The journal record of a route add: JSON text built directly (json.dumps of a dict
    was ~1.9 µs a route, this ~0.7; tests/unit/test_journal.py checks it is the JSON of
    the same values).  Addresses and networks format as plain ASCII: nothing to escape."""
    k = op.key
    gw = "null" if op.gateway is None else f'"{op.gateway}"'
    return (f'{{"dst":"{k.dst_text}","oif":{op.oif},"metric":{k.metric},"gw":{gw},'
            f'"bypass":{"true" if k.bypass else "false"}}}')


def _route_of(op: AddRoute) -> RouteSpec:
    """The kernel route of a decided add (the same route ``_route_json`` records), as
    values: the policy has checked them (netlink's fast path, ``RouteSpec``)."""
    metric = op.key.metric
    return RouteSpec(op.key.dst, op.oif, op.gateway, None if metric < 0 else metric)


def _route_spec(d: dict[str, Any]) -> RouteSpec:
    """A journaled route as netlink's fast-path values."""
    return RouteSpec(ip_network(d["dst"]), d["oif"],
                     None if d["gw"] is None else ip_address(d["gw"]),
                     None if d["metric"] < 0 else d["metric"])


def _route_from_data(d: dict[str, Any]) -> Route:
    """A journaled route, checked (it comes back from the state file)."""
    return _route_spec(d).route()


class Monitor:
    def __init__(self, journal_path: str, *, rtnl_factory: Callable[[], Rtnl] = Rtnl,
                 dns_factory: DnsFactory | None = None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="monitor")
        self._journal_path = journal_path
        self._rtnl_factory = rtnl_factory
        self._dns_factory = dns_factory
        self.journal: Journal
        self.rtnl: Rtnl
        self.dns: DnsBackend
        self._dns_changes: dict[int, int] = {}  # session id → its "dns" journal record
        self._blocks: dict[int, _Block] = {}  # session id → its kill-switch table
        # session id → (its user, its VPN servers): every kill switch lets them through
        self._servers: dict[int, tuple[int, tuple[str, ...]]] = {}
        self._pool.submit(self._open).result()
        # tun ifindex of each live session: their tun routes die with the tun.
        self._tuns: dict[int, int] = {}

    def _open(self) -> None:
        self.journal = Journal(self._journal_path)
        self.rtnl = self._rtnl_factory()
        self.dns = NoDns() if self._dns_factory is None else self._dns_factory(self.journal.update)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.submit(fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)`` for the monitor thread now (not at the caller's next await,
        as a coroutine would), so it runs while the caller goes on."""
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        def _close() -> None:
            self.dns.close()
            self.rtnl.close()
            self.journal.close()
        self._pool.submit(_close).result()
        self._pool.shutdown()

    # -- rows of the vocabulary (run in the monitor thread) -------------------

    def begin_session(self, uid: int, client_pid: int, info: dict[str, Any]) -> int:
        session_id: int = self.journal.new_session(uid, client_pid, info)
        return session_id

    def set_session_info(self, session_id: int, info: dict[str, Any]) -> None:
        self.journal.update_session_info(session_id, info)

    def create_tun(self, session_id: int, uid: int, gid: int) -> tuple[str, int]:
        """Create the session's tun ``istun<id>``; returns (name, ifindex).

        Session ids are unique per journal, but another service instance (or
        something else) in the same network namespace may already own that name:
        then ``istun<id>.<k>`` is tried.  An existing device is never taken over.
        """
        name, ifindex, change = self._make_tun(session_id, uid, gid, None)
        self.journal.update(change, {"name": name, "ifindex": ifindex})
        return name, ifindex

    def _make_tun(self, session_id: int, uid: int, gid: int,
                  change: int | None) -> tuple[str, int, int]:
        """``create_tun`` without the ifindex update: (name, ifindex, its journal record).

        ``change``, if given, is the record of the first name, already written.
        """
        for k in range(TUN_NAME_ATTEMPTS):
            name = f"istun{session_id}" + (f".{k}" if k else "")
            if change is None:
                change = self.journal.record(session_id, "tun", {"name": name, "ifindex": None})
            try:
                ifindex = tundev.create_tun(name, uid, gid)
            except FileExistsError:
                self.journal.forget([change])
                change = None
                continue
            except OSError:
                self.journal.forget([change])
                raise
            self._tuns[session_id] = ifindex
            self.rtnl.link_set(ifindex, up=True)
            return name, ifindex, change
        raise FileExistsError(errno.EEXIST, f"istun{session_id} and its variants all exist")

    def start_session(self, uid: int, gid: int, client_pid: int, info: dict[str, Any],
                      spawn: Callable[[str], launch.Child],
                      announce: Callable[[Started], None] | None = None) -> Started:
        """A session's whole start in one call: journal, tun, openvpn, its pid journaled.

        One call instead of three (``begin_session``, ``create_tun``,
        ``set_session_info``) and the spawn here rather than on the event loop: each
        thread switch cost ~50 µs, and concurrent starts no longer wait behind each
        other's steps in this thread's queue (P3, docs/performance.md).  ``spawn(tun)``
        starts openvpn for the tun; it may raise OSError.  ``announce(started)``, once
        all is journaled, tells the client (the PID reply) from this thread: waking the
        event loop first cost 0.1 ms on a quiet machine and up to 1.6 ms on a busy one
        (the new child takes a CPU meanwhile).  Raises ``StartFailed``.

        Journal order and crash recovery: the session and its tun's name are committed
        *before* the tun exists (undo deletes it by name even without the ifindex), and
        openvpn's pid right after the spawn, in this thread, before the client learns
        it.  Its start time comes later (``Started.info`` + ``set_session_info``, from
        the session, after the reply): reading ``/proc/PID/stat`` right after the spawn
        blocks until the child is through its ``exec`` (0.2-1.2 ms measured, most of
        what was left of P1).  Recovery (``server._recover``) ends a leftover openvpn
        only if its pid *and* start time match (``launch.kill_if_same``), never a
        recycled pid; so if the service is killed in the ~1 ms before the start time is
        journaled (or in the ~20 µs between spawn and the pid's commit) that openvpn is
        not ended, but its tun is still deleted and its channel to the service is gone
        with the service, so it can change nothing (before this change the same window
        was two thread switches and a ``/proc`` read long).
        """
        with self.journal.transaction():
            session_id: int = self.journal.new_session(uid, client_pid, info)
            first = self.journal.record(session_id, "tun",
                                        {"name": f"istun{session_id}", "ifindex": None})
        # Any failure (a bug too) says which session it leaves, so that it is undone.
        try:
            name, ifindex, change = self._make_tun(session_id, uid, gid, first)
        except Exception as exc:
            raise StartFailed(session_id, "tun", exc) from None
        try:
            child = spawn(name)
        except Exception as exc:
            raise StartFailed(session_id, "spawn", exc) from None
        full = {**info, "tun": name, "pid": child.pid, "start_time": None}
        try:
            with self.journal.transaction():
                self.journal.update(change, {"name": name, "ifindex": ifindex})
                self.journal.update_session_info(session_id, full)
        except Exception as exc:
            raise StartFailed(session_id, "journal", exc, child) from None
        started = Started(session_id, name, ifindex, child, full)
        if announce is not None:
            try:
                announce(started)
            except Exception:  # the session replies from the loop instead
                log.exception("event=announce-failed session=%d", session_id)
        return started

    def default_route(self, family: int) -> DefaultRoute | None:
        r = self.rtnl.default_route(family)
        if r is None or r.gateway is None or r.oif is None:
            return None
        return DefaultRoute(gateway=r.gateway, oif=r.oif)

    def apply(self, session_id: int, tun_ifindex: int,
              ops: Sequence[Operation]) -> list[Applied]:
        """Apply decided operations in order; consecutive route ops go as one batch."""
        results: list[Applied] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, AddRoute | DelRoute):
                j = i
                while j < len(ops) and isinstance(ops[j], AddRoute | DelRoute):
                    j += 1
                results.extend(self._routes(session_id, tun_ifindex, ops[i:j]))
                i = j
                continue
            if isinstance(op, DelTunRoutes):
                done = self._routes(session_id, tun_ifindex, op.routes) if op.routes else []
                results.append(Applied(next((r.error for r in done if r.error), 0)))
            else:
                results.append(self._one(session_id, tun_ifindex, op))
            i += 1
        return results

    def _one(self, session_id: int, tun_ifindex: int, op: Operation) -> Applied:
        try:
            if isinstance(op, AddAddress):
                if op.existing is not None:  # already journaled: put it in again
                    try:
                        self.rtnl.addr_add(tun_ifindex, op.key.address, op.key.prefix_len)
                    except OSError as exc:
                        if exc.errno != errno.EEXIST:
                            raise
                    return Applied(0, op.existing)
                data = {"address": str(op.key.address), "prefix_len": op.key.prefix_len,
                        "ifindex": tun_ifindex}
                change = self.journal.record(session_id, "addr", data)
                try:
                    self.rtnl.addr_add(tun_ifindex, op.key.address, op.key.prefix_len)
                except OSError:
                    self.journal.forget([change])
                    raise
                return Applied(0, change)
            if isinstance(op, DelAddress):
                try:
                    self.rtnl.addr_del(tun_ifindex, op.key.address, op.key.prefix_len)
                except OSError as exc:
                    if exc.errno not in _GONE:
                        raise
                self.journal.forget([op.change_id])
                return Applied(0)
            if isinstance(op, SetMtu):
                # Not journaled: the tun is ours and is deleted at the end.
                self.rtnl.link_set(tun_ifindex, mtu=op.mtu)
                return Applied(0)
            if isinstance(op, FlushNeighbors):
                self.rtnl.neigh_flush(tun_ifindex, op.family)
                return Applied(0)
            if isinstance(op, Nothing):
                return Applied(0)
            if isinstance(op, SetDns):
                return self._set_dns(session_id, tun_ifindex, op)
            if isinstance(op, FlushDns):
                self.dns.flush()
                return Applied(0)
            if isinstance(op, SetBlock):
                return self._set_block(session_id, op)
        except (firewall.NftError, DnsError) as exc:
            log.warning("event=backend-failed session=%d error=%r", session_id, str(exc))
            return Applied(errors.ERROR_GEN_FAILURE)
        except OSError as exc:
            return Applied(errno_to_ack(exc.errno or errno.EIO))
        raise TypeError(f"not an operation: {op!r}")

    def _routes(self, session_id: int, tun_ifindex: int,
                ops: Sequence[Operation]) -> list[Applied]:
        fresh = [op for op in ops if isinstance(op, AddRoute) and op.existing is None]
        ids = iter(self.journal.record_many_json(session_id, "route",
                                                 [_route_json(a) for a in fresh]))
        batch: list[tuple[bool, Route | RouteSpec]] = []
        change_ids: list[int | None] = []
        again: set[int] = set()  # batch positions re-adding an already journaled route
        for op in ops:
            if isinstance(op, AddRoute):
                batch.append((True, _route_of(op)))  # no text round trip (profiled)
                if op.existing is None:
                    change_ids.append(next(ids))
                else:
                    again.add(len(change_ids))
                    change_ids.append(op.existing)
            else:
                assert isinstance(op, DelRoute)
                recorded = self.journal.get(op.change_id)
                if recorded is None:  # cannot happen: the policy matched the record
                    raise LookupError(f"journal record {op.change_id} is missing")
                batch.append((False, _route_from_data(recorded.data)))
                change_ids.append(op.change_id)
        errs = self.rtnl.routes_apply(batch)
        forget: list[int] = []
        out: list[Applied] = []
        for pos, ((is_add, _route), cid, err) in enumerate(
                zip(batch, change_ids, errs, strict=True)):
            if not is_add and err in _GONE:
                err = 0  # already gone: the delete's intent holds
            if pos in again:
                if err == errno.EEXIST:
                    err = 0  # still there: nothing to do
                out.append(Applied(errno_to_ack(err) if err else 0, cid))
                continue
            # A failed add and a done delete both leave nothing to undo.
            if cid is not None and (bool(err) == is_add):
                forget.append(cid)
            out.append(Applied(errno_to_ack(err) if err else 0, cid if is_add else None))
        self.journal.forget(forget)
        return out

    # -- DNS -----------------------------------------------------------------------

    def _set_dns(self, session_id: int, tun_ifindex: int, op: SetDns) -> Applied:
        change = self._dns_changes.get(session_id)
        if op.state.empty:
            if change is not None:
                self._revert_dns(session_id, change)
            return Applied(0)
        ifname = socket.if_indextoname(tun_ifindex)
        fresh = change is None
        if change is None:
            change = self.journal.record(session_id, "dns",
                                         self.dns.undo_data(session_id, tun_ifindex, ifname))
            self._dns_changes[session_id] = change
        try:
            self.dns.apply(session_id, tun_ifindex, ifname, op.state.link(), change)
        except OSError:
            if fresh:
                with contextlib.suppress(OSError):
                    self._revert_dns(session_id, change)
            raise
        return Applied(0, change)

    def _revert_dns(self, session_id: int, change: int) -> None:
        rec = self.journal.get(change)
        if rec is not None:
            self._dns_backend(rec.data).revert(session_id, rec.data)
        self.journal.forget([change])
        self._dns_changes.pop(session_id, None)

    def _dns_backend(self, data: dict[str, Any]) -> DnsBackend:
        """The backend that made a record: the current one, or one made for the undo."""
        name = data.get("backend")
        if name == self.dns.name and (name != "file" or
                                      data.get("path") == getattr(self.dns, "path", None)):
            return self.dns
        if name == "resolved":
            return ResolvedDns()
        if name == "resolvconf":
            return ResolvconfDns(str(data["exe"]))
        if name == "file":
            return FileDns(str(data["path"]), self.journal.update)
        return NoDns()

    # -- the kill switch ------------------------------------------------------------

    def _all_servers(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for uid, addrs in self._servers.values():
            out.setdefault(uid, [])
            out[uid] += [a for a in addrs if a not in out[uid]]
        return out

    def _set_block(self, session_id: int, op: SetBlock) -> Applied:
        cur = self._blocks.get(session_id)
        if op.flags == 0:
            if cur is not None:
                firewall.delete_table(cur.table)
                self.journal.forget([cur.change_id])
                del self._blocks[session_id]
            return Applied(0)
        if cur is not None:
            firewall.replace_table(cur.table, op.flags, self._all_servers(),
                                   scope_uid=op.scope_uid, unscoped=op.unscoped)
            cur.flags, cur.scope_uid, cur.unscoped = op.flags, op.scope_uid, op.unscoped
            return Applied(0, cur.change_id)
        for k in range(firewall.TABLE_ATTEMPTS):
            name = firewall.table_name(session_id, k)
            change = self.journal.record(session_id, "nft", {"table": name})
            try:
                firewall.create_table(name, op.flags, self._all_servers(),
                                      scope_uid=op.scope_uid, unscoped=op.unscoped)
            except OSError as exc:
                self.journal.forget([change])
                if exc.errno == errno.EEXIST:
                    continue
                raise
            self._blocks[session_id] = _Block(name, op.flags, change, op.scope_uid, op.unscoped)
            return Applied(0, change)
        raise firewall.NftError(errno.EEXIST, f"iservice_{session_id} and its variants exist")

    def set_servers(self, session_id: int, uid: int, servers: Sequence[str]) -> None:
        """The VPN server addresses of a session: every kill switch lets the user's
        packets to them through (the tunnel's own connection)."""
        before = self._all_servers()
        if servers:
            self._servers[session_id] = (uid, tuple(servers))
        else:
            self._servers.pop(session_id, None)
        if self._all_servers() != before:
            self._sync_blocks()

    def _sync_blocks(self) -> None:
        servers = self._all_servers()
        for sid, block in self._blocks.items():
            try:
                firewall.replace_table(block.table, block.flags, servers,
                                       scope_uid=block.scope_uid, unscoped=block.unscoped)
            except OSError as exc:
                log.error("event=block-sync-failed session=%d table=%s error=%r", sid,
                          block.table, str(exc))

    def forget(self, change_ids: Sequence[int]) -> None:
        self.journal.forget(change_ids)

    def undo_session(self, session_id: int) -> list[str]:
        """Undo everything the journal holds for the session; returns problems seen.

        A change whose undo failed stays in the journal with its session, so the
        next start of the service tries it again; everything else is forgotten.
        """
        problems: list[str] = []
        # Addresses and routes through the session's tun go with the tun (in the kernel,
        # at once): the journal does not even hand them out (Journal.undo_changes).
        changes = self.journal.undo_changes(session_id)
        owner = next((s.uid for s in self.journal.sessions() if s.id == session_id), None)
        kept: set[int] = set()
        for c in changes:
            seen = len(problems)
            try:
                if c.kind == "route":
                    err = self.rtnl.routes_apply([(False, _route_from_data(c.data))])[0]
                    if err and err not in _GONE:
                        problems.append(f"route {c.data['dst']}: {errno.errorcode.get(err, err)}")
                elif c.kind == "dns":
                    self._dns_backend(c.data).revert(session_id, c.data)
                elif c.kind == "nft":
                    firewall.delete_table(str(c.data["table"]))
                elif c.kind == "tun":
                    self._drop_tun_routes6(session_id)
                    self._delete_tun(c.data, owner)
                else:
                    problems.append(f"unknown journal record kind {c.kind!r}")
            except OSError as exc:
                if exc.errno not in _GONE:
                    problems.append(f"{c.kind} {c.data}: {exc}")
            if len(problems) > seen:
                kept.add(c.id)
        if kept:
            # What went with the tun stays journaled while the tun does (if its delete
            # failed, the next start tries it again, and then they go too).
            self.journal.forget(c.id for c in changes if c.id not in kept)
            problems.append(f"{len(kept)} change(s) kept in the journal for the next start")
        else:
            self.journal.end_session(session_id)
        self._tuns.pop(session_id, None)
        self._dns_changes.pop(session_id, None)
        self._blocks.pop(session_id, None)
        if self._servers.pop(session_id, None) and self._blocks:
            self._sync_blocks()
        return problems

    def _drop_tun_routes6(self, session_id: int) -> None:
        """Delete the tun's IPv6 routes in one batch before the tun: the kernel's flush of
        a deleted link's IPv6 routes is slower (1,000 routes: teardown 32 ms against 18 ms
        for openvpn as root, which deletes them first).  Best effort: whatever is left
        goes with the tun anyway."""
        specs = [(False, _route_spec(d)) for d in self.journal.tun_routes6(session_id)]
        if specs:
            with contextlib.suppress(OSError, ValueError):
                self.rtnl.routes_apply(specs)

    def _delete_tun(self, data: dict[str, Any], owner: int | None) -> None:
        # Found by name whether or not its ifindex was recorded (the service may have
        # been killed in between).  The name was recorded before the device was made,
        # so after a crash in that window it may name a device someone else created
        # (another instance in this network namespace): a tun owned by another uid
        # is left alone.  delete_tun refuses a device that is not a tun.
        name = str(data["name"])
        found = tundev.tun_owner(name)
        if owner is not None and found is not None and found != owner:
            log.warning("event=tun-not-ours name=%s owner=%d expected=%d", name, found, owner)
            return
        tundev.delete_tun(name, rtnl=self.rtnl)

    def leftover_sessions(self) -> list[SessionRecord]:
        return self.journal.sessions()


def family_name(family: int) -> str:
    return "IPv4" if family == socket.AF_INET else "IPv6"


__all__ = ["Applied", "Monitor", "NetlinkError", "StartFailed", "Started", "errno_to_ack",
           "family_name"]
