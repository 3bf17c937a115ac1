"""Small asyncio helpers shared by the session, the launcher and the output pump."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


async def readable(fd: int, *, until: asyncio.Future[Any] | None = None) -> None:
    """Wait until ``fd`` is readable (a socket, a pipe or a pidfd), without a thread;
    or, with ``until``, until that future is done, whichever comes first."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, wake)
    if until is not None:
        until.add_done_callback(wake)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
        if until is not None:
            until.remove_done_callback(wake)


async def shielded(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile (cleanup, and
    work whose result must be known: what a start made must be undone); the caller's
    cancellation is raised once ``aw`` is done, whose result is then in the future."""
    fut = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        raise


class FairGate:
    """At most ``slots`` holders at a time, at most ``per_key`` of them with one key;
    waiters are served round robin by ``key``.

    ``asyncio.Semaphore`` serves its waiters first come, first served: a user who sends
    64 requests at once would put every other user's request behind all 64.  Here each
    key has its own queue and a freed slot goes to the next key in turn that holds
    fewer than ``per_key``, so a request waits for at most one holder per other key
    with waiters (and its own key's earlier ones), and no key can hold every slot.
    ``async with gate.hold(key): ...``; cancellation-safe.
    """

    def __init__(self, slots: int, per_key: int | None = None) -> None:
        if slots < 1 or (per_key is not None and per_key < 1):
            raise ValueError("a gate needs at least one slot, and a key at least one")
        self._free = slots
        self._per_key = slots if per_key is None else per_key
        self._held: dict[Hashable, int] = {}
        self._queues: dict[Hashable, collections.deque[asyncio.Future[None]]] = {}
        self._turns: collections.deque[Hashable] = collections.deque()  # keys with waiters

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: Hashable) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        q = self._queues.get(key)
        if q is None:
            self._queues[key] = q = collections.deque()
            self._turns.append(key)
        q.append(fut)
        self._grant()
        if fut.done():
            return
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(key)  # granted just as it was cancelled: pass it on
            else:
                self._drop(key, fut)
            raise

    def _drop(self, key: Hashable, fut: asyncio.Future[None]) -> None:
        q = self._queues.get(key)
        if q is None or fut not in q:
            return
        q.remove(fut)
        if not q:
            del self._queues[key]
            self._turns.remove(key)

    def _release(self, key: Hashable) -> None:
        left = self._held[key] - 1
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        """Free slots to waiters: the keys in turn, each below ``per_key``."""
        skipped = 0
        while self._free > 0 and self._turns and skipped < len(self._turns):
            key = self._turns.popleft()
            if self._held.get(key, 0) >= self._per_key:
                self._turns.append(key)  # at its cap: the others go first
                skipped += 1
                continue
            q = self._queues[key]
            fut = q.popleft()
            if q:
                self._turns.append(key)  # to the back: the other keys go first
            else:
                del self._queues[key]
            if fut.done():
                continue  # cancelled, not yet dropped
            fut.set_result(None)  # the slot passes straight to this waiter
            self._free -= 1
            self._held[key] = self._held.get(key, 0) + 1
            skipped = 0
