"""Processes of the lab: running commands, waiting, and ending processes by their PID.

Nothing here ever ends a process by name: the lab finds its leftovers by what it made
(its users' uids, its namespaces) and signals each PID (SIGTERM, a grace period, then
SIGKILL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("iservice.lab")

# Programs the lab runs (a missing one is a skip reason, not a failure).
REQUIRED_TOOLS = ("ip", "openvpn", "openssl", "setpriv", "unshare", "nft", "ping", "mount",
                  "useradd", "userdel", "groupadd", "groupdel")


class LabError(RuntimeError):
    """A lab step failed; the message says which command and what it printed."""


def missing_tools() -> list[str]:
    """Names from ``REQUIRED_TOOLS`` that are not on PATH (for a skip reason)."""
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` capturing text output; with ``check`` a failure raises ``LabError``."""
    cp = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input,
        env=None if env is None else dict(env), cwd=cwd,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and cp.returncode != 0:
        raise LabError(
            f"command failed (exit {cp.returncode}): {' '.join(argv)}\n"
            f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}"
        )
    return cp


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it, or raise ``LabError``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def parse_env_dump(text: str) -> dict[str, str]:
    """Parse ``env`` output (NAME=value per line) into a dict."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            result[name] = value
    return result


class LabProcess(subprocess.Popen[Any]):
    """A ``Popen`` the lab tracks and ends by PID at exit; knows where its output went."""

    label: str
    stdout_path: Path | None
    stderr_path: Path | None

    def output(self) -> str:
        """What the process wrote to its stdout file so far ('' if stdout was not a file)."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path else ""

    def error_text(self) -> str:
        """What the process wrote to its stderr file so far (not ``errors``: Popen sets
        an attribute of that name, which would hide the method)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def end(self, grace: float = 5.0) -> int:
        """SIGTERM by PID, wait ``grace`` s, SIGKILL; returns the exit status."""
        if self.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                self.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("lab: %s (pid %d) ignored SIGTERM, killing", self.label, self.pid)
                self.kill()
                self.wait(5)
        assert self.returncode is not None
        return self.returncode

    def close_files(self) -> None:
        """Close the pipes the process was given (if any)."""
        for fh in (self.stdin, self.stdout, self.stderr):
            if fh is not None:
                fh.close()


def pids_of_uids(uids: Iterable[int]) -> list[int]:
    """PIDs whose real, effective or saved uid is in ``uids`` (scanned from /proc)."""
    wanted = set(uids)
    found: list[int] = []
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if wanted.intersection(int(x) for x in line.split()[1:4]):
                            found.append(int(entry.name))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (its parent will reap a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` (from /proc), to tell a live owner from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def namespace_pids(ns: str) -> list[int]:
    """PIDs of processes in network namespace ``ns`` (none if it does not exist)."""
    out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def kill_pids(pids: Iterable[int], *, why: str, grace: float = 2.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` s, then SIGKILL what is left (by PID)."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        log.warning("lab cleanup: ending pid %d (%s)", pid, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            log.warning("lab cleanup: pid %d survived SIGTERM, sending SIGKILL", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
