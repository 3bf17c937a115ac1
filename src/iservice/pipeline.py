"""A session's channel pipeline without I/O: decode → decide → reserve → settle → ack.

Like h11's ``Connection``, this holds the state and makes every decision; the session
(``session.py``) only moves bytes and time through it:

1. ``feed`` the raw messages read from the channel (``(true length, data)``; a true
   length above the data means the message was cut: oversize); pieces of openvpn's
   forwarded environment (``ISERVICE_ENV``) go to the ``EnvStream``, whose requests
   (made by ``produce.py``) are decided like the channel's, before what is read next;
2. ``next_batch`` decodes and decides what is queued, up to ``CHANNEL_BATCH``
   messages, reserving each decided operation in the session's records (so the rest
   of the batch, and other sessions through ``Owners``, see it at once) — the caller
   hands ``Step.batch``'s operations to the monitor;
3. ``settle`` takes the monitor's results for a batch, in order: it fixes the records
   where the kernel refused, and gives the acks (bytes for the channel), the answers to
   forwarded environments (sent after the acks) and the audit lines.

``Step.wait``: a message names a change that is still in flight (an add whose outcome
the monitor has not reported yet); it is held and decided again once everything before
it has settled.  ``Step.need_default_route``: a bypass route needs a fresh default
route; the caller asks the monitor and calls ``set_default_route``, then
``next_batch`` again.  ``Step.abort``: an oversize message (CVE-2024-27459): the
session must end.  ``Step.eof``: openvpn closed its end.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from iservice import audit, errors
from iservice.envstream import EnvStream, Reply
from iservice.errors import ChannelError, MessageTooLargeError
from iservice.policy.dns import BlockState
from iservice.policy.ownership import Owners, Scope
from iservice.policy.requests import (
    RUN_ROUTES,
    AddAddress,
    AddRoute,
    AddTunRoutes,
    DefaultRoute,
    DelAddress,
    DelRoute,
    DelTunRoutes,
    NeedDefaultRoute,
    Operation,
    Refused,
    RequestPolicy,
    RouteRun,
    SessionRecords,
    SetBlock,
    SetDns,
)
from iservice.wire import msg as m

CHANNEL_BATCH = 4096  # messages decided and applied together (one journal transaction)

# (message_id, ack error | decided operation, how to answer: None = an ack to the sender;
# a Reply for a request made from a forwarded environment, or for its end)
Item = tuple[int, "int | Operation", "Reply | None"]


@dataclass
class Batch:
    items: list[tuple[int, int | Operation, Reply | None]] = field(default_factory=list)

    @property
    def ops(self) -> list[Operation]:
        return [item for _, item, _ in self.items if not isinstance(item, int)]


@dataclass(frozen=True)
class Step:
    batch: Batch
    eof: bool = False
    wait: bool = False
    abort: str | None = None  # why the session must end
    need_default_route: int | None = None  # the family


@dataclass(frozen=True)
class Settled:
    acks: bytes
    answers: list[bytes]  # to forwarded environments (after the acks)
    applied: list[str]  # audit lines (info)
    failed: list[str]  # audit lines (warning)
    bypass_changed: bool  # a bypass route came or went: the kill switch's servers
    address_added: bool


class Result(Protocol):
    """The monitor's answer for one operation (``monitor.Applied`` has this shape).
    For ``AddTunRoutes``: ``errors`` has each route's error (None: each got ``error``),
    route i was journaled as ``change_id + i`` (None: none was)."""

    @property
    def error(self) -> int: ...

    @property
    def change_id(self) -> int | None: ...

    @property
    def errors(self) -> tuple[int, ...] | None: ...


def in_flight(op: Operation) -> bool:
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


def names_bypass(op: Operation) -> bool:
    """Does ``op`` add or delete a bypass route (one of the kill switch's servers)?"""
    return isinstance(op, AddRoute | DelRoute) and op.key.bypass


class Pipeline:
    """One session's channel state: what is queued, held and reserved."""

    def __init__(self, policy: RequestPolicy, *, owners: Owners, scope: Scope,
                 session_id: int, uid: int, envs: EnvStream | None = None) -> None:
        self.policy = policy
        self.records: SessionRecords = policy.records
        self.owners = owners
        self.scope = scope
        self.session_id = session_id
        self.uid = uid
        self._queued: collections.deque[tuple[int, bytes]] = collections.deque()
        self._held: tuple[bytes | m.Message, Reply | None] | None = None
        owners.register(scope, session_id, uid, self.records.routes)
        self.envs = envs
        self.denials: list[tuple[str, dict[str, object]]] = []  # (event, fields) to audit

    # -- input ------------------------------------------------------------------

    def feed(self, messages: Iterable[tuple[int, bytes]]) -> None:
        self._queued.extend(messages)

    @property
    def queued(self) -> bool:
        return bool(self._queued) or self._held is not None or (
            self.envs is not None and self.envs.pending)

    def set_default_route(self, family: int, route: DefaultRoute | None, now: float) -> None:
        self.policy.set_default_route(family, route, now)

    # -- deciding ---------------------------------------------------------------

    def next_batch(self, now: float) -> Step:
        """Decide what is queued, up to ``CHANNEL_BATCH`` messages (module docstring):
        first what a forwarded environment made, then what came over the channel."""
        batch = Batch()
        items = batch.items
        policy = self.policy
        envs = self.envs
        extra = 0  # a run is one item of len(run) requests: the batch counts requests
        while len(items) + extra < CHANNEL_BATCH:
            retried = self._held is not None
            reply: Reply | None = None
            item: bytes | m.Message | None
            if self._held is not None:
                (item, reply), self._held = self._held, None
            elif envs is not None and (made := envs.next(
                    min(RUN_ROUTES, CHANNEL_BATCH - len(items) - extra))) is not None:
                mid, made_item, reply = made
                if made_item is None:  # the environment's end: its one answer, in order
                    items.append((mid, 0, reply))
                    continue
                if isinstance(made_item, RouteRun):
                    # New routes through the tun: decided together, as decide() would
                    # decide each; the first one it would not is decided alone below.
                    run_op, taken = policy.decide_run(made_item)
                    if run_op is not None:
                        self.reserve(run_op)
                        items.append((mid, run_op, reply))
                        extra += taken - 1
                        envs.put_back(made_item.rest(taken))
                        continue
                    envs.put_back(made_item.rest(1))
                    item = made_item.message(0)
                else:
                    item = made_item
            else:
                if not self._queued:
                    return Step(batch)
                n, item = self._queued.popleft()
                if n == 0:
                    return Step(batch, eof=True)
                if n > m.MAX_MESSAGE_SIZE:
                    # CVE-2024-27459: an oversize message ends the session
                    return Step(batch, eof=True, abort=f"message of {n} bytes")
                fast = policy.decide_fast(item) if n == len(item) else None
                if fast is not None:  # a new route through the tun: nothing in flight
                    self.reserve(fast[1])
                    items.append((*fast, None))
                    continue
            if isinstance(item, bytes):
                try:
                    msg = m.decode_message(item)
                except MessageTooLargeError as exc:
                    return Step(batch, eof=True, abort=str(exc))
                except ChannelError as exc:
                    self.denials.append(("bad-message", {
                        "what": "channel message", "verdict": "malformed",
                        "reason": exc.reason, "mid": exc.message_id,
                        "error": exc.error_number}))
                    items.append((exc.message_id, exc.error_number, None))
                    continue
                if isinstance(msg, m.EnvChunkMsg):  # a piece of openvpn's environment
                    if envs is None:
                        items.append((msg.message_id, errors.ERROR_MESSAGE_TYPE, None))
                    else:
                        items += envs.take(msg)
                    continue
            else:
                msg = item
                route = None if retried else policy.decide_route_fast(msg)
                if route is not None:  # made from an environment: the same shortcut
                    self.reserve(route)
                    items.append((msg.message_id, route, reply))
                    continue
            try:
                op = policy.decide(msg, now)
            except NeedDefaultRoute as need:
                self._held = (item, reply)
                return Step(batch, need_default_route=need.family)
            except Refused as exc:
                self.denials.append(("denied", {
                    "what": audit.describe(msg), "verdict": "denied", "reason": exc.reason,
                    "mid": msg.message_id, "error": exc.error_number}))
                items.append((msg.message_id, exc.error_number, reply))
                continue
            if in_flight(op):
                if retried:  # nothing is in flight now: a bug, not openvpn's fault
                    self.denials.append(("session-bug", {
                        "what": audit.describe(op), "reason": "still in flight after settling",
                        "mid": msg.message_id}))
                    items.append((msg.message_id, errors.ERROR_GEN_FAILURE, reply))
                    continue
                self._held = (item, reply)
                return Step(batch, wait=True)
            self.reserve(op)
            items.append((msg.message_id, op, reply))
        return Step(batch)

    def reserve(self, op: Operation) -> None:
        """Mirror a decided op in the records (and the owners) now."""
        rec = self.records
        # The session's route table is registered with the owners: a route in it counts
        # for every other session at once (in flight: -1).
        if isinstance(op, AddTunRoutes):
            rec.routes.reserve_new(op.run.version, op.run.keys, op.run.plens)
        elif isinstance(op, AddRoute):
            rec.routes[op.key] = -1 if op.existing is None else op.existing
        elif isinstance(op, DelRoute):
            rec.routes.pop(op.key, None)
        elif isinstance(op, DelTunRoutes):
            # What could not be deleted stays in the journal; undo retries it.
            for d in op.routes:
                rec.routes.pop(d.key, None)
        elif isinstance(op, AddAddress):
            if op.existing is None:
                rec.addresses[op.key] = -1
                self.owners.addresses_of_user[self.uid] += 1
            else:
                rec.addresses[op.key] = op.existing
        elif isinstance(op, DelAddress):
            if rec.addresses.pop(op.key, None) is not None:
                self._addresses_less(1)
        elif isinstance(op, SetDns):
            rec.dns.dns = op.state
        elif isinstance(op, SetBlock):
            rec.dns.block = BlockState(op.flags)

    def _addresses_less(self, n: int) -> None:
        counts = self.owners.addresses_of_user
        counts[self.uid] -= n
        if counts[self.uid] <= 0:
            del counts[self.uid]

    # -- settling ---------------------------------------------------------------

    def _settle_one(self, op: Operation, result: Result) -> None:
        rec = self.records
        if isinstance(op, AddRoute):
            if op.existing is not None:
                pass  # the record stays whatever the kernel said
            elif result.error or result.change_id is None:
                rec.routes.pop(op.key, None)
            else:
                rec.routes[op.key] = result.change_id
        elif isinstance(op, DelRoute) and result.error:
            rec.routes[op.key] = op.change_id
        elif isinstance(op, AddAddress) and op.existing is None:
            if result.error or result.change_id is None:
                if rec.addresses.pop(op.key, None) is not None:
                    self._addresses_less(1)
            else:
                rec.addresses[op.key] = result.change_id
        elif isinstance(op, DelAddress) and result.error:
            rec.addresses[op.key] = op.change_id
            self.owners.addresses_of_user[self.uid] += 1
        elif isinstance(op, SetDns) and result.error:
            rec.dns.dns = op.previous
        elif isinstance(op, SetBlock) and result.error:
            rec.dns.block = BlockState(op.previous)

    def settle(self, batch: Batch, results: Iterable[Result], who: str) -> Settled:
        """The monitor's results for ``batch`` (one per operation, in order): records
        settled, one ack per message, one audit line per decided message (denials were
        audited when they were decided)."""
        out = iter(results)
        acks = bytearray()
        answers: list[bytes] = []
        applied: list[str] = []
        failed: list[str] = []
        bypass = added = False
        for message_id, item, reply in batch.items:
            if isinstance(item, int):
                error = item
            elif isinstance(item, AddTunRoutes):
                result = next(out)
                refused, error = self._settle_run(item, result, who, message_id, applied,
                                                  failed)
                if reply is not None:
                    reply(error, len(item.run), refused)
                continue
            else:
                result = next(out)
                self._settle_one(item, result)
                error = result.error
                bypass = bypass or names_bypass(item)
                added = added or isinstance(item, AddAddress)
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
        return Settled(bytes(acks), answers, applied, failed, bypass, added)

    def _settle_run(self, op: AddTunRoutes, result: Result, who: str, mid: int,
                    applied: list[str], failed: list[str]) -> tuple[int, int]:
        """A run's routes settled, one audit line each (as ``settle`` writes for an
        ``AddRoute``); (how many were refused, the first refusal's error)."""
        run = op.run
        errs = result.errors
        keys, texts = run.keys, run.texts
        self.records.routes.settle_new(run.version, keys, run.plens, result.change_id, errs,
                                       result.error)
        # The line of each route, as "event=applied {who} what={quote(describe(AddRoute))}
        # verdict=applied mid={mid}" gives it (quoted: a network's text is plain ASCII
        # with no quote or backslash).  One f-string a route instead of describe() and
        # quote(): ~2.5 µs a route less (profiled at 10,000 routes).
        table = "" if op.table is None else f" table={op.table}"
        head = f'event=applied {who} what="add_route dst='
        tail = f' bypass=False metric=-1 oif={op.oif}{table}" verdict=applied mid={mid}'
        if errs is None and not result.error and result.change_id is not None:
            applied += [head + text + tail for text in texts]
            return 0, 0
        refused, first = 0, 0
        for i, text in enumerate(texts):
            error = result.error if errs is None else errs[i]
            if result.change_id is None and not error:
                error = errors.ERROR_GEN_FAILURE  # not journaled: not made (cannot happen)
            if error:
                refused += 1
                first = first or error
                what = audit.quote(op.route_text(text))
                failed.append(f"event=failed {who} what={what} verdict=failed mid={mid} "
                              f"error={error}")
            else:
                applied.append(head + text + tail)
        return refused, first

    def release(self) -> None:
        """The session ended: its routes and addresses no longer count for anybody."""
        self.owners.unregister(self.scope, self.session_id)
        self._addresses_less(len(self.records.addresses))
