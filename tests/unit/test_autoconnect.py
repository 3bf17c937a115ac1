"""``iservice enable``/``disable`` (autoconnect.py): the unit instance name against the real
``systemd-escape``, and the command paths with a stand-in ``systemctl`` (a test double
that records its arguments: systemd is not PID 1 here, so the real one cannot start
anything; tests/package checks the real one's enable/disable)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iservice import autoconnect, cli
from iservice.autoconnect import instance_name, systemctl_argv, unit_name

ESCAPE = shutil.which("systemd-escape")
needs_escape = pytest.mark.skipif(ESCAPE is None, reason="systemd-escape (Debian's systemd "
                                  "package) is not installed")


def real_escape(text: str) -> str:
    assert ESCAPE is not None
    return subprocess.run([ESCAPE, "--", text], capture_output=True, text=True,
                          check=True).stdout.rstrip("\n")


@needs_escape
@pytest.mark.parametrize("profile", ["work", "my-work", "dir/work.ovpn", ".hidden", "a b",
                                     "ünïcode", "x:y_z.1", "/etc/openvpn/client/w.ovpn",
                                     "tab\\back", "a@b"])
def test_instance_name_is_systemd_escape(profile: str) -> None:
    assert instance_name(profile) == real_escape(profile)


@needs_escape
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF), min_size=1,
               max_size=20))
def test_instance_name_is_systemd_escape_for_any_text(profile: str) -> None:
    assert instance_name(profile) == real_escape(profile)


def test_unit_name_and_its_refusals() -> None:
    assert unit_name("work") == "iservice-connect@work.service"
    assert unit_name("a-b") == "iservice-connect@a\\x2db.service"
    for bad in ("", " work", "work\n", "a\x07b"):
        with pytest.raises(ValueError):
            unit_name(bad)
    with pytest.raises(ValueError, match="too long"):
        unit_name("é" * 100)


def test_systemctl_argv() -> None:
    assert systemctl_argv("/bin/systemctl", "enable", "u", user=False, now=False) == \
        ["/bin/systemctl", "enable", "u"]
    assert systemctl_argv("/bin/systemctl", "disable", "u", user=True, now=True) == \
        ["/bin/systemctl", "--user", "disable", "--now", "u"]
    with pytest.raises(ValueError):
        systemctl_argv("/bin/systemctl", "start", "u", user=False, now=False)


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Test double: a ``systemctl`` first on PATH that appends its argv to a file and
    exits with $FAKE_SYSTEMCTL_STATUS (default 0)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit "${{FAKE_SYSTEMCTL_STATUS:-0}}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def test_root_enables_the_system_unit_and_a_user_the_user_unit(
        fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    sock = "/nonexistent/control"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(["enable", "work", "--socket", "/nonexistent/service"]) == 0
    out, err = capsys.readouterr()
    assert "at boot" in out and "was not checked" in err  # no service to ask
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert autoconnect.run("enable", "my-work", now=True,
                           check=autoconnect.profile_check(sock)) == 0
    assert autoconnect.run("disable", "my-work", now=False, check=lambda p: None) == 0
    assert fake_systemctl.read_text().splitlines() == [
        "enable iservice-connect@work.service",
        "--user enable --now iservice-connect@my\\x2dwork.service",
        "--user disable iservice-connect@my\\x2dwork.service"]


def test_a_path_profile_is_checked_without_the_service(
        fake_systemctl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check = autoconnect.profile_check("/nonexistent/control")
    missing = str(tmp_path / "nope.ovpn")
    assert autoconnect.run("enable", missing, now=False, check=check) == 2
    assert "no such file" in capsys.readouterr().err
    assert not fake_systemctl.exists()  # systemctl was not run
    present = tmp_path / "ok.ovpn"
    present.write_text("client\n")
    assert autoconnect.run("enable", str(present), now=False, check=check) == 0
    assert "was not checked" not in capsys.readouterr().err


def test_failures(fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    assert autoconnect.run("enable", "", now=False, check=lambda p: None, err=err) == 2
    assert autoconnect.run("enable", "w", now=False, check=lambda p: "no profile 'w'",
                           err=err) == 2
    monkeypatch.setenv("FAKE_SYSTEMCTL_STATUS", "1")
    assert autoconnect.run("disable", "w", now=False, check=lambda p: None, err=err) == 1
    monkeypatch.setenv("PATH", "/nonexistent")
    assert autoconnect.run("disable", "w", now=False, check=lambda p: None, err=err) == 3
    text = err.getvalue()
    assert "non-empty" in text and "no profile 'w'" in text
    assert "failed (status 1)" in text and "systemctl not found" in text
