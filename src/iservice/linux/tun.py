"""Per-session tun devices: created persistent and owned by the user, deleted by index.

The service (root) creates the device; openvpn, running as the user, later attaches
to it with ``--dev <name> --dev-type tun``.  The kernel lets a non-root process attach
only when its euid is the device's owner and it is in the device's group.

What the owner of a tun can change without any capability (``TUNSETOWNER``,
``TUNSETGROUP``, ``TUNSETPERSIST``, attaching more processes) decides nothing here:
the service marks each device it makes with an interface alias (``IFLA_IFALIAS``, which
only CAP_NET_ADMIN can change) *before* the device becomes persistent, and undo finds
the device by its journaled ifindex, name and alias — never by its owner.  A device
without the mark was never iservice's: if the service dies before the mark is set, the
device is not persistent yet and vanishes with the service's descriptor.

A tun is created in the network namespace of the thread doing the ioctl, so
``netns_path`` runs the whole creation in a thread inside that namespace.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Callable

from iservice.linux.netlink import NetlinkError, Rtnl, rtnl_in_netns, run_in_netns

# linux/if_tun.h (_IOW('T', n, int) with the generic ioctl encoding)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000  # the kernel answers EBUSY instead of attaching to an existing device

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, rest of the union
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_TUN_DEV = "/dev/net/tun"


def check_tun_name(name: str) -> str:
    """``name`` if it is a safe interface name (<= 15 chars of [A-Za-z0-9_.-])."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"bad tun device name {name!r}")
    return name


def _check_id(value: int, what: str) -> int:
    # (u32)-1 means "no owner" to the kernel: refuse it rather than leave the device open.
    if type(value) is not int or not 0 <= value < 0xFFFFFFFF:
        raise ValueError(f"bad {what} {value!r}")
    return value


def _c_int(value: int) -> int:
    # fcntl.ioctl passes an int argument as a C int; the kernel reads an unsigned long
    # and keeps the low 32 bits, so ids above 2**31 travel as their negative alias.
    return value - (1 << 32) if value >= 1 << 31 else value


def _create(name: str, uid: int, gid: int, mark: Callable[[int], None] | None) -> int:
    try:
        socket.if_nametoindex(name)
    except OSError:
        pass  # no such device: good
    else:
        raise FileExistsError(errno.EEXIST, f"network device {name} already exists")
    fd = os.open(_TUN_DEV, os.O_RDWR | os.O_CLOEXEC)
    try:
        # EXCL closes the race with the check above: never take over someone's device.
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TUN | IFF_NO_PI | IFF_TUN_EXCL))
        fcntl.ioctl(fd, TUNSETOWNER, _c_int(uid))
        fcntl.ioctl(fd, TUNSETGROUP, _c_int(gid))
        index = socket.if_nametoindex(name)
        if mark is not None:
            mark(index)  # while only our descriptor keeps the device
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
        return index
    finally:
        os.close(fd)  # without TUNSETPERSIST (any failure before it) this removes the device


def create_tun(name: str, uid: int, gid: int, *, netns_path: str | None = None,
               mark: Callable[[int], None] | None = None) -> int:
    """Create the persistent tun ``name`` owned by ``uid``/``gid``; return its ifindex.

    ``mark(ifindex)`` runs before the device is made persistent (the module docstring
    says why); if it raises, the device is gone again.

    Raises FileExistsError (EEXIST) if a device of that name exists, OSError (EBUSY)
    if one appeared meanwhile, ValueError for a bad name or id.
    """
    check_tun_name(name)
    _check_id(uid, "uid")
    _check_id(gid, "gid")
    if netns_path is None:
        return _create(name, uid, gid, mark)
    return run_in_netns(netns_path, lambda: _create(name, uid, gid, mark))


def route_localnet(name: str) -> None:
    """Let the tun carry loopback-sourced packets (``net.ipv4.conf.<tun>.route_localnet``;
    a per-user session's redirected DNS queries to a resolver on loopback, see
    ``linux/firewall.py``).  It goes with the device."""
    check_tun_name(name)
    with open(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "w") as f:
        f.write("1")


def tun_owner(name: str) -> int | None:
    """The owner uid of tun ``name`` (sysfs of this network namespace), or None."""
    check_tun_name(name)
    try:
        with open(f"/sys/class/net/{name}/owner") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def delete_tun(name_or_index: str | int, *, rtnl: Rtnl | None = None,
               netns_path: str | None = None) -> None:
    """Delete a tun device (its addresses and routes go with it); gone already is fine.

    Refuses (EINVAL) to delete a device that is not a tun.  Uses ``rtnl`` when given,
    else a temporary socket (in ``netns_path`` if given).
    """
    if isinstance(name_or_index, str):
        check_tun_name(name_or_index)
    own = rtnl is None
    if rtnl is None:
        rtnl = Rtnl() if netns_path is None else rtnl_in_netns(netns_path)
    try:
        if isinstance(name_or_index, str):
            index = rtnl.link_index(name_or_index)
            if index is None:
                return
        else:
            index = name_or_index
        try:
            info = rtnl.link_info(index)
            if info.kind != "tun":
                raise OSError(errno.EINVAL, f"device {info.name} ({index}) is not a tun")
            rtnl.link_del(index)
        except NetlinkError as exc:
            if exc.errno != errno.ENODEV:
                raise
    finally:
        if own:
            rtnl.close()
