"""The journal lost, damaged or out of space (issue 17): nothing left behind, no traceback.

With the real kernel: a service killed with a live session whose journal is then
deleted or damaged finds the session's objects again by their marks at its next start
(effects/orphans.py) and removes them, the session's processes included; a state
directory that fills up refuses what it cannot journal with the original's error code,
ends the session cleanly, keeps serving others and finishes the undo once there is
space, without a restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, Service, live_pids, wait_for
from tests.lab import Lab, User

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

DISK_FULL = 112

SESSION = r'''
import os, time
from ipaddress import IPv4Address
own = m.Interface(tun_index, tun)
T = m.MsgType
enc = m.encode_message
r = {"addr": send(enc(m.AddressMsg(T.ADD_ADDRESS, 1, IPv4Address("10.66.0.1"), 24, own)))}
r["routes"] = [send(enc(m.RouteMsg(T.ADD_ROUTE, 100 + i, IPv4Address(f"10.{80 + i}.0.0"), 16,
                                   IPv4Address("0.0.0.0"), own, -1)))[1] for i in range(3)]
r["block"] = send(enc(m.WfpBlockMsg(T.ADD_WFP_BLOCK, 9, 2, own)))
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(1)
done(**r)
'''


@pytest.fixture
def hostile(lab: Lab, make_service: Callable[..., Service],
            hostile_exe: Path) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(extra: str = "") -> Service:
        s = make_service(extra=f"exe_path = {hostile_exe}\n" + extra)
        made.append(s)
        return s

    yield make
    for s in made:
        if s.proc is not None and s.proc.poll() is None:
            s.stop()


def user_pids(user: User) -> list[int]:
    return live_pids(user.uid)


def our_routes(lab: Lab) -> list[str]:
    return [r["dst"] for fam in (4, 6) for r in lab.routes(fam, table="all")
            if r.get("protocol") == "158"]


def nft_tables(lab: Lab) -> str:
    return lab.run_service(["nft", "list", "tables"]).stdout


def live_session(lab: Lab, svc: Service, user: User) -> int:
    lab.write_file("client/faults.ovpn", SESSION)
    cp = svc.start_as(user, "--config", "faults.ovpn")
    assert cp.returncode == 0, cp.stdout + cp.stderr + svc.log_tail()
    pid = int(cp.stdout.split()[-1])
    wait_for(lambda: (user.home / "faults.ovpn.result").exists(), 10, what=svc.log_tail)
    assert svc.tuns() and our_routes(lab) and "iservice_" in nft_tables(lab)
    assert len(user_pids(user)) >= 2  # the stand-in and the daemon it left
    return pid


def nothing_left(lab: Lab, svc: Service, user: User) -> bool:
    return (svc.tuns() == [] and our_routes(lab) == [] and "iservice_" not in nft_tables(lab)
            and user_pids(user) == [])


@pytest.mark.parametrize("damage", ["deleted", "truncated", "header-overwritten",
                                    "wal-removed"])
def test_a_lost_or_damaged_journal_still_leaves_nothing(
        lab: Lab, hostile: Callable[..., Service], user: User, damage: str) -> None:
    svc = hostile()
    svc.start()
    pid = live_session(lab, svc, user)
    svc.kill9()
    journal = svc.state_dir / "journal.sqlite3"
    if damage == "deleted":
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(journal) + suffix).unlink()
    elif damage == "truncated":
        os.truncate(journal, 0)
        with contextlib.suppress(FileNotFoundError):
            os.truncate(str(journal) + "-wal", 0)
    elif damage == "header-overwritten":
        for path in (journal, Path(str(journal) + "-wal")):  # the WAL may hold page 1
            if path.exists():
                with open(path, "r+b") as f:
                    f.write(b"this is not a database".ljust(100, b"\0"))
    else:
        with contextlib.suppress(FileNotFoundError):
            Path(str(journal) + "-wal").unlink()
    svc.start()
    wait_for(lambda: nothing_left(lab, svc, user), 5,
             what=lambda: f"{svc.tuns()} {our_routes(lab)} {user_pids(user)}\n"
                          f"{svc.log_tail()}")
    assert pid not in live_pids(user.uid)
    log = svc.log()
    assert "Traceback" not in log
    assert "event=orphan kind=tun" in log or damage == "wal-removed", log
    if damage == "header-overwritten":
        assert "event=journal-damaged" in log
        assert list(svc.state_dir.glob("journal.sqlite3.damaged-*"))
    assert svc.journal() == {"sessions": [], "changes": 0}
    # and the service works: a new session comes and goes
    pid2 = live_session(lab, svc, lab.add_user("isvn"))
    os.kill(pid2, signal.SIGKILL)
    wait_for(lambda: svc.tuns() == [], 5, what=svc.log_tail)


@pytest.fixture
def small_state_dir(lab: Lab) -> Iterator[Callable[[Service], Path]]:
    mounted: list[Path] = []

    def mount(svc: Service) -> Path:
        svc.state_dir.mkdir(mode=0o700, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "isv-state",
                        str(svc.state_dir)], check=True)
        mounted.append(svc.state_dir)
        return svc.state_dir

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


LATER = r'''
import os, time
from ipaddress import IPv4Address
own = m.Interface(tun_index, tun)
T = m.MsgType
enc = m.encode_message
first = send(enc(m.AddressMsg(T.ADD_ADDRESS, 1, IPv4Address("10.66.0.1"), 24, own)))
go = os.path.join(os.environ["HOME"], "go")
while not os.path.exists(go):
    time.sleep(0.05)
chan.setblocking(True)
n = 2000
for i in range(n):
    chan.send(enc(m.RouteMsg(T.ADD_ROUTE, i, IPv4Address(f"10.{100 + (i >> 8)}.{i & 255}.0"),
                             24, IPv4Address("0.0.0.0"), own, -1)))
errors = [struct.unpack_from("<I4xQi4xI", chan.recv(64))[3] for _ in range(n)]
done(first=first, errors=sorted(set(errors)), ok=errors.count(0))
'''


def test_a_full_state_directory_refuses_changes_and_recovers_without_restart(
        lab: Lab, hostile: Callable[..., Service], user: User,
        small_state_dir: Callable[[Service], Path]) -> None:
    svc = hostile()
    state = small_state_dir(svc)
    svc.start()
    lab.write_file("client/faults.ovpn", SESSION)
    lab.write_file("client/later.ovpn", LATER)
    # A start that cannot be journaled gets a proper error reply, and nothing is made.
    filler = fill(state)
    cp = svc.start_as(user, "--config", "faults.ovpn")
    assert cp.returncode == 1, cp
    assert "cannot record the session" in cp.stdout.lower() + cp.stderr.lower(), cp
    assert svc.tuns() == [] and user_pids(user) == []
    assert "event=journal-failed" in svc.log() and str(state) in svc.log()
    # Space again: served without a restart.
    filler.unlink()
    cp = svc.start_as(user, "--config", "later.ovpn")
    assert cp.returncode == 0, cp.stdout + cp.stderr + svc.log_tail()
    pid = int(cp.stdout.split()[-1])
    wait_for(lambda: svc.tuns() and svc.journal()["changes"] >= 3, 10, what=svc.log_tail)
    # Full in the middle of a session: what cannot be journaled is refused, never made.
    filler = fill(state)
    (user.home / "go").touch()
    result = user.home / "later.ovpn.result"
    wait_for(result.exists, 30, what=svc.log_tail)
    import json
    r = json.loads(result.read_text())
    assert DISK_FULL in r["errors"], r
    [tun] = svc.tuns()
    in_kernel = [x for x in lab.routes(4) if x.get("dev") == tun and
                 x.get("protocol") == "158" and x["dst"].startswith("10.1")]
    assert len(in_kernel) == r["ok"]  # every route made was journaled first
    # The session ends while the disk is still full: its undo removes everything but
    # cannot clear its records yet.  (SQLite writes into a WAL it already has: it is
    # emptied first, so that clearing the records needs new space.)
    filler.unlink()
    db = sqlite3.connect(str(state / "journal.sqlite3"))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    filler = fill(state)
    undone = svc.log().count("event=undone")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: svc.log().count("event=undone") > undone, 10, what=svc.log_tail)
    assert svc.tuns() == [] and user_pids(user) == []
    assert svc.journal()["sessions"], "kept for a retry"
    assert "the undone records are removed" in svc.log()
    filler.unlink()
    wait_for(lambda: svc.journal() == {"sessions": [], "changes": 0}, 30,
             what=lambda: f"the retried undo\n{svc.log_tail()}")
    assert "event=undo-retried" in svc.log()
    assert nothing_left(lab, svc, user)
    assert svc.stop() == 0
    assert "Traceback" not in svc.log()


def test_a_full_state_directory_at_start_is_one_clear_line(
        lab: Lab, make_service: Callable[..., Service],
        small_state_dir: Callable[[Service], Path]) -> None:
    svc = make_service()
    state = small_state_dir(svc)
    fill(state)
    cp = lab.run_service([ISERVICE, "serve", "--settings", str(svc.settings_path)],
                         timeout=20)
    assert cp.returncode == 1
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "event=cannot-start" in lines[0], cp.stderr
    assert str(state) in lines[0] and "Traceback" not in cp.stderr
