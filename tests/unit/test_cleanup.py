"""``iservice cleanup`` (cleanup.py, server.cleanup): finding a live service by its socket,
stopping it, and the recovery without sockets on a real journal.  The lab's version
(a killed service's real session) is in tests/package/test_installed.py."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from iservice import cleanup, server
from iservice.journal import Journal
from iservice.settings import Settings

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the state directory must be "
                               "root's (check_private_dir); run as root, as CI does")


def listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(path))
    s.listen(4)
    return s


def test_listener_pid(tmp_path: Path) -> None:
    path = tmp_path / "control"
    assert cleanup.listener_pid(str(path)) is None  # nothing there
    with listen(path):
        assert cleanup.listener_pid(str(path)) == os.getpid()
    assert cleanup.listener_pid(str(path)) is None  # stale: refused
    (tmp_path / "file").write_text("x")
    assert cleanup.listener_pid(str(tmp_path / "file")) is None


def test_running_service_asks_the_control_socket_first(tmp_path: Path) -> None:
    settings = Settings(socket_path=str(tmp_path / "service"), state_dir=str(tmp_path / "s"))
    assert cleanup.running_service(settings) is None
    with listen(tmp_path / "service"):
        assert cleanup.running_service(settings) == (os.getpid(), str(tmp_path / "service"))
        with listen(tmp_path / "control"):
            assert cleanup.running_service(settings) == (os.getpid(),
                                                         str(tmp_path / "control"))


def test_stop_service_waits_for_the_process_and_leaves_systemd_alone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not cleanup.wait_gone(child.pid, 0.05)
        cleanup.stop_service(child.pid, "sock", grace=0.1)  # SIGTERM, then waits
        assert child.wait(1) == -15
    finally:
        child.kill()
        child.wait()
    with pytest.raises(cleanup.CleanupError, match="systemctl stop"):
        cleanup.stop_service(1, "/run/openvpn/service", grace=1)


def test_run_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(socket_path=str(tmp_path / "service"), state_dir=str(tmp_path / "s"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cleanup.run(settings, stop=False) == cleanup.EXIT_USAGE
    assert "must run as root" in capsys.readouterr().err
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with listen(tmp_path / "control"):
        assert cleanup.run(settings, stop=False) == cleanup.EXIT_LEFT
    assert f"a service is running (pid {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # no state directory made for nothing


@root_only
def test_cleanup_recovers_a_journal_without_opening_a_socket(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    journal = Journal(str(state / "journal.sqlite3"))
    # a session a killed service left: its tun (long gone) and an openvpn pid that is
    # not the process it names (start time differs), which must not be killed
    sid = journal.new_session(1000, 1, {"pid": os.getpid(), "start_time": 1})
    journal.record(sid, "tun", {"name": "istun999"})
    journal.close()
    settings = Settings(socket_path=str(tmp_path / "run" / "service"), state_dir=str(state))
    out = io.StringIO()
    assert cleanup.run(settings, stop=False, out=out) == cleanup.EXIT_OK
    assert "nothing left" in out.getvalue()
    check = Journal(str(state / "journal.sqlite3"))
    try:
        assert check.sessions() == [] and check.count() == 0
    finally:
        check.close()
    assert not (tmp_path / "run").exists()
    assert server.cleanup(settings) == 0  # again: nothing to do
