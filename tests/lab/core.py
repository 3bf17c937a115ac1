"""The lab's skeleton: its life (open, close, sweep of killed runs), its files, users
and groups, and the command wrappers that run things in its namespaces.

``LabCore`` knows nothing of the network or openvpn (``network.py``, ``openvpn.py``
build on it); everything it creates is recorded before it is made (in memory, and in
``base_dir/lab.json`` for ``sweep_stale``) and removed in ``close()``, also after errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tests.lab import accounts
from tests.lab.accounts import User
from tests.lab.procs import (
    LabError,
    LabProcess,
    kill_pids,
    log,
    missing_tools,
    namespace_pids,
    pid_alive,
    pids_of_uids,
    run,
    start_time,
)

TUN_DEVICE = Path("/dev/net/tun")
TUN_MAJOR, TUN_MINOR = 10, 200
MANIFEST = "lab.json"  # in base_dir: what the lab created, for ``LabCore.sweep_stale``
FILES = Path(__file__).with_name("files")
SERVICE_WRAPPER = FILES / "service_wrapper.sh"
BIND = FILES / "bind.sh"
CGROUP_CLEANUP = FILES / "cgroup_cleanup.sh"


def remove_cgroup(name: str) -> None:
    """End every process of a lab's cgroup (its services' sessions too) and remove it."""
    run(["unshare", "--mount", "--propagation", "private", "sh", str(CGROUP_CLEANUP), name],
        check=True)


class LabCore:
    """Directories, namespaces (by name), users, groups and processes of one lab run."""

    def __init__(self, *, base_dir: Path | None = None, tag: str | None = None) -> None:
        self.tag = tag or os.urandom(3).hex()
        if not self.tag.isalnum() or len(self.tag) > 8:
            raise ValueError(f"tag must be 1-8 alphanumerics, got {self.tag!r}")
        self.server_ns = f"isv-s-{self.tag}"
        self.client_ns = f"isv-c-{self.tag}"
        self.cgroup_name = f"isv-lab-{self.tag}"  # the services' cgroup (cgroup v2)
        self._own_base = base_dir is None
        self._base_arg = base_dir
        self.base_dir = Path("/nonexistent")  # set in open()
        self.config_dir = Path("/nonexistent")
        self.tun_node = Path("/nonexistent")
        self._procs: list[LabProcess] = []
        self._users: list[User] = []
        self._groups: list[str] = []
        self._namespaces: list[str] = []
        self._counter = 0
        self._manifest: dict[str, list[str]] = {"namespaces": [], "users": [], "groups": []}
        self._host_tun: os.stat_result | None = None
        self._opened = False
        # The service wrapper: a command prefix that enters another mount and network
        # namespace instead of the client's (tests/resolved_sandbox.py sets it), and
        # files bind-mounted over paths in the service's private mount namespace.
        self.service_prefix: list[str] | None = None
        self.service_binds: list[tuple[Path, str]] = []

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)

    def open(self) -> None:
        """Create the directories, then what ``_setup`` makes (namespaces, network)."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (namespaces, users, openvpn server)")
        if missing := missing_tools():
            raise LabError(f"the lab needs these tools: {', '.join(missing)}")
        self._opened = True
        try:
            self._host_tun = os.stat(TUN_DEVICE) if TUN_DEVICE.exists() else None
            if self._base_arg is None:
                self.base_dir = Path(tempfile.mkdtemp(prefix=f"isv-lab-{self.tag}-", dir="/tmp"))
            else:
                self.base_dir = self._base_arg
                self.base_dir.mkdir(parents=True, exist_ok=True)
            os.chown(self.base_dir, 0, 0)
            self.base_dir.chmod(0o755)
            self._save_manifest()
            self.config_dir = self.make_dir("client")
            for sub in ("logs", "servers", "home"):
                self.make_dir(sub)
            private = self.make_dir("private", mode=0o700)
            self.tun_node = private / "tun"
            os.mknod(self.tun_node, stat.S_IFCHR | 0o666, os.makedev(TUN_MAJOR, TUN_MINOR))
            self.tun_node.chmod(0o666)
            self._setup()
        except BaseException:
            self.close(raise_errors=False)
            raise

    def _setup(self) -> None:
        """What a lab builds once its directories exist (overridden: the network)."""

    def add_namespace(self, ns: str) -> None:
        """``ip netns add ns``, recorded first; deleted at close."""
        self._record("namespaces", ns)
        self._namespaces.append(ns)
        run(["ip", "netns", "add", ns])

    def close(self, *, raise_errors: bool = True) -> None:
        """Remove everything the lab made; every step is tried even if an earlier one fails."""
        if not self._opened:
            return
        self._opened = False
        problems: list[str] = []

        def step(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as exc:  # keep cleaning up, report at the end
                log.error("lab cleanup: %s failed: %s", what, exc)
                problems.append(f"{what}: {exc}")

        for proc in reversed(self._procs):
            step(f"end {proc.label} (pid {proc.pid})", partial(self._end, proc))
        step("end lab users' processes", self._kill_user_processes)
        step("end processes left in the namespaces", self._kill_namespace_processes)
        step("remove the lab's cgroups", partial(remove_cgroup, self.cgroup_name))
        for ns in reversed(self._namespaces):
            step(f"delete netns {ns}", partial(_delete_ns, ns))
        self._namespaces.clear()
        for user in reversed(self._users):
            step(f"delete user {user.name}", partial(self._delete_user, user))
        self._users.clear()
        for group in reversed(self._groups):
            step(f"delete group {group}", partial(accounts.delete_group, group))
        self._groups.clear()
        if self._own_base and self.base_dir.exists():
            step(f"remove {self.base_dir}", lambda: shutil.rmtree(self.base_dir))
        else:
            for path in (self.tun_node, self.base_dir / MANIFEST):
                if path.exists():
                    step(f"remove {path}", path.unlink)
        step("check host /dev/net/tun", self._check_host_tun)
        if problems and raise_errors:
            raise LabError("lab cleanup incomplete:\n" + "\n".join(problems))

    @staticmethod
    def _end(proc: LabProcess) -> None:
        try:
            if proc.poll() is None:
                proc.end(grace=5.0)
        finally:
            proc.close_files()

    def _kill_user_processes(self) -> None:
        pids = [p for p in pids_of_uids(u.uid for u in self._users) if pid_alive(p)]
        if pids:
            kill_pids(pids, why="still running as a lab user")

    def _kill_namespace_processes(self) -> None:
        for ns in self._namespaces:
            if pids := namespace_pids(ns):
                kill_pids(pids, why=f"still running in netns {ns}")

    @staticmethod
    def _delete_user(user: User) -> None:
        accounts.delete_user(user.name)
        if user.home.exists():
            shutil.rmtree(user.home)

    def _check_host_tun(self) -> None:
        now = os.stat(TUN_DEVICE) if TUN_DEVICE.exists() else None
        before = self._host_tun
        if (before is None) != (now is None) or (
            before is not None and now is not None
            and (before.st_mode, before.st_uid, before.st_gid, before.st_rdev)
            != (now.st_mode, now.st_uid, now.st_gid, now.st_rdev)
        ):
            raise LabError(f"host {TUN_DEVICE} changed during the lab: {before} -> {now}")

    # ------------------------------------------------------------ leftovers of killed runs

    def _record(self, kind: str, name: str) -> None:
        """Note a name in the manifest *before* creating it, so a sweep finds it."""
        self._manifest[kind].append(name)
        self._save_manifest()

    def _save_manifest(self) -> None:
        data = {"tag": self.tag, "pid": os.getpid(), "start": start_time(os.getpid()),
                **self._manifest}
        tmp = self.base_dir / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.base_dir / MANIFEST)

    @staticmethod
    def sweep_stale(parent: Path = Path("/tmp")) -> list[str]:
        """Remove what labs of dead processes left behind (a run killed with SIGKILL):
        for each ``parent/isv-lab-*/lab.json`` whose owner process is gone, end the
        processes in its namespaces and of its users, delete the namespaces, users,
        groups and the directory. Labs of live processes are left alone. Returns the
        swept tags."""
        swept: list[str] = []
        for manifest in sorted(parent.glob(f"isv-lab-*/{MANIFEST}")):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            pid, start = int(data.get("pid", 0)), data.get("start")
            if pid and start_time(pid) == start:
                continue  # owner still running
            log.warning("lab sweep: removing leftovers of lab %s (pid %s)", data.get("tag"), pid)
            for ns in data.get("namespaces", []):
                kill_pids(namespace_pids(ns), why=f"stale netns {ns}")
            uids = [uid for name in data.get("users", [])
                    if (uid := accounts.uid_of(name)) is not None]
            kill_pids(pids_of_uids(uids), why="stale lab user")
            remove_cgroup(f"isv-lab-{data.get('tag')}")
            for ns in data.get("namespaces", []):
                with contextlib.suppress(LabError):
                    _delete_ns(ns)
            for name in data.get("users", []):
                accounts.delete_user(name)
            for name in data.get("groups", []):
                accounts.delete_group(name)
            shutil.rmtree(manifest.parent, ignore_errors=True)
            swept.append(str(data.get("tag")))
        return swept

    # ------------------------------------------------------------ files

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def make_dir(self, rel: str, *, mode: int = 0o755, owner: User | None = None) -> Path:
        """A directory under ``base_dir`` (root-owned unless ``owner``)."""
        path = self.base_dir / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, owner.uid if owner else 0, owner.gid if owner else 0)
        path.chmod(mode)
        return path

    def write_file(self, rel: str, text: str, *, mode: int = 0o644,
                   owner: User | None = None) -> Path:
        """Write a file under ``base_dir`` (root-owned unless ``owner``) with ``mode``."""
        path = self.base_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chown(path, owner.uid if owner else 0, owner.gid if owner else 0)
        path.chmod(mode)
        return path

    def log_path(self, label: str) -> Path:
        """A fresh log file path under ``base_dir/logs`` for ``label``."""
        return self.base_dir / "logs" / f"{self._next():03d}-{label}.log"

    # ------------------------------------------------------------ users and groups

    def add_group(self, prefix: str = "isvg") -> str:
        """Create a system group with a unique name; deleted at exit."""
        name = self._unique_name(prefix)
        self._record("groups", name)
        self._groups.append(name)
        accounts.create_group(name)
        return name

    def add_user(self, prefix: str = "isvu", *, groups: Sequence[str] = ()) -> User:
        """Create a system user (own group, no login shell, home under ``base_dir``)."""
        name = self._unique_name(prefix)
        home = self.base_dir / "home" / name
        self._record("users", name)
        user = accounts.create_user(name, home=home, comment=f"iservice test lab {self.tag}",
                                    groups=groups)
        self._users.append(user)
        home.mkdir()
        os.chown(home, user.uid, user.gid)
        home.chmod(0o700)
        return user

    def _unique_name(self, prefix: str) -> str:
        return accounts.check_name(f"{prefix}-{self.tag}-{self._next()}", prefix)

    # ------------------------------------------------------------ command wrappers

    @staticmethod
    def _as_user(argv: Sequence[str], user: User | None,
                 env: Mapping[str, str] | None) -> list[str]:
        return accounts.as_user(argv, user, env)

    def ns_cmd(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def client_cmd(self, argv: Sequence[str], *, user: User | None = None,
                   env: Mapping[str, str] | None = None) -> list[str]:
        """argv run in the client namespace; as ``user`` (setpriv, clean env) if given."""
        return self.ns_cmd(self.client_ns, self._as_user(argv, user, env))

    def service_cmd(self, argv: Sequence[str], *, user: User | None = None,
                    env: Mapping[str, str] | None = None) -> list[str]:
        """argv run in the client namespace in a private mount namespace where /dev/net/tun
        is a 0666 node (the host's node is not touched); as ``user`` if given."""
        binds = [x for src, dst in self.service_binds
                 for x in ("sh", str(BIND), str(src), dst)]
        wrapped = ["unshare", "--mount", "--propagation", "private", *binds,
                   "sh", str(SERVICE_WRAPPER), str(self.tun_node), self.cgroup_name,
                   *self._as_user(argv, user, env)]
        if self.service_prefix is not None:
            return [*self.service_prefix, *wrapped]
        return self.ns_cmd(self.client_ns, wrapped)

    def run_client(self, argv: Sequence[str], *, user: User | None = None, timeout: float = 30,
                   check: bool = False, input: str | None = None,
                   env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.client_cmd(argv, user=user, env=env), check=check, timeout=timeout,
                   input=input)

    def run_service(self, argv: Sequence[str], *, user: User | None = None, timeout: float = 30,
                    check: bool = False, input: str | None = None,
                    env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.service_cmd(argv, user=user, env=env), check=check, timeout=timeout,
                   input=input)

    def popen(self, cmd: Sequence[str], *, label: str, stdout_path: Path | None = None,
              **kw: Any) -> LabProcess:
        """Start a fully wrapped command, tracked (ended by PID at exit). Unless given,
        stdin is /dev/null and stdout/stderr go to files under ``base_dir/logs``
        (stdout to ``stdout_path`` if given)."""
        err_path = None
        files: list[IO[bytes]] = []
        if "stdout" not in kw:
            stdout_path = stdout_path or self.log_path(f"{label}.out")
            kw["stdout"] = open(stdout_path, "wb")  # noqa: SIM115 (closed below)
            files.append(kw["stdout"])
        else:
            stdout_path = None
        if "stderr" not in kw:
            err_path = self.log_path(f"{label}.err")
            kw["stderr"] = open(err_path, "wb")  # noqa: SIM115
            files.append(kw["stderr"])
        kw.setdefault("stdin", subprocess.DEVNULL)
        try:
            proc = LabProcess(list(cmd), **kw)
        finally:
            for fh in files:
                fh.close()
        proc.label, proc.stdout_path, proc.stderr_path = label, stdout_path, err_path
        self._procs.append(proc)
        return proc

    def popen_client(self, argv: Sequence[str], *, user: User | None = None,
                     env: Mapping[str, str] | None = None, label: str = "client",
                     **kw: Any) -> LabProcess:
        return self.popen(self.client_cmd(argv, user=user, env=env), label=label, **kw)

    def popen_service(self, argv: Sequence[str], *, user: User | None = None,
                      env: Mapping[str, str] | None = None, label: str = "service",
                      **kw: Any) -> LabProcess:
        return self.popen(self.service_cmd(argv, user=user, env=env), label=label, **kw)

    def processes(self) -> list[int]:
        """PIDs of tracked processes still running."""
        return [p.pid for p in self._procs if p.poll() is None]


def _delete_ns(ns: str) -> None:
    if ns in run(["ip", "netns", "list"]).stdout.split():
        run(["ip", "netns", "delete", ns])
