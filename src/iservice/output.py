"""openvpn's output for one session: recent lines, an optional log file, observers.

openvpn's stdout and stderr (and those of its hook, which inherits them) go to a
pipe the service reads.  The lines are kept in a bounded ring (for ``iservice
log``), appended to ``log_dir/session-<id>.log`` when ``log_dir`` is set, and
offered to observers (for example a parser that watches for pushed options).
Everything is bounded: a line longer than ``MAX_LINE`` is cut, the ring keeps
``max_lines``, a follower that does not keep up loses lines, not memory, and the log
file stops at ``MAX_LOG_FILE`` bytes with a note saying so.

The log file is made by ``open_session_log``: root never opens an existing file
there, so a link planted in ``log_dir`` is never followed (docs/security.md,
"Session log files").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable

from iservice.aio import readable

MAX_LINE = 4096
FOLLOW_QUEUE = 1000
PUMP_CHUNK = 16384  # bytes read from openvpn at a time, the loop yielding between
LOG_FILE_MODE = 0o640  # root writes; log_dir's group may read; nobody else
# A session's log file stops growing here: openvpn is the user's to make print at pipe
# speed, and root writes the file on a disk every user (and the journal) shares.
MAX_LOG_FILE = 32 * 1024 * 1024
LOG_FULL_NOTE = (b"\n[iservice: this session's log file reached its limit of "
                 b"%d bytes; the rest of openvpn's output is not written here "
                 b"(iservice log shows the latest lines)]\n" % MAX_LOG_FILE)

log = logging.getLogger("iservice.output")

_CREATE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND | os.O_CLOEXEC
           | os.O_NOCTTY)


def open_session_log(path: str) -> int:
    """Create ``path`` (a session's log file) for appending; its descriptor.

    * ``O_CREAT | O_EXCL`` (and ``O_NOFOLLOW``): only a new file is ever opened,
      never an existing one, whatever it is (a symlink, a hard link to another
      file, a FIFO, a device): nothing to race between a check and the open.
    * An entry of that name already there (left when the journal, and so the
      session numbers, started again, or planted) is renamed to
      ``<name>.<nanoseconds>`` (rename acts on the name, never on what a link
      points to) and the file is created anew; a second clash is an error.
    * The directory is opened without following a link and must be owned by root
      (or the service's user) and not writable by group or others (checked at
      start by the service, again here in case it changed since).
    * The file is owned by the service (root), group = the directory's group,
      mode ``LOG_FILE_MODE`` (0640) whatever the umask: root and the members of
      ``log_dir``'s group may read it.

    Raises ``OSError`` (with ``strerror`` saying why) when the file cannot be made.
    """
    directory, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise OSError(errno.EINVAL, f"{path!r} does not name a file")
    dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                     | os.O_CLOEXEC)
    try:
        dst = os.fstat(dir_fd)
        if dst.st_uid not in (0, os.geteuid()) or dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OSError(errno.EPERM, f"log_dir {directory} must be owned by root and not "
                          f"writable by group or others (it is uid {dst.st_uid}, mode "
                          f"{dst.st_mode & 0o7777:o})")
        try:
            fd = os.open(name, _CREATE, LOG_FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            aside = f"{name}.{time.time_ns()}"
            os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            log.warning("event=session-log-renamed path=%s to=%s", path, aside)
            fd = os.open(name, _CREATE, LOG_FILE_MODE, dir_fd=dir_fd)
        try:
            fst = os.fstat(fd)
            if fst.st_gid != dst.st_gid:
                os.fchown(fd, -1, dst.st_gid)
            os.fchmod(fd, LOG_FILE_MODE)  # the umask (UMask=0077 in the unit) took the group's
        except OSError:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dir_fd)


class SessionOutput:
    def __init__(self, *, max_lines: int = 2000, file_path: str | None = None) -> None:
        self.ring: collections.deque[str] = collections.deque(maxlen=max_lines)
        self.observers: list[Callable[[str], None]] = []
        self.followers: set[asyncio.Queue[str | None]] = set()
        self._partial = b""
        self._file: int | None = None
        self._room = MAX_LOG_FILE  # bytes the log file may still take
        if file_path is not None:
            self._file = open_session_log(file_path)

    def feed(self, data: bytes) -> None:
        if self._file is not None and data:
            self._write(data)
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

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        with contextlib.suppress(OSError):
            if len(data) <= self._room:
                os.write(self._file, data)
                self._room -= len(data)
                return
            os.write(self._file, data[:self._room] + LOG_FULL_NOTE)
        with contextlib.suppress(OSError):
            os.close(self._file)
        self._file = None  # full: the ring, the observers and followers go on

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
                data = os.read(fd, PUMP_CHUNK)
            except BlockingIOError:
                await readable(fd)
                continue
            if not data:
                return
            self.feed(data)
            # Yield after every chunk: an openvpn that prints without pause (its output
            # is the user's to flood) must not hold the loop that serves other sessions
            # (bench "noisy neighbour": 20,000 lines held another user's start 68 ms;
            # a 16 KiB chunk is ~350 lines, ~3 ms of the loop).
            await asyncio.sleep(0)

    def drain(self, fd: int) -> None:
        """Take whatever is readable now, without waiting."""
        with contextlib.suppress(OSError):
            while data := os.read(fd, 65536):
                self.feed(data)
