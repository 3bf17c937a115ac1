"""The kill switch: one nftables table per session (``inet iservice_<session>``).

``add/del_wfp_block`` of the Windows original become a table of our own with one
``output`` chain (priority ``filter - 10``), written with ``nft -f -`` in one
transaction; undo deletes the table (``nft delete table``), also at the next start
after the service was killed (the table's name is in the journal).  The name is
made from the session id alone; ``create table`` fails if the name is taken (for
example by another service instance in the same network namespace), and then
``iservice_<session>_<k>`` is tried, like the tun names.

Flags (``openvpn-msg.h``): 2 = block DNS (UDP and TCP port 53) on every interface
but the tunnels and loopback; 1 (or 3) = block all traffic that does not leave
through a tunnel, except loopback, the tunnels' own connections, IPv6 neighbour
discovery and DHCP (so the machine keeps its own address).  "A tunnel" is any
``istun*`` device: with two sessions each blocking, every table must let the
other's tunnel through.  "The tunnels' own connections" are packets from a socket
of a session's user to that session's VPN servers (``meta skuid U ip daddr {…}``):
the Windows original permits openvpn.exe by application; openvpn runs as the user
here, and a user can name (through openvpn's output) only holes for its own uid.
Every table lists every live session's servers (the monitor keeps them in step).
Like the original's ALE filters this covers the machine's own traffic (the output
hook), not forwarded traffic.
"""

from __future__ import annotations

import errno
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from iservice.errors import BackendError
from iservice.wire.msg import WFP_BLOCK_DNS, WFP_BLOCK_LOCAL

NFT = "nft"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TABLE_ATTEMPTS = 10
TUNNELS = "istun*"


class NftError(BackendError):
    pass


def table_name(session_id: int, k: int = 0) -> str:
    return f"iservice_{session_id}" + (f"_{k}" if k else "")


def run_nft(script: str) -> None:
    try:
        cp = subprocess.run([NFT, "-f", "-"], input=script.encode(), capture_output=True,
                            timeout=15, env={"PATH": SAFE_PATH}, cwd="/", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(errno.EIO, f"nft: {exc}") from None
    if cp.returncode != 0:
        err = cp.stderr.decode(errors="replace")
        code = errno.EEXIST if "File exists" in err else \
            errno.ENOENT if "No such file" in err else errno.EIO
        raise NftError(code, f"nft: {err.strip()[:400]}")


Servers = Mapping[int, Sequence[str]]  # uid → VPN server addresses of its sessions


def _addresses(addrs: Iterable[str], version: int) -> list[IPv4Address | IPv6Address]:
    parsed: list[IPv4Address | IPv6Address] = []
    for a in addrs:
        addr = ip_address(a)
        if addr.version == version and addr not in parsed:
            parsed.append(addr)
    return parsed


def table_body(name: str, flags: int, servers: Servers, *, scope_uid: int | None = None,
               unscoped: int = 0, mark: str = "") -> str:
    """The table's definition (the ``table inet NAME { … }`` block).

    ``scope_uid``: block only packets from sockets of that user (a non-admin's
    session must not cut other users off); None = the whole machine, as the
    original's WFP filters.  ``unscoped``: flags the administrator forces
    (``block_dns``), which always apply to the whole machine.  Packets without
    a socket (forwarded, kernel replies) are never matched by a scoped rule.
    """
    local_prefix = "" if scope_uid is None else f"meta skuid {int(scope_uid)} "
    dns_prefix = "" if scope_uid is None or unscoped & WFP_BLOCK_DNS else local_prefix
    rules = ['oifname "lo" accept', f'oifname "{TUNNELS}" accept']
    for uid, addrs in sorted(servers.items()):
        for version, match in ((4, "ip"), (6, "ip6")):
            found = _addresses(addrs, version)
            if found:
                rules.append(f"meta skuid {int(uid)} {match} daddr "
                             f"{{ {', '.join(str(a) for a in found)} }} accept")
    rules += [f"{dns_prefix}tcp dport 53 reject with tcp reset",
              f"{dns_prefix}udp dport 53 reject"]
    if flags & WFP_BLOCK_LOCAL:
        rules += [
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
            "udp sport 68 udp dport 67 accept",
            f"{local_prefix}meta l4proto tcp reject with tcp reset",
            f"{local_prefix}reject",
        ]
    body = "\n".join(f"    {r}" for r in rules)
    return (f"table inet {name} {{\n"
            f"{_comment(mark)}"
            "  chain output {\n"
            "    type filter hook output priority filter - 10; policy accept;\n"
            f"{body}\n  }}\n}}\n")


def create_table(name: str, flags: int, servers: Servers, *, scope_uid: int | None = None,
                 unscoped: int = 0, mark: str = "") -> None:
    """Create the table; ``NftError(EEXIST)`` if the name is taken."""
    run_nft(_create(name, mark) + table_body(
        name, flags, servers, scope_uid=scope_uid, unscoped=unscoped, mark=mark))


def replace_table(name: str, flags: int, servers: Servers, *, scope_uid: int | None = None,
                  unscoped: int = 0, mark: str = "") -> None:
    """Replace an existing table's rules and sets in one transaction."""
    run_nft(f"delete table inet {name}\n" + table_body(
        name, flags, servers, scope_uid=scope_uid, unscoped=unscoped, mark=mark))


MARK_PREFIX = "iservice:"
_COMMENT_RE = re.compile(r'^\s*comment "([^"]*)"', re.M)


def _create(name: str, mark: str) -> str:
    """``create`` fails if the name is taken; it makes the bare table (a body given to it
    would be ignored), with its mark: a comment is taken only when a table is made."""
    comment = f' comment "{mark}";' if mark else ""
    _comment(mark)  # checks it
    return f"create table inet {name} {{{comment} }}\n"


def _comment(mark: str) -> str:
    """The table's mark (``iservice:<instance>:<session>``): only the tables of this
    service instance carry its mark, so the sweep of unjournaled leftovers at start
    (effects/orphans.py) never takes another instance's (or anyone's) table."""
    if not mark:
        return ""
    if '"' in mark or "\\" in mark or "\n" in mark:
        raise ValueError(f"bad table mark {mark!r}")
    return f'  comment "{mark}"\n'


def tables() -> list[str]:
    """The names of the ``inet`` tables that look like iservice's."""
    cp = subprocess.run([NFT, "list", "tables", "inet"], capture_output=True, timeout=15,
                        env={"PATH": SAFE_PATH}, cwd="/", check=False)
    if cp.returncode != 0:
        return []
    names = []
    for line in cp.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[:2] == ["table", "inet"] and \
                re.fullmatch(r"iservice_\d+(_\d+)?(_dns)?", parts[2]):
            names.append(parts[2])
    return names


def table_mark(name: str) -> str | None:
    """The mark (comment) of an iservice table, or None (none, or no such table)."""
    cp = subprocess.run([NFT, "list", "table", "inet", name], capture_output=True,
                        timeout=15, env={"PATH": SAFE_PATH}, cwd="/", check=False)
    if cp.returncode != 0:
        return None
    m = _COMMENT_RE.search(cp.stdout.decode(errors="replace"))
    return m.group(1) if m else None


def delete_table(name: str) -> None:
    """Delete the table; one that is already gone is fine."""
    try:
        run_nft(f"delete table inet {name}\n")
    except NftError as exc:
        if exc.errno != errno.ENOENT:
            raise


def dns_redirect_table_name(session_id: int, k: int = 0) -> str:
    return table_name(session_id, k) + "_dns"


def dns_redirect_body(name: str, uid: int, tun: str, server4: str | None,
                      server6: str | None, mark: int, table_mark: str = "") -> str:
    """A per-user session's DNS (route_scope = user): the user's DNS packets (UDP and TCP
    port 53, whatever resolver they were sent to) go to the tunnel's server instead,
    through the tunnel (the user's routing table), with the tunnel's address as source;
    nobody else's packets are touched.

    The kernel routes a packet again after NAT changed its destination, with its mark
    but without its uid: so the user's port-53 packets are marked (``mark``, which a
    rule of the session sends to its table; effects/rule.py) in a ``route`` chain,
    which also routes each of them again, first packet or not.

    A resolver on loopback (127.0.0.53, a local dnsmasq) needs the tun to accept and
    route loopback-sourced packets (``route_localnet``, set by the monitor on the
    session's tun); the ``guard`` chain then drops anything that arrives on the tun for
    a loopback address except the replies of these redirected queries, so the tunnel's
    far end can reach nothing on the machine's loopback.
    """
    u = int(uid)
    rules = []
    if server4 is not None:
        a = ip_address(server4)
        assert a.version == 4
        rules += [f"meta nfproto ipv4 meta skuid {u} udp dport 53 dnat ip to {a}",
                  f"meta nfproto ipv4 meta skuid {u} tcp dport 53 dnat ip to {a}"]
    if server6 is not None:
        a6 = ip_address(server6)
        assert a6.version == 6
        rules += [f"meta nfproto ipv6 meta skuid {u} udp dport 53 dnat ip6 to {a6}",
                  f"meta nfproto ipv6 meta skuid {u} tcp dport 53 dnat ip6 to {a6}"]
    out = "\n".join(f"    {r}" for r in rules)
    dev = _check_ifname(tun)
    m = int(mark)
    return (f"table inet {name} {{\n"
            f"{_comment(table_mark)}"
            "  chain marking {\n"
            "    type route hook output priority -150; policy accept;\n"
            f"    meta skuid {u} udp dport 53 meta mark set {m}\n"
            f"    meta skuid {u} tcp dport 53 meta mark set {m}\n  }}\n"
            "  chain output {\n"
            "    type nat hook output priority -100; policy accept;\n"
            f"{out}\n  }}\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority 100; policy accept;\n"
            f'    oifname "{dev}" meta skuid {u} ct status dnat masquerade\n  }}\n'
            "  chain guard {\n"
            "    type filter hook prerouting priority 0; policy accept;\n"
            f'    iifname "{dev}" ip daddr 127.0.0.0/8 ct status dnat accept\n'
            f'    iifname "{dev}" ip daddr 127.0.0.0/8 drop\n'
            f'    iifname "{dev}" ip6 daddr ::1 ct status dnat accept\n'
            f'    iifname "{dev}" ip6 daddr ::1 drop\n  }}\n'
            "}\n")


def _check_ifname(name: str) -> str:
    if not name or len(name) > 15 or any(not (c.isalnum() or c in "_.-") for c in name):
        raise ValueError(f"bad interface name {name!r}")
    return name


def create_dns_redirect(name: str, uid: int, tun: str, server4: str | None,
                        server6: str | None, mark: int, table_mark: str = "") -> None:
    run_nft(_create(name, table_mark) +
            dns_redirect_body(name, uid, tun, server4, server6, mark, table_mark))


def replace_dns_redirect(name: str, uid: int, tun: str, server4: str | None,
                         server6: str | None, mark: int, table_mark: str = "") -> None:
    run_nft(f"delete table inet {name}\n" +
            dns_redirect_body(name, uid, tun, server4, server6, mark, table_mark))
