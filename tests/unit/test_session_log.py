"""A session's log file (output.open_session_log): root never opens what is already there.

Each test plants, in a directory of its own, what a user could plant if ``log_dir`` were
writable by them (a symlink to a file root may write, a hard link, a FIFO) and checks
that the open neither follows nor opens it.  The service's start-up check of
``log_dir`` itself is tested with the real service in
tests/security/test_service_hardening.py.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from iservice.output import (
    LOG_FILE_MODE,
    LOG_FULL_NOTE,
    MAX_LOG_FILE,
    SessionOutput,
    open_session_log,
)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "logs"
    d.mkdir(mode=0o750)
    d.chmod(0o750)  # whatever the umask
    return d


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file root may write and a user wants changed (elsewhere, say /etc/shadow)."""
    v = tmp_path / "victim"
    v.write_text("precious\n")
    v.chmod(0o600)
    return v


def write_through(path: Path, data: bytes) -> None:
    out = SessionOutput(file_path=str(path))
    out.feed(data)
    out.close()


def aside(log_dir: Path, name: str) -> list[Path]:
    return sorted(p for p in log_dir.iterdir() if p.name.startswith(name + "."))


def test_a_new_file_is_private_whatever_the_umask(log_dir: Path) -> None:
    if os.geteuid() == 0:
        os.chown(log_dir, 0, 4321)  # the directory's group is who may read the files
    old = os.umask(0o077)  # the unit's UMask
    try:
        write_through(log_dir / "session-1.log", b"hello\n")
    finally:
        os.umask(old)
    st = (log_dir / "session-1.log").lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o7777 == LOG_FILE_MODE == 0o640
    assert st.st_uid == os.geteuid() and st.st_gid == log_dir.stat().st_gid
    assert (log_dir / "session-1.log").read_bytes() == b"hello\n"


def test_a_planted_symlink_is_never_followed(log_dir: Path, victim: Path) -> None:
    link = log_dir / "session-7.log"
    link.symlink_to(victim)
    write_through(link, b"openvpn output\n")
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o600
    st = link.lstat()
    assert stat.S_ISREG(st.st_mode) and link.read_bytes() == b"openvpn output\n"
    [moved] = aside(log_dir, "session-7.log")
    assert moved.is_symlink() and os.readlink(moved) == str(victim)  # kept, as planted


def test_a_dangling_symlink_creates_nothing_where_it_points(log_dir: Path,
                                                            tmp_path: Path) -> None:
    target = tmp_path / "cron-job"
    (log_dir / "session-8.log").symlink_to(target)
    write_through(log_dir / "session-8.log", b"x\n")
    assert not target.exists()
    assert (log_dir / "session-8.log").read_bytes() == b"x\n"


def test_a_planted_hard_link_is_not_written(log_dir: Path, victim: Path) -> None:
    os.link(victim, log_dir / "session-9.log")
    write_through(log_dir / "session-9.log", b"appended?\n")
    assert victim.read_text() == "precious\n"
    assert victim.stat().st_nlink == 2  # the old name, moved aside, still links to it
    assert (log_dir / "session-9.log").stat().st_nlink == 1


def test_an_old_log_of_the_same_name_is_kept(log_dir: Path) -> None:
    (log_dir / "session-1.log").write_text("an earlier journal's session 1\n")
    write_through(log_dir / "session-1.log", b"this session\n")
    assert (log_dir / "session-1.log").read_text() == "this session\n"
    [moved] = aside(log_dir, "session-1.log")
    assert moved.read_text() == "an earlier journal's session 1\n"


def test_a_planted_fifo_is_not_opened(log_dir: Path) -> None:
    """Opening a FIFO for writing would block the service's thread until a reader came."""
    fifo = log_dir / "session-3.log"
    os.mkfifo(fifo)
    worker = threading.Thread(target=write_through, args=(fifo, b"x\n"), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # the regression: a reader unblocks it, then fail
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("the open blocked on a FIFO")
    assert stat.S_ISREG(fifo.lstat().st_mode)
    [moved] = aside(log_dir, "session-3.log")
    assert stat.S_ISFIFO(moved.lstat().st_mode)


def test_a_group_writable_log_dir_is_refused(log_dir: Path) -> None:
    log_dir.chmod(0o770)
    with pytest.raises(OSError) as info:
        open_session_log(str(log_dir / "session-1.log"))
    assert f"log_dir {log_dir} must be owned by root and not writable" in str(info.value.strerror)
    assert not (log_dir / "session-1.log").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the directory to another user needs root")
def test_a_log_dir_owned_by_a_user_is_refused(log_dir: Path) -> None:
    os.chown(log_dir, 65534, 65534)
    with pytest.raises(OSError) as info:
        open_session_log(str(log_dir / "session-1.log"))
    assert "uid 65534" in str(info.value.strerror)
    assert not (log_dir / "session-1.log").exists()


def test_a_log_dir_replaced_by_a_symlink_is_refused(tmp_path: Path, log_dir: Path) -> None:
    swapped = tmp_path / "swapped"
    swapped.symlink_to(log_dir)
    with pytest.raises(OSError):
        open_session_log(str(swapped / "session-1.log"))
    assert list(log_dir.iterdir()) == []


def test_the_log_file_stops_at_its_limit_and_says_so(log_dir: Path) -> None:
    """openvpn is the user's to make print without end; the file root writes for it on a
    shared disk stops at ``MAX_LOG_FILE`` bytes with a note, the ring goes on."""
    path = log_dir / "session-1.log"
    out = SessionOutput(file_path=str(path))
    line = b"x" * 1023 + b"\n"
    for _ in range(MAX_LOG_FILE // len(line)):
        out.feed(line)
    assert path.stat().st_size == MAX_LOG_FILE  # exactly full: nothing left out yet
    out.feed(b"one more line\n")
    out.feed(b"and the last one\n")
    out.close()
    data = path.read_bytes()
    assert len(data) == MAX_LOG_FILE + len(LOG_FULL_NOTE) and data.endswith(LOG_FULL_NOTE)
    assert out.lines()[-1] == "and the last one"  # iservice log still shows the latest
