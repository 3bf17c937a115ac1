"""recvmmsg/sendmmsg on the SEQPACKET channel: same datagrams as recv/send, fewer calls."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from iservice.linux import mmsg


@pytest.fixture(params=["mmsg", "fallback"])
def pair(request: pytest.FixtureRequest,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[socket.socket, socket.socket]]:
    if request.param == "fallback":  # no recvmmsg/sendmmsg: one call per datagram
        monkeypatch.setattr(mmsg, "_LIBC", None)
    else:
        assert mmsg._LIBC is not None  # glibc has both
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def drain(reader: mmsg.BatchReader) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    while got := reader.read():
        out += got
        if got[-1][0] == 0:
            break
    return out


def test_reads_every_datagram_whole_and_in_order(pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    a, b = pair
    sent = [bytes([i % 256]) * (1 + i % 50) for i in range(150)]
    for d in sent:
        b.send(d)
    reader = mmsg.BatchReader(a, 64, count=16)
    assert drain(reader) == [(len(d), d) for d in sent]
    assert reader.read() == []  # nothing queued: an empty list, not an error


def test_a_datagram_longer_than_the_buffer_is_reported_not_cut(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.send(b"x" * 100)
    b.send(b"ok")
    reader = mmsg.BatchReader(a, 64, count=4)
    got = drain(reader)
    assert got[0][0] == 65 and got[0][1] == b"x" * 64  # size + 1: too long
    assert got[1] == (2, b"ok")


def test_the_end_of_the_stream_is_length_zero(pair: tuple[socket.socket, socket.socket]
                                              ) -> None:
    a, b = pair
    b.send(b"last")
    b.close()
    got = drain(mmsg.BatchReader(a, 64, count=8))
    assert got == [(4, b"last"), (0, b"")]


def test_sender_sends_fixed_size_datagrams_until_full(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    acks = b"".join(i.to_bytes(4, "little") * 8 for i in range(100000))  # 32-byte acks
    sender = mmsg.BatchSender(a, 32, count=256)
    sent = sender.send(acks)
    assert 0 < sent < 100000  # the socket filled up: the rest is the caller's
    got = drain(mmsg.BatchReader(b, 64, count=64))
    assert [d for _n, d in got] == [acks[i * 32:(i + 1) * 32] for i in range(sent)]
    assert sender.send(acks[sent * 32:(sent + 3) * 32]) == 3  # room again
    b.close()
    with pytest.raises(OSError):
        sender.send(acks[:64])
