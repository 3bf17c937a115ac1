"""A throw-away network lab for iservice's integration tests and demo (stdlib only).

``Lab`` builds two network namespaces joined by a veth pair, a real openvpn server in the
"server" namespace, lab users and groups, and the wrappers that run commands in the "client"
namespace: as root, as a lab user, or inside the *service wrapper* (a private mount namespace
where ``/dev/net/tun`` is a 0666 node, because the host's node is 0600; see SPEC §9).
Everything it creates is removed in ``close()`` / ``__exit__``, also after errors: processes
are ended by their own PID (SIGTERM, wait, SIGKILL), then namespaces, users, groups and files.

Topology (all addresses exist only inside the two namespaces)::

    client ns                                server ns
    lab-c 198.18.0.2/24       ──veth──       lab-s 198.18.0.1/24
          2001:db8:18::2/64                        2001:db8:18::1/64
    default via 198.18.0.1                   lo:   192.0.2.1          VPN remote (clients connect)
            and 2001:db8:18::1                     203.0.113.1        "outside" (no VPN needed)
                                                   2001:db8:113::1    "outside" IPv6
                                                   10.9.0.1           pushed net 10.9.0.0/16
                                                   fd00:9::1          pushed net fd00:9::/64
                                             tunN: 10.8.0.1, fd00:8::1 (openvpn server)

The server drops anything for 10.0.0.0/8 and fd00::/8 that arrives on the veth, so the
tunnel and pushed addresses answer only through the VPN: a ping to them proves the tunnel.
The VPN remote (192.0.2.1) sits behind the client's default gateway, not on the veth subnet,
so a full tunnel without a bypass route really breaks the connection.

Usage::

    pki = Pki.create(Path(tempfile.mkdtemp()))
    with Lab(pki) as lab:
        lab.start_server('push "route 10.9.0.0 255.255.0.0"')
        cfg = lab.write_client_config()
        vpn = lab.start_client(cfg)            # root openvpn in the client ns
        assert lab.ping("10.9.0.1")
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger("iservice.lab")

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"
TUN_DEVICE = Path("/dev/net/tun")
TUN_MAJOR, TUN_MINOR = 10, 200
INIT_DONE = "Initialization Sequence Completed"
MANIFEST = "lab.json"  # in base_dir: what the lab created, for ``Lab.sweep_stale``
# PATH given to commands run as a lab user (they get a clean environment).
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
REQUIRED_TOOLS = ("ip", "openvpn", "openssl", "setpriv", "unshare", "nft", "ping", "mount",
                  "useradd", "userdel", "groupadd", "groupdel")


class LabError(RuntimeError):
    """A lab step failed; the message says which command and what it printed."""


# --------------------------------------------------------------------------- helpers


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


def _pids_of_uids(uids: Iterable[int]) -> list[int]:
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


def _remove_cgroup(name: str) -> None:
    """End every process of the lab's cgroup (the services' sessions included) and remove
    it; in a private mount namespace with its own cgroup2 mount (the host may have none)."""
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _CGROUP_CLEANUP,
         "lab-cgroup-cleanup", name], check=True)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # a zombie is dead for our purposes (its parent will reap it)
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_pids(pids: Iterable[int], *, why: str, grace: float = 2.0) -> None:
    """SIGTERM each PID, wait up to ``grace`` s, then SIGKILL what is left (by PID)."""
    pids = [p for p in pids if p != os.getpid()]
    for pid in pids:
        log.warning("lab cleanup: ending pid %d (%s)", pid, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _pid_alive(pid):
            log.warning("lab cleanup: pid %d survived SIGTERM, sending SIGKILL", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


# --------------------------------------------------------------------------- PKI

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Pki:
    """A throw-away CA with a server and a client certificate (EC P-256), made with openssl."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    tls_crypt: Path | None

    @classmethod
    def create(cls, directory: Path, *, tls_crypt: bool = True, days: int = 7) -> Pki:
        """Generate the PKI in ``directory`` (created if missing; keys are mode 0600)."""
        directory.mkdir(parents=True, exist_ok=True)
        cnf = directory / "openssl.cnf"
        cnf.write_text(_OPENSSL_CNF)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        _genkey(ca_key)
        run(["openssl", "req", "-config", str(cnf), "-new", "-x509", "-key", str(ca_key),
             "-subj", "/CN=iservice lab CA", "-days", str(days), "-extensions", "ca",
             "-out", str(ca)])
        pki = cls(directory=directory, ca=ca, ca_key=ca_key,
                  server_cert=directory / "server.crt", server_key=directory / "server.key",
                  client_cert=directory / "client.crt", client_key=directory / "client.key",
                  tls_crypt=directory / "tls-crypt.key" if tls_crypt else None)
        pki._issue("server", "server", pki.server_cert, pki.server_key, days=days, serial=2)
        pki._issue("client", "client", pki.client_cert, pki.client_key, days=days, serial=3)
        if pki.tls_crypt is not None:
            run([OPENVPN, "--genkey", "tls-crypt", str(pki.tls_crypt)])
            pki.tls_crypt.chmod(0o600)
        return pki

    def issue_client(self, common_name: str, *, days: int = 7) -> tuple[Path, Path]:
        """Issue one more client certificate; returns (cert, key) paths."""
        cert = self.directory / f"{common_name}.crt"
        key = self.directory / f"{common_name}.key"
        self._issue("client", common_name, cert, key, days=days,
                    serial=secrets.randbits(63) | 1 << 62)
        return cert, key

    def _issue(self, kind: str, cn: str, cert: Path, key: Path, *, days: int, serial: int) -> None:
        cnf = self.directory / "openssl.cnf"
        csr = cert.with_suffix(".csr")
        _genkey(key)
        run(["openssl", "req", "-config", str(cnf), "-new", "-key", str(key),
             "-subj", f"/CN={cn}", "-out", str(csr)])
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
             "-CAkey", str(self.ca_key), "-set_serial", str(serial), "-days", str(days),
             "-extfile", str(cnf), "-extensions", kind, "-out", str(cert)])
        csr.unlink()

    def inline_client_block(self, cert: Path | None = None, key: Path | None = None) -> str:
        """``<ca>…</ca><cert>…</cert><key>…</key>[<tls-crypt>…</tls-crypt>]`` for a config."""
        parts = [("ca", self.ca), ("cert", cert or self.client_cert),
                 ("key", key or self.client_key)]
        if self.tls_crypt is not None:
            parts.append(("tls-crypt", self.tls_crypt))
        return "".join(f"<{tag}>\n{path.read_text().strip()}\n</{tag}>\n" for tag, path in parts)


def _genkey(path: Path) -> None:
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(path)])
    path.chmod(0o600)


# --------------------------------------------------------------------------- handles


@dataclass(frozen=True)
class User:
    """A lab user (system account, no login shell); removed when the lab closes."""

    name: str
    uid: int
    gid: int
    home: Path
    groups: tuple[str, ...] = ()


class LabProcess(subprocess.Popen[Any]):
    """A ``Popen`` the lab tracks and ends by PID at exit; knows where its output went."""

    label: str
    stdout_path: Path | None
    stderr_path: Path | None

    def output(self) -> str:
        """What the process wrote to its stdout file so far ('' if stdout was not a file)."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path else ""

    def errors(self) -> str:
        """What the process wrote to its stderr file so far."""
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


@dataclass
class OpenVPNHandle:
    """A running openvpn (server or client) whose log goes to ``log_path``."""

    name: str
    proc: LabProcess
    log_path: Path
    config_path: Path | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, needle: str, *, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``needle`` occurs ``count`` times in the log; error with the log tail."""
        deadline = time.monotonic() + timeout
        while self.log().count(needle) < count:
            if self.proc.poll() is not None:
                raise LabError(f"openvpn {self.name!r} exited ({self.proc.returncode}) before "
                               f"{needle!r}; log tail:\n{tail(self.log_path)}\n"
                               f"stderr:\n{self.proc.errors()[-2000:]}")
            if time.monotonic() >= deadline:
                raise LabError(f"openvpn {self.name!r}: no {needle!r} (x{count}) within "
                               f"{timeout:g} s; log tail:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def wait_connected(self, *, count: int = 1, timeout: float = 15.0) -> None:
        self.wait_for(INIT_DONE, count=count, timeout=timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, grace: float = 5.0) -> int:
        return self.proc.end(grace)


@dataclass
class ServerHandle(OpenVPNHandle):
    """The lab's openvpn server (root, server namespace)."""

    port: int = 1194
    proto: str = "udp"
    network: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network("10.8.0.0/24"))
    network6: ipaddress.IPv6Network = field(
        default_factory=lambda: ipaddress.IPv6Network("fd00:8::/64"))

    @property
    def tunnel_addr(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def tunnel_addr6(self) -> str:
        return str(self.network6.network_address + 1)


# --------------------------------------------------------------------------- the lab

# The service wrapper: the 0666 tun node over /dev/net/tun, a cgroup v2 hierarchy
# (`ip netns exec` remounts /sys without one) and the lab's own cgroup, under which the
# service makes its session cgroups (removed with the lab: _CGROUP_CLEANUP).
_SERVICE_WRAPPER = """mount --bind "$1" /dev/net/tun || exit 1
cg=$(awk '/ - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
if [ -z "$cg" ]; then mount -t cgroup2 none /sys/fs/cgroup || exit 1; cg=/sys/fs/cgroup; fi
mkdir -p "$cg/$2" && echo $$ > "$cg/$2/cgroup.procs" || exit 1
shift 2
exec "$@"
"""
_CGROUP_CLEANUP = """mount -t cgroup2 none /sys/fs/cgroup || exit 1
d=/sys/fs/cgroup/$1
[ -d "$d" ] || exit 0
echo 1 > "$d/cgroup.kill"
i=0
while grep -q "populated 1" "$d/cgroup.events" && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
find "$d" -depth -type d -exec rmdir {} +
"""
_BIND = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'


class Lab:
    """Two namespaces, a veth, an openvpn server, lab users; all removed at exit."""

    client_if = "lab-c"
    server_if = "lab-s"
    prefix_len = 24
    server_addr = "198.18.0.1"
    client_addr = "198.18.0.2"
    prefix_len6 = 64
    server_addr6 = "2001:db8:18::1"
    client_addr6 = "2001:db8:18::2"
    # the address the VPN clients connect to: on the server's lo, behind the default gateway
    vpn_remote = "192.0.2.1"
    # reachable from the client without the VPN (full-tunnel / kill-switch tests)
    outside_addr = "203.0.113.1"
    outside_addr6 = "2001:db8:113::1"
    # addresses of "the network behind the VPN" (reachable only through the tunnel)
    pushed_net = "10.9.0.0/16"
    pushed_host = "10.9.0.1"
    pushed_net6 = "fd00:9::/64"
    pushed_host6 = "fd00:9::1"

    def __init__(self, pki: Pki, *, base_dir: Path | None = None, tag: str | None = None) -> None:
        self.pki = pki
        self.tag = tag or secrets.token_hex(3)
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
        self._servers: list[ServerHandle] = []
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

    def __enter__(self) -> Lab:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)

    def open(self) -> None:
        """Create the directories, namespaces, veth, addresses and firewall of the lab."""
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
            self._setup_network()
        except BaseException:
            self.close(raise_errors=False)
            raise

    def _setup_network(self) -> None:
        s, c = self.server_ns, self.client_ns
        for ns in (s, c):
            self._record("namespaces", ns)
            self._namespaces.append(ns)
            run(["ip", "netns", "add", ns])
        # created directly inside the namespaces: no name ever appears in the host namespace
        run(["ip", "-n", s, "link", "add", self.server_if, "type", "veth",
             "peer", "name", self.client_if, "netns", c])
        run(["ip", "-n", s, "-batch", "-"], input=(
            "link set lo up\n"
            f"addr add {self.server_addr}/{self.prefix_len} dev {self.server_if}\n"
            f"addr add {self.server_addr6}/{self.prefix_len6} dev {self.server_if} nodad\n"
            f"link set {self.server_if} up\n"
            f"addr add {self.vpn_remote}/32 dev lo\n"
            f"addr add {self.outside_addr}/32 dev lo\n"
            f"addr add {self.outside_addr6}/128 dev lo\n"
            f"addr add {self.pushed_host}/32 dev lo\n"
            f"addr add {self.pushed_host6}/128 dev lo\n"
        ))
        run(["ip", "-n", c, "-batch", "-"], input=(
            "link set lo up\n"
            f"addr add {self.client_addr}/{self.prefix_len} dev {self.client_if}\n"
            f"addr add {self.client_addr6}/{self.prefix_len6} dev {self.client_if} nodad\n"
            f"link set {self.client_if} up\n"
            f"route add default via {self.server_addr}\n"
            f"route add default via {self.server_addr6}\n"
        ))
        # tunnel-side addresses answer only through the tunnel, never via the veth
        self.ns_run(s, ["nft", "-f", "-"], input=(
            "table inet isv_lab {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f'    iifname "{self.server_if}" ip daddr 10.0.0.0/8 drop\n'
            f'    iifname "{self.server_if}" ip6 daddr fd00::/8 drop\n'
            "  }\n"
            "}\n"
        ))

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
        step("remove the lab's cgroups", partial(_remove_cgroup, self.cgroup_name))
        for ns in reversed(self._namespaces):
            step(f"delete netns {ns}", partial(self._delete_ns, ns))
        self._namespaces.clear()
        for user in reversed(self._users):
            step(f"delete user {user.name}", partial(self._delete_user, user))
        self._users.clear()
        for group in reversed(self._groups):
            step(f"delete group {group}", partial(self._delete_group, group))
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

    def _end(self, proc: LabProcess) -> None:
        try:
            if proc.poll() is None:
                proc.end(grace=5.0)
        finally:
            for fh in (proc.stdin, proc.stdout, proc.stderr):
                if fh is not None:
                    fh.close()

    def _kill_user_processes(self) -> None:
        pids = _pids_of_uids(u.uid for u in self._users)
        if pids:
            _kill_pids(pids, why="still running as a lab user")

    def _kill_namespace_processes(self) -> None:
        for ns in self._namespaces:
            out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            pids = [int(p) for p in out if p.isdigit()]
            if pids:
                _kill_pids(pids, why=f"still running in netns {ns}")

    def _delete_ns(self, ns: str) -> None:
        if ns in run(["ip", "netns", "list"]).stdout.split():
            run(["ip", "netns", "delete", ns])

    def _delete_user(self, user: User) -> None:
        _delete_user(user.name)
        if user.home.exists():
            shutil.rmtree(user.home)

    def _delete_group(self, group: str) -> None:
        _delete_group(group)

    # ------------------------------------------------------------ leftovers of killed runs

    def _record(self, kind: str, name: str) -> None:
        """Note a name in the manifest *before* creating it, so a sweep finds it."""
        self._manifest[kind].append(name)
        self._save_manifest()

    def _save_manifest(self) -> None:
        data = {"tag": self.tag, "pid": os.getpid(), "start": _start_time(os.getpid()),
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
            if pid and _start_time(pid) == start:
                continue  # owner still running
            log.warning("lab sweep: removing leftovers of lab %s (pid %s)", data.get("tag"), pid)
            for ns in data.get("namespaces", []):
                out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
                _kill_pids([int(p) for p in out if p.isdigit()], why=f"stale netns {ns}")
            uids = []
            for name in data.get("users", []):
                with contextlib.suppress(KeyError):
                    uids.append(pwd.getpwnam(name).pw_uid)
            _kill_pids(_pids_of_uids(uids), why="stale lab user")
            _remove_cgroup(f"isv-lab-{data.get('tag')}")
            for ns in data.get("namespaces", []):
                if ns in run(["ip", "netns", "list"]).stdout.split():
                    run(["ip", "netns", "delete", ns], check=False)
            for name in data.get("users", []):
                _delete_user(name)
            for name in data.get("groups", []):
                _delete_group(name)
            shutil.rmtree(manifest.parent, ignore_errors=True)
            swept.append(str(data.get("tag")))
        return swept

    def _check_host_tun(self) -> None:
        now = os.stat(TUN_DEVICE) if TUN_DEVICE.exists() else None
        before = self._host_tun
        if (before is None) != (now is None) or (
            before is not None and now is not None
            and (before.st_mode, before.st_uid, before.st_gid, before.st_rdev)
            != (now.st_mode, now.st_uid, now.st_gid, now.st_rdev)
        ):
            raise LabError(f"host {TUN_DEVICE} changed during the lab: {before} -> {now}")

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
        _retry_locked(["groupadd", "--system", name])
        return name

    def add_user(self, prefix: str = "isvu", *, groups: Sequence[str] = ()) -> User:
        """Create a system user (own group, no login shell, home under ``base_dir``)."""
        name = self._unique_name(prefix)
        home = self.base_dir / "home" / name
        argv = ["useradd", "--system", "--no-create-home", "--home-dir", str(home),
                "--shell", "/usr/sbin/nologin", "--user-group",
                "--comment", f"iservice test lab {self.tag}"]
        if groups:
            argv += ["--groups", ",".join(groups)]
        self._record("users", name)
        _retry_locked([*argv, name])
        pw = pwd.getpwnam(name)
        user = User(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=home, groups=tuple(groups))
        self._users.append(user)
        home.mkdir()
        os.chown(home, user.uid, user.gid)
        home.chmod(0o700)
        return user

    def _unique_name(self, prefix: str) -> str:
        name = f"{prefix}-{self.tag}-{self._next()}"
        if len(name) > 32 or not prefix.replace("-", "").isalnum() or not prefix[:1].isalpha():
            raise ValueError(f"bad user/group name {name!r} (prefix must be short, alphanumeric)")
        return name

    # ------------------------------------------------------------ command wrappers

    def _as_user(self, argv: Sequence[str], user: User | None,
                 env: Mapping[str, str] | None) -> list[str]:
        if user is None:
            return list(argv) if env is None else ["env", *_env_args(env), *argv]
        clean = {"PATH": USER_PATH, "HOME": str(user.home), "USER": user.name,
                 "LOGNAME": user.name, "LANG": "C.UTF-8", **(env or {})}
        return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
                "--", "env", "-i", *_env_args(clean), *argv]

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
                 for x in ("sh", "-c", _BIND, "lab-bind", str(src), dst)]
        wrapped = ["unshare", "--mount", "--propagation", "private", *binds,
                   "sh", "-c", _SERVICE_WRAPPER, "lab-service", str(self.tun_node),
                   self.cgroup_name, *self._as_user(argv, user, env)]
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

    # ------------------------------------------------------------ openvpn

    def start_server(self, extra: str = "", *, port: int = 1194, proto: str = "udp",
                     name: str = "server", network: str = "10.8.0.0/24",
                     network6: str = "fd00:8::/64", timeout: float = 10.0) -> ServerHandle:
        """A real openvpn server as root in the server namespace; returns once it is up."""
        net = ipaddress.IPv4Network(network)
        net6 = ipaddress.IPv6Network(network6)
        if proto not in ("udp", "tcp"):
            raise ValueError(f"proto must be udp or tcp, not {proto!r}")
        p = self.pki
        lines = [
            "mode server", "tls-server", "dev tun", "topology subnet", "disable-dco",
            f"proto {'udp' if proto == 'udp' else 'tcp-server'}", f"port {port}",
            f"server {net.network_address} {net.netmask}", f"server-ipv6 {net6}",
            f"ca {p.ca}", f"cert {p.server_cert}", f"key {p.server_key}", "dh none",
            "keepalive 2 10", "duplicate-cn", "verb 3",
        ]
        if proto == "udp":
            lines.append("multihome")  # answer from the address the client talked to
        if p.tls_crypt is not None:
            lines.append(f"tls-crypt {p.tls_crypt}")
        config = self.write_file(f"servers/{name}.conf", "\n".join(lines) + "\n" + extra + "\n",
                                 mode=0o600)
        log_path = self.log_path(f"openvpn-{name}")
        proc = self.popen(self.ns_cmd(self.server_ns, [OPENVPN, "--config", str(config)]),
                          label=f"openvpn-{name}", stdout_path=log_path,
                          stderr=subprocess.STDOUT)
        handle = ServerHandle(name=name, proc=proc, log_path=log_path, config_path=config,
                              port=port, proto=proto, network=net, network6=net6)
        self._servers.append(handle)
        handle.wait_connected(timeout=timeout)
        return handle

    def client_config_text(self, extra: str = "", *, port: int = 1194, proto: str = "udp",
                           remote: str | None = None) -> str:
        proto = {"udp": "udp", "tcp": "tcp-client"}.get(proto, proto)
        return (
            "client\ndev tun\nnobind\n"
            f"remote {remote or self.vpn_remote} {port} {proto}\n"
            "remote-cert-tls server\nconnect-retry 1 2\nverb 3\n"
            + self.pki.inline_client_block() + extra + "\n"
        )

    def write_client_config(self, name: str = "approved.ovpn", extra: str = "", *,
                            port: int = 1194, proto: str = "udp",
                            remote: str | None = None) -> Path:
        """An approved client config in ``config_dir`` (root-owned, 0644, PKI inline)."""
        return self.write_file(f"{self.config_dir.name}/{name}",
                               self.client_config_text(extra, port=port, proto=proto,
                                                       remote=remote))

    def start_client(self, config: Path, *args: str, user: User | None = None,
                     service_ns: bool = False, wait: bool = True, timeout: float = 15.0,
                     name: str = "client", **kw: Any) -> OpenVPNHandle:
        """Run ``openvpn --config config *args`` in the client namespace (as root, or as
        ``user``; inside the service wrapper if ``service_ns``); log = its stdout."""
        argv = [OPENVPN, "--config", str(config), *args]
        cmd = (self.service_cmd if service_ns else self.client_cmd)(argv, user=user)
        log_path = self.log_path(f"openvpn-{name}")
        proc = self.popen(cmd, label=f"openvpn-{name}", stdout_path=log_path, **kw)
        handle = OpenVPNHandle(name=name, proc=proc, log_path=log_path, config_path=config)
        if wait:
            handle.wait_connected(timeout=timeout)
        return handle

    def auth_server_lines(self, credentials: Mapping[str, str], *, otp: str | None = None,
                          challenge: str | None = None, name: str = "auth-verify") -> str:
        """Server config lines that require a username/password (``auth-user-pass-verify``
        with a root-only test script, ``via-file``). With ``otp`` the password must be a
        static-challenge answer (``SCRV1:b64(password):b64(otp)``) carrying that OTP.
        With ``challenge`` a right password is answered with a dynamic challenge (``CRV1``,
        via ``auth_failed_reason_file``) whose expected answer is ``challenge``.
        Every attempt is appended to ``<script>.attempts`` as ``user ok|bad|challenged``."""
        script = self.write_file(f"servers/{name}.py", _AUTH_SCRIPT.format(
            creds=repr(dict(credentials)), otp=repr(otp), challenge=repr(challenge),
            attempts=repr(str(self.base_dir / "servers" / f"{name}.attempts"))),
            mode=0o700)
        return (f"script-security 2\nauth-user-pass-verify {script} via-file\n"
                "verify-client-cert require\n")

    def start_dns_server(self, answer: str, *, name: str = "dns",
                         addresses: Sequence[str] = ()) -> LabProcess:
        """A tiny DNS responder (UDP and TCP port 53) in the server namespace, on
        ``addresses`` (default: the pushed and the outside addresses, so it answers both
        through the tunnel and without it, each from the address asked): every A query is
        answered with ``answer``, AAAA with no record; each query is printed as
        ``query NAME from ADDR`` to its output file."""
        script = self.write_file(f"servers/{name}.py", _DNS_RESPONDER, mode=0o700)
        addrs = list(addresses) or [self.pushed_host, self.outside_addr, self.pushed_host6,
                                    self.outside_addr6]
        proc = self.popen(self.ns_cmd(self.server_ns, [sys.executable, "-u", str(script),
                                                       answer, *addrs]), label=name)
        wait_until(lambda: "ready" in proc.output() or proc.poll() is not None, timeout=10,
                   what="the DNS responder")
        if proc.poll() is not None:
            raise LabError(f"DNS responder exited: {tail(proc.stderr_path or Path())}")
        return proc

    def dns_query(self, server: str, qname: str, *, tcp: bool = False,
                  timeout: float = 1.0, ns: str | None = None,
                  user: User | None = None) -> str | None:
        """Ask ``server`` (port 53) for ``qname``'s A record from the client namespace
        (as ``user`` if given); the address answered, or None (no answer, refused,
        unreachable, timeout)."""
        cp = run(self.ns_cmd(ns or self.client_ns, self._as_user([
            sys.executable, "-I", "-c", _DNS_QUERY, server, qname, "tcp" if tcp else "udp",
            str(timeout)], user, None)), check=False, timeout=timeout + 10)
        out = cp.stdout.strip()
        return out or None

    def add_tun(self, name: str, user: User) -> str:
        """A persistent tun in the client namespace owned by ``user`` (gone with the netns)."""
        if len(name) > 15:
            raise ValueError(f"interface name too long: {name!r}")
        self.run_service(["ip", "tuntap", "add", "dev", name, "mode", "tun",
                          "user", str(user.uid), "group", str(user.gid)], check=True)
        return name

    def write_env_dump_hook(self, name: str, out_dir: Path, *, fd: int | None = None) -> Path:
        """An openvpn hook (bash, 0755, executable by anyone) that writes, per call,
        ``out_dir/NNN-<script_type>.env``: ``LAB_UID``, ``LAB_ARGS``, ``LAB_FDS`` then its
        whole environment. With ``fd`` it also writes ``<script_type>\\n`` to that inherited
        descriptor and records ``LAB_FD_WRITE=ok|closed``. ``out_dir`` must be writable by
        the user openvpn runs as."""
        fd_part = ""
        if fd is not None:
            fd_part = (
                f"if {{ true >&{fd}; }} 2>/dev/null; then\n"
                f'  echo "$script_type" >&{fd} && echo LAB_FD_WRITE=ok >> "$f"\n'
                "else\n"
                '  echo LAB_FD_WRITE=closed >> "$f"\n'
                "fi\n"
            )
        script = (
            "#!/bin/bash\n"
            "# iservice lab: dump the hook environment (scripts get no PATH: absolute paths)\n"
            f"out={shlex.quote(str(out_dir))}\n"
            'n=$(/bin/ls -1 "$out" | /usr/bin/wc -l)\n'
            "f=$(printf '%s/%03d-%s.env' \"$out\" \"$n\" \"${script_type:-unknown}\")\n"
            "{\n"
            '  echo "LAB_UID=$(/usr/bin/id -u)"\n'
            '  echo "LAB_ARGS=$*"\n'
            "  echo \"LAB_FDS=$(/bin/ls /proc/$$/fd | /usr/bin/tr '\\n' ' ')\"\n"
            "  /usr/bin/env\n"
            '} > "$f"\n'
            + fd_part + "exit 0\n"
        )
        return self.write_file(name, script, mode=0o755)

    @staticmethod
    def read_env_dumps(out_dir: Path) -> list[dict[str, str]]:
        """The environments recorded by ``write_env_dump_hook``, in call order."""
        return [parse_env_dump(p.read_text()) for p in sorted(out_dir.glob("*.env"))]

    # ------------------------------------------------------------ inspection

    def ns_run(self, ns: str, argv: Sequence[str], *, check: bool = True,
               input: str | None = None, timeout: float = 30) -> str:
        """Run argv as root in namespace ``ns``; returns stdout."""
        return run(self.ns_cmd(ns, argv), check=check, input=input, timeout=timeout).stdout

    def ping(self, addr: str, *, count: int = 1, timeout: float = 2, ns: str | None = None,
             user: User | None = None) -> bool:
        """True if ``addr`` answers a ping from the client namespace (or ``ns``)."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", f"{timeout:g}"]
        if count > 1:
            argv += ["-i", "0.2"]
        cmd = self._as_user([*argv, addr], user, None)
        cp = run(self.ns_cmd(ns or self.client_ns, cmd), check=False,
                 timeout=timeout * count + 10)
        return cp.returncode == 0

    def _json(self, ns: str | None, argv: Sequence[str]) -> Any:
        out = self.ns_run(ns or self.client_ns, ["ip", "-j", *argv])
        return json.loads(out) if out.strip() else []

    def links(self, ns: str | None = None) -> list[dict[str, Any]]:
        """``ip -j link`` (client namespace unless ``ns``)."""
        result: list[dict[str, Any]] = self._json(ns, ["link", "show"])
        return result

    def link(self, ifname: str, ns: str | None = None) -> dict[str, Any] | None:
        return next((x for x in self.links(ns) if x.get("ifname") == ifname), None)

    def routes(self, family: int = 4, *, ns: str | None = None,
               table: str = "main") -> list[dict[str, Any]]:
        """``ip -j -4|-6 route show table T`` (client namespace unless ``ns``)."""
        result: list[dict[str, Any]] = self._json(ns, [f"-{family}", "route", "show",
                                                       "table", table])
        return result

    def route_get(self, addr: str, ns: str | None = None) -> dict[str, Any]:
        """``ip -j route get addr``: which route the kernel would use."""
        result: list[dict[str, Any]] = self._json(ns, ["route", "get", addr])
        return result[0]

    def addrs(self, ifname: str, ns: str | None = None) -> list[dict[str, Any]]:
        """The ``addr_info`` entries of ``ifname``."""
        result: list[dict[str, Any]] = self._json(ns, ["addr", "show", "dev", ifname])
        return result[0].get("addr_info", []) if result else []

    def processes(self) -> list[int]:
        """PIDs of tracked processes still running."""
        return [p.pid for p in self._procs if p.poll() is None]


_DNS_RESPONDER = r'''
import socket, struct, sys, threading
ANSWER = socket.inet_aton(sys.argv[1])

def reply(q, src):
    tid, flags, qd = struct.unpack_from("!HHH", q)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
        i += 1 + q[i]
    qtype, = struct.unpack_from("!H", q, i + 1)
    question = q[12:i + 5]
    print(f"query {'.'.join(labels)} from {src}", flush=True)
    an = b""
    if qtype == 1:
        an = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + ANSWER
    head = struct.pack("!HHHHHH", tid, 0x8180 | (flags & 0x0100), 1, 1 if an else 0, 0, 0)
    return head + question + an

def udp(s):
    while True:
        q, addr = s.recvfrom(4096)
        try:
            s.sendto(reply(q, addr[0]), addr)
        except Exception as exc:
            print("bad query", exc, flush=True)

def tcp_conn(c, addr):
    with c:
        n, = struct.unpack("!H", c.recv(2))
        q = b""
        while len(q) < n:
            q += c.recv(n - len(q))
        r = reply(q, addr[0])
        c.sendall(struct.pack("!H", len(r)) + r)

def tcp(s):
    while True:
        c, addr = s.accept()
        threading.Thread(target=tcp_conn, args=(c, addr), daemon=True).start()

for addr in sys.argv[2:]:  # one socket per address: replies come from the address asked
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    u = socket.socket(fam, socket.SOCK_DGRAM)
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind((addr, 53))
    t.bind((addr, 53))
    t.listen(16)
    threading.Thread(target=udp, args=(u,), daemon=True).start()
    threading.Thread(target=tcp, args=(t,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
'''

_DNS_QUERY = r'''
import socket, struct, sys
server, name, proto, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q += struct.pack("!HH", 1, 1)
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
try:
    if proto == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(q, (server, 53))
        r = s.recv(4096)
    else:
        s = socket.create_connection((server, 53), timeout=timeout)
        s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2))[0]
        r = b""
        while len(r) < n:
            r += s.recv(n - len(r))
except OSError:
    sys.exit(1)
if struct.unpack_from("!H", r, 6)[0]:
    print(socket.inet_ntoa(r[-4:]))
'''


_AUTH_SCRIPT = """#!/usr/bin/python3
# iservice lab: openvpn auth-user-pass-verify (via-file): line 1 user, line 2 password
import base64, os, sys
CREDS = {creds}
OTP = {otp}
CHALLENGE = {challenge}
with open(sys.argv[1]) as f:
    user, password = (f.read().split("\\n") + ["", ""])[:2]
otp = None
if password.startswith("CRV1::"):  # the answer to our dynamic challenge
    parts = password.split(":", 4)
    ok = CHALLENGE is not None and parts[2] == "st8" and parts[4] == CHALLENGE
    with open({attempts}, "a") as f:
        f.write(user + (" ok" if ok else " bad") + "\\n")
    sys.exit(0 if ok else 1)
if CHALLENGE is not None and CREDS.get(user) == password:
    with open(os.environ["auth_failed_reason_file"], "w") as f:
        f.write("CRV1:R:st8:" + base64.b64encode(user.encode()).decode()
                + ":Enter the code from your token")
    with open({attempts}, "a") as f:
        f.write(user + " challenged\\n")
    sys.exit(1)
if password.startswith("SCRV1:"):
    _, p64, r64 = (password.split(":") + ["", ""])[:3]
    password = base64.b64decode(p64).decode()
    otp = base64.b64decode(r64).decode()
ok = CREDS.get(user) == password and (OTP is None or otp == OTP)
with open({attempts}, "a") as f:
    f.write(user + (" ok" if ok else " bad") + "\\n")
sys.exit(0 if ok else 1)
"""


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` (from /proc), to tell a live owner from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _delete_user(name: str) -> None:
    """userdel (if the user exists) and its own group if userdel left it."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        pass
    else:
        _retry_locked(["userdel", name])
    _delete_group(name)


def _delete_group(name: str) -> None:
    if run(["getent", "group", name], check=False).returncode == 0:
        _retry_locked(["groupdel", name])


def _env_args(env: Mapping[str, str]) -> list[str]:
    for key in env:
        if not key or "=" in key:
            raise ValueError(f"bad environment variable name {key!r}")
    return [f"{k}={v}" for k, v in env.items()]


def _retry_locked(argv: Sequence[str], attempts: int = 20) -> None:
    """Run a shadow-utils command, retrying while another process holds the passwd lock."""
    for i in range(attempts):
        cp = run(argv, check=False)
        if cp.returncode == 0:
            return
        if "lock" not in cp.stderr.lower() or i == attempts - 1:
            raise LabError(f"{' '.join(argv)} failed (exit {cp.returncode}): {cp.stderr.strip()}")
        time.sleep(0.1 + secrets.randbelow(100) / 1000)
