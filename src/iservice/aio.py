"""Small asyncio helpers shared by the session, the launcher and the output pump."""

from __future__ import annotations

import asyncio
from typing import Any


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
