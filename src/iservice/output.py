"""openvpn's output for one session: recent lines, an optional log file, observers.

openvpn's stdout and stderr (and those of its hook, which inherits them) go to a
pipe the service reads.  The lines are kept in a bounded ring (for ``iservice
log``), appended to ``log_dir/session-<id>.log`` when ``log_dir`` is set, and
offered to observers (for example a parser that watches for pushed options).
Everything is bounded: a line longer than ``MAX_LINE`` is cut, the ring keeps
``max_lines``, and a follower that does not keep up loses lines, not memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Callable

from iservice.aio import readable

MAX_LINE = 4096
FOLLOW_QUEUE = 1000


class SessionOutput:
    def __init__(self, *, max_lines: int = 2000, file_path: str | None = None) -> None:
        self.ring: collections.deque[str] = collections.deque(maxlen=max_lines)
        self.observers: list[Callable[[str], None]] = []
        self.followers: set[asyncio.Queue[str | None]] = set()
        self._partial = b""
        self._file: int | None = None
        if file_path is not None:
            self._file = os.open(file_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                                 0o600)

    def feed(self, data: bytes) -> None:
        if self._file is not None and data:
            with contextlib.suppress(OSError):
                os.write(self._file, data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        if len(self._partial) > MAX_LINE:
            chunks.append(self._partial[:MAX_LINE])
            self._partial = b""
        for raw in chunks:
            self._line(raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"))

    def _line(self, line: str) -> None:
        self.ring.append(line)
        for observe in list(self.observers):
            observe(line)
        for q in list(self.followers):
            if q.qsize() < FOLLOW_QUEUE:
                q.put_nowait(line)

    def lines(self) -> list[str]:
        return list(self.ring)

    def follow(self) -> asyncio.Queue[str | None]:
        q: asyncio.Queue[str | None] = asyncio.Queue()
        self.followers.add(q)
        return q

    def unfollow(self, q: asyncio.Queue[str | None]) -> None:
        self.followers.discard(q)

    def close(self) -> None:
        if self._partial:
            self._line(self._partial[:MAX_LINE].decode("utf-8", "replace"))
            self._partial = b""
        for q in list(self.followers):
            q.put_nowait(None)  # end of stream
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.close(self._file)
            self._file = None

    async def pump(self, fd: int) -> None:
        """Read ``fd`` (non-blocking) until EOF or cancellation."""
        os.set_blocking(fd, False)
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                await readable(fd)
                continue
            if not data:
                return
            self.feed(data)

    def drain(self, fd: int) -> None:
        """Take whatever is readable now, without waiting."""
        with contextlib.suppress(OSError):
            while data := os.read(fd, 65536):
                self.feed(data)
