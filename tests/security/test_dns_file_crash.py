"""A managed resolv.conf (``dns_backend = file``) is never left torn by a crash
(issue 17 item 3), at any moment of any write, a plain file or a mount point.

Each case runs the service's real monitor and file backend in a child process
(forked, ``dns_crash.py``) that ``SIGKILL``s itself at one step of one write: before the
file is opened, after, with half of the bytes written, with all written but not
truncated or renamed, after the truncation, after the fsync, just before and just
after the rename.  The file is a real file in a directory (replaced by rename) or a
real bind mount in a private mount namespace (written in place, as with a
bind-mounted ``/etc/resolv.conf``).  Then the recovery of the next service start
(``Monitor.undo_session`` of every journaled session) must give the administrator's
file back byte for byte, remove the temporary file, and leave an empty journal; and
a recovery killed at each step of its own write must be completed by the next one.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from tests.security import dns_crash

from iservice.journal import Journal
from iservice.linux.dns import MARKER, TEMP_SUFFIX, render

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: bind mounts in a "
                                 "private mount namespace")]

ORIGINAL = (b"# the administrator's resolver\n"
            b"nameserver 192.168.1.1\n"
            b"search example.com corp.example.com\n"
            b"options ndots:2 timeout:1\n")
# The whole texts the child's sessions make (both on lo, dns_crash.LO): A; B then A; B.
OURS = {render(ORIGINAL, [("lo", s.link()) for s in states])
        for states in ((dns_crash.A,), (dns_crash.B, dns_crash.A), (dns_crash.B,))}
PLAIN_STEPS = ("open", "opened", "half", "written", "synced", "renaming", "renamed")
MOUNT_STEPS = ("open", "opened", "half", "written", "truncated", "synced")
ACTIONS = ("apply", "second", "end-other", "revert")


class Setup:
    """The resolv.conf of one case: ``path`` as the child sees it, ``real`` as we do."""

    def __init__(self, tmp: Path, mode: str) -> None:
        self.mode = mode
        self.real = tmp / "src" / "resolv.conf"
        self.real.parent.mkdir()
        self.real.write_bytes(ORIGINAL)
        self.real.chmod(0o644)
        self.journal = tmp / "state" / "journal.sqlite3"
        self.journal.parent.mkdir(mode=0o700)
        if mode == "mount":
            self.path = tmp / "etc" / "resolv.conf"  # the mount point, in the child only
            self.path.parent.mkdir()
            self.path.write_bytes(b"# the mount point: never read through this name\n")
        else:
            self.path = self.real

    def run(self, action: str, step: str = "none") -> int:
        bind = (str(self.real), str(self.path)) if self.mode == "mount" else None
        return dns_crash.run(action, step, str(self.path), str(self.journal), bind)

    def crash(self, action: str, step: str) -> None:
        status = self.run(action, step)
        assert status == -signal.SIGKILL, (
            f"{action}/{step} was not killed at its step (exit {status}; the child's "
            "traceback, if any, is in the captured stderr)")

    def state(self) -> str:
        """``original``, ``ours`` (a whole text iservice renders), ``torn`` (anything
        else), and whether a temporary file is there."""
        data = self.real.read_bytes()
        if data == ORIGINAL:
            what = "original"
        elif data in OURS:
            what = "ours"
        else:
            what = "torn"
        return what + (" + temp file" if self.temps() else "")

    def temps(self) -> list[Path]:
        return [p for d in {self.real.parent, self.path.parent} for p in d.iterdir()
                if p.name.endswith(TEMP_SUFFIX)]

    def recover(self) -> None:
        assert self.run("recover") == 0, "recovery failed (see the captured stderr)"

    def assert_restored(self) -> None:
        assert self.real.read_bytes() == ORIGINAL
        assert self.temps() == []
        assert oct(self.real.stat().st_mode & 0o777) == oct(0o644)
        j = Journal(str(self.journal))
        try:
            assert j.sessions() == [] and j.count() == 0
        finally:
            j.close()


def cases() -> list[tuple[str, str, str]]:
    return [(mode, action, step) for mode, steps in (("plain", PLAIN_STEPS),
                                                     ("mount", MOUNT_STEPS))
            for action in (*ACTIONS, "recover") for step in steps]


def one_case(tmp: Path, mode: str, action: str, step: str) -> str:
    """Crash, look, recover, check; returns what the crash left (AssertionError if wrong)."""
    s = Setup(tmp, mode)
    if action == "recover":
        # a recovery killed in its own write: the worst start, a torn file in place
        # (mount point) or ours with a temporary file (plain file)
        s.crash("revert", "written" if mode == "mount" else "renaming")
    s.crash(action, step)
    state = s.state()
    if mode == "plain":
        # rename: never torn; a temporary file from its creation to the rename
        assert not state.startswith("torn"), state
        assert ("temp file" in state) == (step in ("opened", "half", "written", "synced",
                                                    "renaming")), state
    if (mode, action, step) == ("mount", "revert", "written"):
        # issue 17's case: the original written back over ours, not yet truncated
        data = s.real.read_bytes()
        assert state == "torn" and data.startswith(ORIGINAL) and MARKER not in data, data
    s.recover()
    s.assert_restored()
    return state


def test_a_crash_at_any_step_of_any_write_is_recovered(tmp_path: Path) -> None:
    """Every (file kind, write, step), one after the other; all failures reported."""
    results: dict[tuple[str, str, str], str] = {}
    failures: list[str] = []
    for case in cases():
        d = tmp_path / "-".join(case)
        d.mkdir()
        try:
            results[case] = one_case(d, *case)
        except AssertionError as exc:
            failures.append(f"{'/'.join(case)}: {str(exc)[:600]}")
    print(matrix(results))  # docs/dns.md's table (pytest -s shows it)
    assert not failures, "\n".join(failures)
    assert len(results) == len(cases()) == 2 * 5 * 7 - 5  # plain 7 steps, mount 6
    # the matrix covers both outcomes a crash can have: torn in place, temp files
    assert "torn" in results["mount", "revert", "written"]
    assert sum("temp file" in v for v in results.values()) >= 20


def matrix(results: dict[tuple[str, str, str], str]) -> str:
    """What the crashes left, one row per (file kind, write), one column per step."""
    steps = ["open", "opened", "half", "written", "truncated", "synced", "renaming", "renamed"]
    rows = ["| file | write | " + " | ".join(steps) + " |",
            "|---|---|" + "---|" * len(steps)]
    for mode in ("plain", "mount"):
        for action in (*ACTIONS, "recover"):
            rows.append(f"| {mode} | {action} | " + " | ".join(
                results.get((mode, action, st), "n/a") for st in steps) + " |")
    return "\n".join(rows)


@pytest.mark.parametrize("mode", ["plain", "mount"])
def test_a_crash_after_the_write_is_recovered(tmp_path: Path, mode: str) -> None:
    """The service killed while a session is live (its write complete)."""
    s = Setup(tmp_path, mode)
    # two live sessions, no kill: the child exits, the journal stays
    assert s.run("second") == 0
    assert s.state() == "ours"
    s.recover()
    s.assert_restored()


def test_an_administrators_file_is_left_alone_after_a_crash(tmp_path: Path) -> None:
    """Recovery restores only what it recognises as its own."""
    s = Setup(tmp_path, "plain")
    s.crash("apply", "renamed")
    mine = b"nameserver 192.168.7.7\n"  # a DHCP client replaced the file meanwhile
    s.real.write_bytes(mine)
    s.recover()
    assert s.real.read_bytes() == mine
