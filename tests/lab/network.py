"""The lab's network: two namespaces joined by a veth, their addresses and the
server's firewall, a DNS responder, and the inspection helpers tests assert with.

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
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.lab.accounts import User
from tests.lab.core import FILES, LabCore
from tests.lab.procs import LabError, LabProcess, run, tail, wait_until

DNS_RESPONDER = FILES / "dns_responder.py"
DNS_QUERY = FILES / "dns_query.py"


class NetworkLab(LabCore):
    """``LabCore`` plus the two namespaces, the veth and what tests look at."""

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

    def _setup(self) -> None:
        s, c = self.server_ns, self.client_ns
        for ns in (s, c):
            self.add_namespace(ns)
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

    # ------------------------------------------------------------ servers in the lab

    def start_dns_server(self, answer: str, *, name: str = "dns",
                         addresses: Sequence[str] = ()) -> LabProcess:
        """A tiny DNS responder (UDP and TCP port 53) in the server namespace, on
        ``addresses`` (default: the pushed and the outside addresses, so it answers both
        through the tunnel and without it, each from the address asked): every A query is
        answered with ``answer``, AAAA with no record; each query is printed as
        ``query NAME from ADDR`` to its output file."""
        addrs = list(addresses) or [self.pushed_host, self.outside_addr, self.pushed_host6,
                                    self.outside_addr6]
        proc = self.popen(self.ns_cmd(self.server_ns, [sys.executable, "-u", "-I",
                                                       str(DNS_RESPONDER), answer, *addrs]),
                          label=name)
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
            sys.executable, "-I", "-c", DNS_QUERY.read_text(), server, qname,
            "tcp" if tcp else "udp", str(timeout)], user, None)), check=False,
            timeout=timeout + 10)
        out = cp.stdout.strip()
        return out or None

    def add_tun(self, name: str, user: User) -> str:
        """A persistent tun in the client namespace owned by ``user`` (gone with the netns)."""
        if len(name) > 15:
            raise ValueError(f"interface name too long: {name!r}")
        self.run_service(["ip", "tuntap", "add", "dev", name, "mode", "tun",
                          "user", str(user.uid), "group", str(user.gid)], check=True)
        return name

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
