"""openvpn in the lab: handles on running servers and clients, their configurations,
and the hook and authentication scripts tests give them."""

from __future__ import annotations

import ipaddress
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.accounts import User
from tests.lab.core import FILES
from tests.lab.network import NetworkLab
from tests.lab.pki import OPENVPN, Pki
from tests.lab.procs import LabError, LabProcess, parse_env_dump, tail

INIT_DONE = "Initialization Sequence Completed"
AUTH_VERIFY = FILES / "auth_verify.py"
ENV_DUMP_HOOK = FILES / "env_dump_hook.sh"


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
                               f"stderr:\n{self.proc.error_text()[-2000:]}")
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


class OpenVpnLab(NetworkLab):
    """``NetworkLab`` plus openvpn servers (server namespace) and clients."""

    def __init__(self, pki: Pki, *, base_dir: Path | None = None, tag: str | None = None) -> None:
        super().__init__(base_dir=base_dir, tag=tag)
        self.pki = pki
        self._servers: list[ServerHandle] = []

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
        script = self.base_dir / "servers" / f"{name}.py"
        self.write_file(f"servers/{name}.py.json", json.dumps({
            "creds": dict(credentials), "otp": otp, "challenge": challenge,
            "attempts": str(self.base_dir / "servers" / f"{name}.attempts")}), mode=0o600)
        shutil.copyfile(AUTH_VERIFY, script)
        script.chmod(0o700)
        return (f"script-security 2\nauth-user-pass-verify {script} via-file\n"
                "verify-client-cert require\n")

    def write_env_dump_hook(self, name: str, out_dir: Path, *, fd: int | None = None) -> Path:
        """An openvpn hook (bash, 0755, executable by anyone) that writes, per call,
        ``out_dir/NNN-<script_type>.env``: ``LAB_UID``, ``LAB_ARGS``, ``LAB_FDS`` then its
        whole environment. With ``fd`` it also writes ``<script_type>\\n`` to that inherited
        descriptor and records ``LAB_FD_WRITE=ok|closed``. ``out_dir`` must be writable by
        the user openvpn runs as."""
        text = ENV_DUMP_HOOK.read_text().replace("@OUT@", shlex.quote(str(out_dir)), 1) \
            .replace("@FD@", "" if fd is None else str(int(fd)), 1)
        return self.write_file(name, text, mode=0o755)

    @staticmethod
    def read_env_dumps(out_dir: Path) -> list[dict[str, str]]:
        """The environments recorded by ``write_env_dump_hook``, in call order."""
        return [parse_env_dump(p.read_text()) for p in sorted(out_dir.glob("*.env"))]
