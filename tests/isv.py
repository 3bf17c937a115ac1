"""Run the real iservice inside a lab (tests/lab/): settings, start, stop, clients.

The service runs as root in the lab's client namespace, in a private mount
namespace with a 0666 /dev/net/tun (SPEC §9); users talk to it with the installed
``iservice start`` command, as themselves, from the same namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab import Lab, LabProcess, User, run, tail

VENV = Path(os.environ.get("ISERVICE_VENV", "/opt/iservice"))
# ISERVICE_INSTALLED=1 (scripts/test-package.sh): the Debian package's programs and
# Debian's python3 instead of the venv's (docs/install.md, "Tests")
BIN = Path("/usr/bin") if os.environ.get("ISERVICE_INSTALLED") == "1" else VENV / "bin"
ISERVICE = str(BIN / "iservice")
HOOK = str(BIN / "iservice-hook")
PYTHON = "/usr/bin/python3" if Path("/usr/bin") == BIN else str(VENV / "bin" / "python")


class Service:
    """One iservice instance in a lab."""

    def __init__(self, lab: Lab, *, extra: str = "", name: str = "svc") -> None:
        self.lab = lab
        self.name = name
        self.run_dir = lab.base_dir / f"{name}-run"
        self.socket_path = self.run_dir / "service"
        self.state_dir = lab.base_dir / f"{name}-state"
        self.log_dir = lab.base_dir / f"{name}-sessions"
        self.admin_group = lab.add_group("isvadm")
        text = (f"config_dir = {lab.config_dir}\n"
                f"socket_path = {self.socket_path}\n"
                f"state_dir = {self.state_dir}\n"
                f"log_dir = {self.log_dir}\n"
                f"ovpn_admin_group = {self.admin_group}\n"
                f"hook_path = {HOOK}\n"
                "stop_grace = 3\n" + extra)
        if "dns_backend" not in extra:
            # Never the machine's own resolver: the service's mount namespace sees the
            # host's /etc/resolv.conf (DNS tests pick a backend and a sandbox themselves).
            text += "dns_backend = none\n"
        self.settings_path = lab.write_file(f"{name}.conf", text, mode=0o644)
        self.proc: LabProcess | None = None

    # -- life -----------------------------------------------------------------

    def start(self, *, timeout: float = 10.0) -> LabProcess:
        self.proc = self.lab.popen_service([ISERVICE, "serve", "--settings",
                                            str(self.settings_path)], label=self.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "event=ready" in self.log():
                return self.proc
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"service not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if self.proc is None or self.proc.stderr_path is None:
            return ""
        return Path(self.proc.stderr_path).read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        if self.proc is None or self.proc.stderr_path is None:
            return ""
        return tail(Path(self.proc.stderr_path), lines)

    def service_pid(self) -> int:
        """The iservice process itself (the popen'd process is `ip netns exec` → exec chain)."""
        assert self.proc is not None
        return self.proc.pid  # ip netns exec, unshare, sh and setpriv all exec in place

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        os.kill(self.service_pid(), signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def finish(self, *, journal: bool = True) -> None:
        """Teardown of a test's service: stopped cleanly, no tun left (nor journal)."""
        if self.proc is not None and self.proc.poll() is None:
            assert self.stop() == 0, self.log_tail()
        assert self.tuns() == [], "tun devices left behind"
        if journal:
            assert self.journal()["sessions"] == [], self.log_tail()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.service_pid(), signal.SIGKILL)
        self.proc.wait(timeout=10)

    # -- clients --------------------------------------------------------------

    def start_cmd(self, *options: str, workdir: str | Path | None = None, stdin: str = "",
                  wait: bool = False, raw_options: str | None = None) -> list[str]:
        argv = [ISERVICE, "start", "--socket", str(self.socket_path),
                "--workdir", str(workdir or self.lab.config_dir)]
        if stdin:
            argv += ["--stdin", stdin]
        if wait:
            argv.append("--wait")
        if raw_options is not None:
            return [*argv, "--options", raw_options]
        return [*argv, "--", *options]

    def start_as(self, user: User | None, *options: str, timeout: float = 30,
                 **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.lab.run_client(self.start_cmd(*options, **kw), user=user, timeout=timeout)

    def raw_request(self, payload: bytes, user: User | None = None, *,
                    read_all: bool = True, timeout: float = 10) -> list[bytes]:
        """Send raw bytes as one message from the client namespace as ``user``; return replies."""
        script = (
            "import socket,sys,base64\n"
            "s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n"
            f"s.settimeout({timeout})\n"
            f"s.connect({str(self.socket_path)!r})\n"
            "data=base64.b64decode(sys.argv[1])\n"
            "s.send(data)\n"
            "while True:\n"
            "    r=s.recv(65536)\n"
            "    if not r: break\n"
            "    print(base64.b64encode(r).decode(), flush=True)\n"
            f"    if not {read_all}: break\n"
        )
        import base64
        cp = self.lab.run_client([PYTHON, "-I", "-c", script,
                                  base64.b64encode(payload).decode()], user=user,
                                 timeout=timeout + 10)
        if cp.returncode != 0:
            raise AssertionError(f"raw client failed: {cp.stderr}")
        return [base64.b64decode(line) for line in cp.stdout.split()]

    # -- inspection -----------------------------------------------------------

    def journal(self) -> dict[str, Any]:
        """Sessions and change counts in the journal (read-only)."""
        path = self.state_dir / "journal.sqlite3"
        if not path.exists():
            return {"sessions": [], "changes": 0}
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            sessions = [dict(zip(("id", "uid", "info"), (r[0], r[1], json.loads(r[2])),
                                 strict=True))
                        for r in db.execute("SELECT id, uid, info FROM sessions")]
            changes = db.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
        finally:
            db.close()
        return {"sessions": sessions, "changes": changes}

    def tuns(self) -> list[str]:
        return [x["ifname"] for x in self.lab.links() if x["ifname"].startswith("istun")]

    def session_log(self, session_id: int) -> str:
        p = self.log_dir / f"session-{session_id}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def connect(self, user: User, *options: str, timeout: float = 15) -> tuple[int, str]:
        """Start openvpn for ``user`` and wait until it says it is connected (its session
        log); its pid and its tun."""
        cp = self.start_as(user, *options)
        assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}"
        pid = int(cp.stdout.strip())

        def up() -> str | None:
            for s in self.journal()["sessions"]:
                if s["info"].get("pid") == pid and \
                        "Initialization Sequence Completed" in self.session_log(s["id"]):
                    return str(s["info"]["tun"])
            return None
        return pid, str(wait_for(up, timeout, what=lambda: self.log_tail()))

    def connectable(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(str(self.socket_path))
            return True
        except OSError:
            return False
        finally:
            s.close()


class Services:
    """The services a test makes; ``close`` stops each, whatever the test did.

    A service the test killed is started once more so that its recovery removes
    what it left (a failing test must not leave devices for the next one).
    """

    def __init__(self, lab: Lab, prefix: str = "svc", extra: str = "") -> None:
        self.lab, self.prefix, self.extra = lab, prefix, extra
        self.made: list[Service] = []

    def make(self, extra: str = "") -> Service:
        s = Service(self.lab, name=f"{self.prefix}{time.monotonic_ns() % 10**9}",
                    extra=self.extra + extra)
        self.made.append(s)
        return s

    def close(self) -> None:
        for s in self.made:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
            if s.journal()["sessions"]:
                s.start()
                s.stop()


def alive(pid: int) -> bool:
    """The process exists (a zombie too: kill(pid, 0) succeeds on it)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def terminate(pid: int, gone: Callable[[], bool], timeout: float = 10.0) -> None:
    """SIGTERM to a session's openvpn until ``gone()``: openvpn 2.6 loses a SIGTERM that
    arrives while it is still starting (inside a plugin call at route-up, seen here), as
    it would with root's scripts; ``iservice disconnect`` sends SIGKILL after the grace
    period for the same reason.  Tests that end a session at once send it again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        step = time.monotonic() + 1.0
        while time.monotonic() < min(step, deadline):
            if gone():
                return
            time.sleep(0.05)
    raise AssertionError(f"openvpn {pid}: its session did not end after SIGTERM in {timeout}s")


def live_pids(uid: int) -> list[int]:
    """The processes of ``uid`` that still run (zombies are dead: a process killed with
    its session waits there until its new parent, init, reaps it)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if st.st_uid == uid and state != b"Z":
            out.append(int(entry))
    return out


def pid_user(pid: int) -> int:
    """Real uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.05,
             what: str | Callable[[], str] = "") -> Any:
    """Poll ``pred`` until truthy; ``what`` (text, or a function giving it) explains a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else (what or str(pred))
            raise AssertionError(f"timed out after {timeout}s waiting for {text}")
        time.sleep(interval)


def ns_pids(lab: Lab, argv0: str) -> list[int]:
    """PIDs (host view) whose command line starts with argv0."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].decode(errors="replace") == argv0:
            out.append(int(d.name))
    return out


__all__ = ["ISERVICE", "PYTHON", "PtyClient", "Service", "ns_pids", "pid_user", "run",
           "wait_for"]



class PtyClient:
    """A command in a real pseudo-terminal (as a user types at it): ``expect`` text, ``send``
    answers.  Everything it printed is kept in ``transcript`` (no echo of secrets: getpass
    turns echo off, so a typed password never appears there)."""

    def __init__(self, argv: list[str], *, cwd: str = "/") -> None:
        import pty
        self.transcript = ""
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once, nothing else
            try:
                os.chdir(cwd)
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        import select
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the terminal's last user has gone
            return False
        if not data:
            return False
        self.transcript += data.decode("utf-8", "replace")
        return True

    def expect(self, text: str, timeout: float = 30) -> str:
        """Wait until ``text`` appears after what was consumed so far; returns the transcript."""
        deadline = time.monotonic() + timeout
        while text not in self.transcript:
            if time.monotonic() > deadline or (not self._read(0.1) and self.poll() is not None):
                raise AssertionError(f"no {text!r} within {timeout}s; transcript:\n"
                                     f"{self.transcript}")
        return self.transcript

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def poll(self) -> int | None:
        if self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"still running after {timeout}s:\n{self.transcript}")
            self._read(0.1)
        while self._read(0.05) and len(self.transcript) < 10**6:
            pass
        assert self.status is not None
        return self.status

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.status = -9

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class LogTail:
    """An incremental reader of a growing file: from its start, or (``from_end``) from
    its size when the reader is made (what was there before is not this reader's)."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self.pos = 0
        if from_end:
            with contextlib.suppress(FileNotFoundError):
                self.pos = path.stat().st_size
        self.text = ""

    def poll(self) -> str:
        """Everything read so far, with what was appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return self.text
        self.pos += len(data)
        self.text += data.decode(errors="replace")
        return self.text
