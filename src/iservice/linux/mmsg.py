"""Many datagrams per system call on a non-blocking socket: ``recvmmsg``/``sendmmsg``.

The session channel is SOCK_SEQPACKET: one request per message, one ack per message.
Python's ``recv``/``send`` make one system call each and release the GIL around it; at
10,000 routes the event loop thread then waited for the monitor thread to hand the GIL
back after every one of its 20,000 calls (profiled: ``recv_into`` ~5 µs a call, most of
it waiting).  Here one call moves a whole batch (up to hundreds of messages), so the
switch is paid once per batch, and these calls go through ``ctypes.CDLL``, which
releases the GIL while the kernel copies the batch: the monitor thread's Python (the
journal's text, the rtnetlink encoding) runs meanwhile.  Measured against
``ctypes.PyDLL`` (GIL kept), alternating, ``bench/bench_channel.py``: medians of
147/156/170/164 vs 159/175/169/168 ms at 10,000 routes and 494/504 vs 498/537 ms at
30,000.  The calls are non-blocking (``MSG_DONTWAIT``): they never wait in the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
MSG_NOSIGNAL = 0x4000  # a closed peer is an EPIPE error, never a SIGPIPE


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(None, use_errno=True)
        for fn in (lib.recvmmsg, lib.sendmmsg):
            fn.restype = ctypes.c_int
        lib.recvmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint,
                                 ctypes.c_int, ctypes.c_void_p]
        lib.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint,
                                 ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class _Slots:
    """``count`` slots of ``size`` bytes in one buffer, with their message headers."""

    def __init__(self, sock: socket.socket, size: int, count: int) -> None:
        self._sock = sock
        self._size = size
        self._count = count
        self._buf = ctypes.create_string_buffer(size * count)
        self._vec = _vector(ctypes.addressof(self._buf), size, count)


class BatchReader(_Slots):
    """Up to ``count`` messages of at most ``size`` bytes per call from one socket."""

    def __init__(self, sock: socket.socket, size: int, count: int = 64) -> None:
        super().__init__(sock, size, count)
        self._view = memoryview(self._buf).cast("B")

    def read(self) -> list[tuple[int, bytes]]:
        """Messages queued now, as (length, data): an empty list when there are none; a
        message longer than ``size`` has length ``size + 1`` (cut, never taken as whole);
        length 0 is the end of the stream."""
        if _LIBC is None:
            return self._read_one()
        n = _LIBC.recvmmsg(self._sock.fileno(), self._vec, self._count, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        out: list[tuple[int, bytes]] = []
        size, view, vec = self._size, self._view, self._vec
        for i in range(n):
            m = vec[i]
            length = size + 1 if m.hdr.flags & MSG_TRUNC else m.len
            start = i * size
            out.append((length, bytes(view[start:start + min(length, size)])))
            if length == 0:
                break  # the end of the stream: what follows says the same again
        return out

    def _read_one(self) -> list[tuple[int, bytes]]:
        buf = bytearray(self._size)
        try:
            n = self._sock.recv_into(buf, self._size, socket.MSG_TRUNC | MSG_DONTWAIT)
        except BlockingIOError:
            return []
        return [(min(n, self._size + 1), bytes(buf[:min(n, self._size)]))]


class BatchSender(_Slots):
    """Messages of one fixed ``size`` (the acks), up to ``count`` per call."""

    def __init__(self, sock: socket.socket, size: int, count: int = 512) -> None:
        super().__init__(sock, size, count)

    def send(self, data: bytes | bytearray) -> int:
        """Send ``data`` as ``len(data) // size`` messages until the socket is full;
        returns how many went.  Raises OSError for anything but a full socket."""
        size = self._size
        total = len(data) // size
        sent = 0
        if _LIBC is None:
            while sent < total:
                try:
                    self._sock.send(data[sent * size:(sent + 1) * size],
                                    MSG_DONTWAIT | MSG_NOSIGNAL)
                except BlockingIOError:
                    break
                sent += 1
            return sent
        while sent < total:
            k = min(self._count, total - sent)
            ctypes.memmove(self._buf, bytes(data[sent * size:(sent + k) * size]), k * size)
            n = _LIBC.sendmmsg(self._sock.fileno(), self._vec, k, MSG_DONTWAIT | MSG_NOSIGNAL)
            if n < 0:
                err = ctypes.get_errno()
                if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise OSError(err, os.strerror(err))
            sent += n
            if n < k:
                break
        return sent


def _vector(base: int, size: int, count: int) -> ctypes.Array[_MMsgHdr]:
    """``count`` message headers, each with one buffer of ``size`` bytes from ``base`` on."""
    # Plain addresses, not ctypes pointer objects: a session keeps these for its whole
    # life, and a pointer object per entry cost ~150 bytes of Python memory each.
    iov = (_IoVec * count)(*[_IoVec(base + i * size, size) for i in range(count)])
    vec = (_MMsgHdr * count)()
    first, step = ctypes.addressof(iov), ctypes.sizeof(_IoVec)
    for i in range(count):
        vec[i].hdr.iov = first + i * step
        vec[i].hdr.iovlen = 1
    vec._iov = iov  # type: ignore[attr-defined]  # keeps the buffers' descriptors alive
    return vec
