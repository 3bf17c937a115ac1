"""Small asyncio helpers shared by the session, the launcher and the output pump."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
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
