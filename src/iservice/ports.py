"""The platform's ports: what a backend (``linux/`` today, a Windows folder next to it
tomorrow) has to implement, as ``typing.Protocol``s.

The core — the monitor and its effect modules, the session and its pipeline, the
server — reaches the operating system only through a ``Platform`` built by
``iservice.platform`` (the one module that imports a backend).  A backend provides:

* ``NetworkOps``: links, addresses, routes, neighbours, policy rules, by index
  (Linux: ``linux.netlink.Rtnl``, rtnetlink);
* ``TunPort``: a persistent tun owned by the user, marked before it persists
  (``linux.tun``);
* ``ProcessGroups``: a group of processes per session, ended whole (``linux.cgroup``,
  cgroup v2);
* ``FirewallPort``: the kill switch and a user's DNS redirect, one table per session
  (``linux.firewall``, nftables);
* ``DnsPort``: the machine's resolver per link, undone from its record (``linux.dns``:
  systemd-resolved, openresolv, a file);
* ``LauncherPort``: openvpn started as the user, in the session's group, watched
  (``linux.launch``: iservice-runas, pidfd);
* ``IdentityPort``: who is asking, and file checks made with their rights
  (``linux.identity``: SO_PEERCRED, setfsuid);
* ``ChannelPort``: the session channel, many messages per call (``linux.channel``:
  SOCK_SEQPACKET, recvmmsg/sendmmsg).

Values that cross a port are platform-neutral: ``iservice.net`` (routes, links),
``UserIdentity``/``PeerCredentials`` below, ``ipaddress`` objects, ints.  Errors are
``OSError``s (the errno is what an ack carries); a backend that fails as a whole (nft,
a resolver) raises ``errors.BackendError``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from iservice.net import IPAddress, LinkInfo, Route, RouteSpec
from iservice.policy.dns import LinkDns

T = TypeVar("T")


@dataclass(frozen=True)
class PeerCredentials:
    """Who is on the other end of a connection (the pipe client's token on Windows)."""
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class UserIdentity:
    uid: int
    gid: int
    name: str
    home: str
    groups: tuple[int, ...]  # supplementary groups, primary gid included


class NetworkOps(Protocol):
    """One kernel routing client; used from one thread (the monitor's)."""

    def close(self) -> None: ...
    def link_index(self, name: str) -> int | None: ...
    def link_info(self, ifindex: int) -> LinkInfo: ...
    def link_list(self) -> list[LinkInfo]: ...
    def link_set(self, ifindex: int, *, up: bool | None = None, mtu: int | None = None,
                 alias: str | None = None) -> None: ...
    def link_del(self, ifindex: int) -> None: ...
    def addr_add(self, ifindex: int, address: IPAddress, prefix_len: int, *,
                 peer: IPAddress | None = None, noprefixroute: bool = False) -> None: ...
    def addr_del(self, ifindex: int, address: IPAddress, prefix_len: int, *,
                 peer: IPAddress | None = None) -> None: ...
    def routes_apply(self, ops: Sequence[tuple[bool, Route | RouteSpec]]) -> list[int]: ...
    # routes_apply of RouteSpec(network(values[i], plens[i]), oif, None, None, table) adds,
    # from plain values (a session's thousands of routes through its tun)
    def tun_routes_add(self, oif: int, table: int, version: int, values: Sequence[int],
                       plens: Sequence[int]) -> list[int]: ...
    def default_route(self, family: int) -> Route | None: ...
    def neigh_flush(self, ifindex: int, family: int) -> int: ...
    def rule_add(self, family: int, priority: int, uid: int | None, table: int,
                 suppress: int | None = None, fwmark: int | None = None) -> None: ...
    def rule_del(self, family: int, priority: int, uid: int | None, table: int,
                 suppress: int | None = None, fwmark: int | None = None) -> None: ...
    def rule_del_ours(self, family: int, priority: int, table: int | None) -> None: ...
    def rule_list(self, family: int) -> list[tuple[int, int | None, int | None, int]]: ...
    def routes_of_protocol(self, family: int, protocol: int = ...) -> list[Route]: ...


class TunPort(Protocol):
    def check_tun_name(self, name: str) -> str: ...
    def create_tun(self, name: str, uid: int, gid: int, *, netns_path: str | None = None,
                   mark: Callable[[int], None] | None = None) -> int: ...
    def route_localnet(self, name: str) -> None: ...


class ProcessGroups(Protocol):
    """A group per session that every process of it is in before it runs as the user."""

    @property
    def base(self) -> str: ...  # where the groups are (for the log)

    def path_for(self, session_id: int) -> str: ...
    def owns(self, path: str) -> bool: ...
    def sessions(self) -> list[str]: ...
    def create(self, path: str) -> None: ...
    def open_dir(self, path: str) -> int: ...  # for the launcher's ``cgroup_fd``
    def remove_base(self) -> None: ...  # at stop, if no session's group is left
    def kill(self, path: str) -> bool: ...
    def remove(self, path: str, *, timeout: float = ...) -> None: ...


class FirewallPort(Protocol):
    TABLE_ATTEMPTS: int
    MARK_PREFIX: str

    def table_name(self, session_id: int, k: int = 0) -> str: ...
    def dns_redirect_table_name(self, session_id: int, k: int = 0) -> str: ...
    def create_table(self, name: str, flags: int, servers: Any, *,
                     scope_uid: int | None = None, unscoped: int = 0,
                     mark: str = "") -> None: ...
    def replace_table(self, name: str, flags: int, servers: Any, *,
                      scope_uid: int | None = None, unscoped: int = 0,
                      mark: str = "") -> None: ...
    def delete_table(self, name: str) -> None: ...
    def create_dns_redirect(self, name: str, uid: int, tun: str, server4: str | None,
                            server6: str | None, mark: int, table_mark: str = "") -> None: ...
    def replace_dns_redirect(self, name: str, uid: int, tun: str, server4: str | None,
                             server6: str | None, mark: int, table_mark: str = "") -> None: ...
    def tables(self) -> list[str]: ...
    def table_mark(self, name: str) -> str | None: ...


class DnsBackend(Protocol):
    name: str

    def undo_data(self, session_id: int, ifindex: int, ifname: str) -> dict[str, Any]: ...
    def apply(self, session_id: int, ifindex: int, ifname: str, link: LinkDns,
              change_id: int) -> None: ...
    def revert(self, session_id: int, data: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


UpdateRecord = Callable[[int, dict[str, Any]], None]


class DnsPort(Protocol):
    def make_backend(self, name: str, *, resolv_conf: str, resolvconf_exe: str | None,
                     update_record: UpdateRecord) -> DnsBackend: ...
    def backend_for(self, data: dict[str, Any], update_record: UpdateRecord) -> DnsBackend: ...


class Child(Protocol):
    """openvpn as the launcher started it."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def signal(self, sig: int) -> None: ...
    def close(self) -> None: ...


class LauncherPort(Protocol):
    def service_options(self, hook_kind: str, hook_path: str, tun: str,
                        channel_fd: int) -> list[str]: ...
    def start_openvpn(self, exe: str, argv: Sequence[str], *, user: UserIdentity,
                      workdir: str, nice: int, stdin: bytes, channel_fd: int, output_fd: int,
                      extra_fds: Sequence[int] = (), cgroup_fd: int | None = None) -> Any: ...
    def process_start_time(self, pid: int) -> int | None: ...
    def kill_if_same(self, pid: int, start_time: int) -> bool: ...
    def spawner_name(self) -> str: ...


class IdentityPort(Protocol):
    def peer_credentials(self, sock: socket.socket) -> PeerCredentials: ...
    def user_identity(self, uid: int, gid: int) -> UserIdentity: ...
    def is_admin(self, user: UserIdentity, admin_group: str) -> bool: ...
    async def as_fs_user(self, user: UserIdentity, fn: Callable[[], T], *,
                         timeout: float | None = None) -> T: ...
    def run_as_fs_user(self, user: UserIdentity, fn: Callable[[], T]) -> T: ...


class BatchReader(Protocol):
    def read(self) -> list[tuple[int, bytes]]: ...


class BatchSender(Protocol):
    def send(self, data: bytes | bytearray) -> int: ...


class ChannelPort(Protocol):
    def channel_pair(self) -> tuple[socket.socket, socket.socket]: ...
    def reader(self, sock: socket.socket, size: int) -> BatchReader: ...
    def sender(self, sock: socket.socket, size: int) -> BatchSender: ...


@dataclass(frozen=True)
class Hook:
    """How openvpn sends its requests: the plugin (``--plugin path FD``) or the script."""
    kind: str  # "plugin" | "script"
    path: str


@dataclass(frozen=True)
class Platform:
    """Everything the core needs of the operating system (module docstring)."""
    name: str
    network: Callable[[], NetworkOps]  # a new kernel routing client
    tuns: TunPort
    process_groups: Callable[[str], ProcessGroups]  # for a state directory
    firewall: FirewallPort
    dns: DnsPort
    launcher: LauncherPort
    identity: IdentityPort
    channel: ChannelPort
