"""Small asyncio helpers shared by the session, the launcher and the output pump."""

from __future__ import annotations

import asyncio


async def readable(fd: int) -> None:
    """Wait until ``fd`` is readable (a socket, a pipe or a pidfd), without a thread."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
