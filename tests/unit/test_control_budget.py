"""Control-socket budgets (issue 13 item 5, control part): the admission rule, and a real
ControlServer (asyncio, real sockets) that refuses past the per-user budget and drops a
client that never reads."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iservice import control as ctl
from iservice import platform
from iservice.settings import Settings
from iservice.wire import control as wc


@given(st.integers(1, 64), st.integers(1, 512), st.integers(0, 100), st.integers(0, 2000))
def test_admission(per_uid: int, total: int, mine: int, everyone: int) -> None:
    b = ctl.Budget(per_uid=per_uid, total=total, hard=1024)
    ok = b.admit(mine, everyone)
    assert not ok or mine < per_uid  # never past the user's own budget
    if mine == 0 and everyone < 1024:
        assert ok  # a user with nothing open is never locked out by the others
    if everyone >= 1024:
        assert not ok


def test_defaults_leave_room() -> None:
    server = SimpleNamespace(settings=Settings(), sessions=set())
    budget = ctl.ControlServer(server).budget  # type: ignore[arg-type]
    assert budget.per_uid == 32 and budget.total == 256  # 4 x max_clients_per_user


async def _serve(settings: Settings, path: str) -> tuple[ctl.ControlServer, asyncio.Task[None],
                                                         socket.socket]:
    server = SimpleNamespace(settings=settings, sessions=set(), platform=platform.linux())
    cs = ctl.ControlServer(server)  # type: ignore[arg-type]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    listener.setblocking(False)
    return cs, asyncio.create_task(cs.serve(listener)), listener


def test_per_user_budget_and_a_client_that_never_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctl, "SEND_TIMEOUT", 0.3)
    monkeypatch.setattr(ctl, "REQUEST_TIMEOUT", 5.0)

    async def main(path: str) -> None:
        cs, task, listener = await _serve(Settings(max_clients_per_user=3), path)
        loop = asyncio.get_running_loop()
        held = []
        try:
            for _ in range(cs.budget.per_uid):  # the budget, held without a request
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.setblocking(False)
                await loop.sock_connect(s, path)
                held.append(s)
            while cs.active < cs.budget.per_uid:
                await asyncio.sleep(0.01)
            extra = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            extra.setblocking(False)
            await loop.sock_connect(extra, path)
            await loop.sock_sendall(extra, wc.encode_request(wc.Request("sessions")))
            reply = wc.decode_reply(await loop.sock_recv(extra, 65536), "sessions")
            assert reply == wc.ErrorReply("busy", "too many control connections; try again")
            extra.close()
            # one of the held ones asks: served (the budget is per connection, not forever)
            await loop.sock_sendall(held[0], wc.encode_request(wc.Request("sessions")))
            assert json.loads(await loop.sock_recv(held[0], 65536)) == {"ok": True,
                                                                        "sessions": []}
            # a client that never reads: filling its buffer stalls the send, which is
            # dropped after SEND_TIMEOUT instead of holding a task and a descriptor
            stalled = asyncio.ensure_future(_fill_until_stalled(cs))
            await asyncio.wait_for(stalled, 10)
            assert stalled.result()
        finally:
            for s in held:
                s.close()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            listener.close()

    with tempfile.TemporaryDirectory() as d:
        asyncio.run(main(str(Path(d) / "control")))


async def _fill_until_stalled(cs: ctl.ControlServer) -> bool:
    """Send replies as the server does on a connection whose client never reads."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    try:
        big = wc.LogLines(tuple("x" * 1000 for _ in range(50)))
        for _ in range(10000):
            await cs._send(a, big)
    except ctl.ClientStalled:
        return True
    finally:
        a.close()
        b.close()
    return False
