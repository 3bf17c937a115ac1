"""DNS backends: systemd-resolved (D-Bus), openresolv (``resolvconf``), a managed file.

Each backend applies one session's whole per-link configuration (``LinkDns``) and
undoes it from what the journal holds.  The monitor calls them from its single
thread, journal first: ``undo_data`` gives the record to write *before* the first
change, ``apply`` makes the change, ``revert`` undoes it from the record alone (so
it also works at the next start after the service was killed).

* ``resolved``: ``SetLinkDNS``, ``SetLinkDomains`` (search domains, ``~domain``
  routing domains for split DNS, ``~.`` when every name goes to the tunnel),
  ``SetLinkDefaultRoute``, ``SetLinkDNSSEC`` when asked, ``RevertLink`` on undo,
  ``FlushCaches`` for register_dns; all by the ifindex of the session's own tun,
  over the system bus with jeepney.
* ``resolvconf``: ``resolvconf -a <tun>.openvpn`` with resolv.conf lines on
  stdin, ``resolvconf -d <tun>.openvpn -f`` on undo.  resolv.conf has no split
  DNS: the servers become everyone's servers.
* ``file``: see ``FileDns``.
* ``none``: nothing is changed; messages are acknowledged.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from iservice.errors import BackendError
from iservice.policy.dns import LinkDns, resolv_conf_lines
from iservice.ports import DnsBackend

log = logging.getLogger("iservice.dns")

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RESOLVE1 = "org.freedesktop.resolve1"
DBUS_TIMEOUT = 5.0
COMMAND_TIMEOUT = 15.0
MAX_RESOLV_CONF = 1 << 20


class DnsError(BackendError):
    """A backend could not apply or undo a configuration (the ack gets ``errno``)."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(err, message)


# -- none -------------------------------------------------------------------------------


class NoDns:
    name = "none"

    def undo_data(self, session_id: int, ifindex: int, ifname: str) -> dict[str, Any]:
        return {"backend": self.name}

    def apply(self, session_id: int, ifindex: int, ifname: str, link: LinkDns,
              change_id: int) -> None:
        pass

    def revert(self, session_id: int, data: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- systemd-resolved -------------------------------------------------------------------


class ResolvedDns:
    """systemd-resolved over the system bus (``DBUS_SYSTEM_BUS_ADDRESS`` or the default)."""

    name = "resolved"

    def __init__(self, bus: str = "SYSTEM") -> None:
        self._bus = bus
        self._conn: Any = None

    def _call(self, method: str, signature: str | None, body: tuple[Any, ...]) -> Any:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg

        addr = DBusAddress("/org/freedesktop/resolve1", bus_name=RESOLVE1,
                           interface="org.freedesktop.resolve1.Manager")
        msg = new_method_call(addr, method, signature, body)
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = open_dbus_connection(bus=self._bus)
                reply = self._conn.send_and_get_reply(msg, timeout=DBUS_TIMEOUT)
                return unwrap_msg(reply)
            except DBusErrorResponse as exc:
                raise DnsError(f"systemd-resolved {method}: {exc}") from None
            except (OSError, ConnectionError, TimeoutError, StopIteration) as exc:
                self.close()  # a restarted bus or resolved: connect again once
                if attempt == 2:
                    raise DnsError(f"systemd-resolved {method}: {exc!r}") from None
        raise AssertionError("unreachable")

    def available(self) -> bool:
        """Is systemd-resolved's name on the bus now?"""
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import unwrap_msg
        try:
            with contextlib.closing(open_dbus_connection(bus=self._bus)) as conn:
                reply = conn.send_and_get_reply(message_bus.NameHasOwner(RESOLVE1),
                                                timeout=DBUS_TIMEOUT)
                return bool(unwrap_msg(reply)[0])
        except Exception:  # no bus, no permission, a bus that does not answer
            return False

    def undo_data(self, session_id: int, ifindex: int, ifname: str) -> dict[str, Any]:
        return {"backend": self.name, "ifindex": ifindex, "ifname": ifname}

    def apply(self, session_id: int, ifindex: int, ifname: str, link: LinkDns,
              change_id: int) -> None:
        servers = [(socket.AF_INET if a.version == 4 else socket.AF_INET6, a.packed)
                   for a in link.servers]
        domains = [(d, False) for d in link.search]
        domains += [(d, True) for d in link.routing_domains if d not in link.search]
        if link.default_route:
            domains.append((".", True))
        self._call("SetLinkDNS", "ia(iay)", (ifindex, servers))
        self._call("SetLinkDomains", "ia(sb)", (ifindex, domains))
        self._call("SetLinkDefaultRoute", "ib", (ifindex, link.default_route))
        if link.dnssec is not None:
            self._call("SetLinkDNSSEC", "is", (ifindex, "yes" if link.dnssec else "no"))

    def revert(self, session_id: int, data: dict[str, Any]) -> None:
        ifindex, ifname = int(data["ifindex"]), str(data["ifname"])
        try:
            current = socket.if_indextoname(ifindex)
        except OSError:
            return  # the link is gone, and resolved forgot it with the link
        if current != ifname:
            log.warning("event=dns-revert-skipped ifindex=%d now=%s was=%s", ifindex, current,
                        ifname)
            return
        try:
            self._call("RevertLink", "i", (ifindex,))
        except DnsError as exc:
            if "No such" in str(exc) or "NoSuchLink" in str(exc):
                return
            raise

    def flush(self) -> None:
        self._call("FlushCaches", None, ())

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# -- openresolv ---------------------------------------------------------------------------


def find_resolvconf(configured: str | None) -> str | None:
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("resolvconf", path=SAFE_PATH)


class ResolvconfDns:
    name = "resolvconf"

    def __init__(self, exe: str) -> None:
        self.exe = exe

    def _run(self, args: Sequence[str], stdin: str = "") -> None:
        try:
            cp = subprocess.run([self.exe, *args], input=stdin.encode(), capture_output=True,
                                timeout=COMMAND_TIMEOUT, env={"PATH": SAFE_PATH}, cwd="/",
                                check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DnsError(f"{self.exe} {' '.join(args)}: {exc}") from None
        if cp.returncode != 0:
            raise DnsError(f"{self.exe} {' '.join(args)} exited {cp.returncode}: "
                           f"{cp.stderr.decode(errors='replace').strip()[:300]}")

    def undo_data(self, session_id: int, ifindex: int, ifname: str) -> dict[str, Any]:
        return {"backend": self.name, "ifname": ifname, "exe": self.exe}

    def apply(self, session_id: int, ifindex: int, ifname: str, link: LinkDns,
              change_id: int) -> None:
        text = "\n".join([f"# iservice session {session_id}", *resolv_conf_lines(link)]) + "\n"
        self._run(["-a", f"{ifname}.openvpn"], text)

    def revert(self, session_id: int, data: dict[str, Any]) -> None:
        self._run(["-d", f"{data['ifname']}.openvpn", "-f"])

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- a managed resolv.conf ----------------------------------------------------------------

MARKER = b"# Generated by iservice"


def render(original: bytes, links: Sequence[tuple[str, LinkDns]]) -> bytes:
    """The file while sessions are live: ``links`` newest first, then the original.

    Their servers come first (the newest session's first) and replace the original's
    ``nameserver`` lines, so names do not leak to the local resolver; their search
    domains come first on the one ``search`` line, followed by the original's own
    tokens; every other line (options, sortlist, comments) stays as it was.
    """
    servers: list[str] = []
    search: list[str] = []
    for _, link in links:
        servers += [str(a) for a in link.servers if str(a) not in servers]
        search += [d for d in link.search if d not in search]
    text = original.decode("latin-1")
    kept: list[str] = []
    orig_search: list[str] = []
    search_at: int | None = None
    for line in text.splitlines():
        words = line.split()
        key = words[0] if words else ""
        if key in ("search", "domain"):
            orig_search = words[1:]  # the last one wins (resolv.conf(5))
            search_at = len(kept)
            continue
        if key == "nameserver" and servers:
            continue
        kept.append(line)
    names = " ".join(name for name, _ in links)
    out = [f"{MARKER.decode()} for {names}; the original returns when they end."]
    out += [f"nameserver {a}" for a in servers]
    tokens = search + [t for t in orig_search if t not in search]
    if search_at is None:
        search_at = 0
    if tokens:
        kept.insert(search_at, "search " + " ".join(tokens))
    out += kept
    return ("\n".join(out) + "\n").encode("latin-1")


def _is_mount_point(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == path:
                    return True
    except OSError:
        pass
    return False


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_RESOLV_CONF + 1)
    if len(data) > MAX_RESOLV_CONF:
        raise DnsError(f"{path} is larger than {MAX_RESOLV_CONF} bytes", errno.EFBIG)
    return data


TEMP_SUFFIX = ".iservice-new"


def temp_path(path: str) -> str:
    """The temporary file a new content is written to before the rename (journaled
    before it is created, removed by the undo after a crash)."""
    return os.path.realpath(path) + TEMP_SUFFIX


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    lo, step = 0, 4096
    while lo < n and a[lo:lo + step] == b[lo:lo + step]:  # compare in C, a page at a time
        lo += step
    lo = min(lo, n)
    while lo < n and a[lo] == b[lo]:
        lo += 1
    return lo


def torn_between(current: bytes, old: bytes, new: bytes) -> bool:
    """Could ``current`` be what writing ``new`` over ``old`` in place left behind, the
    writer killed at any moment?

    The write goes from offset 0 on, then the file is truncated to ``len(new)``: a kill
    leaves ``new[:k] + old[k:]`` for some ``k`` (the write stopped after ``k`` bytes, or
    all of ``new`` went in but the truncation did not), or ``new``.  Pure: the undo uses
    it to tell a torn file of its own from an administrator's.
    """
    if current in (old, new):
        return True
    prefix = _common_prefix(current, new)  # k <= prefix
    if len(current) != len(old):
        # longer than old: only new's bytes can be past old's end (k = len(current));
        # shorter: only the truncation shortens, and it comes after all of new
        return len(current) > len(old) and prefix == len(current) <= len(new)
    # old[k:] == current[k:] for every k >= len(current) - suffix
    suffix = _common_prefix(current[::-1], old[::-1])
    return len(current) - suffix <= prefix


def write_file(path: str, data: bytes) -> None:
    """Replace the file's content: rename a new file over it, or write in place where it
    is a mount point (a bind-mounted file: rename gives EBUSY there).

    A kill at any moment leaves the old content, the new one, or (in place only) a torn
    mix ``torn_between`` recognises; and at most the temporary file ``temp_path(path)``,
    which the caller journals before."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if not _is_mount_point(real):
        tmp = real + TEMP_SUFFIX
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # ours, left by a kill between creating and renaming it
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                         st.st_mode & 0o7777)
            try:
                _write_all(fd, data)
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, st.st_mode & 0o7777)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, real)
            return
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EROFS, errno.EACCES,
                                 errno.EPERM, errno.EEXIST):
                raise
    fd = os.open(real, os.O_WRONLY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FileDns:
    """A resolv.conf shared by every live session.

    The file always shows the newest live session's servers first (``render``).
    The content it had before the first session began (the *original*) is kept in
    memory and in every session's journal record; when the last session ends the
    original is written back byte for byte, whatever order the sessions end in.
    After a crash the records give the original back.  Domains are never removed
    from text: the file is rendered from the original and the live sessions, so the
    original's own search tokens survive exactly (the original's CVE-2026-13379 was
    a substring removal).  If something else replaced the file while sessions were
    live (it no longer starts with our marker and is not what we wrote), that
    content becomes the original; at the end a file we did not write is left alone.

    Crashes: before every write, each live session's record (and, for the last
    write, the ending session's) is updated with the write about to happen: the
    content it replaces, the new content and the temporary file's name (``write``),
    and the record's own journal id (``change``).  A kill at any moment therefore
    leaves a file that the undo recognises as its own — our marker, one of the two
    texts, or an in-place write cut short (``torn_between``) — and a temporary file
    it removes; the undo's own write back is journaled the same way, so a kill
    during the undo is recognised by the next one.
    """

    name = "file"

    def __init__(self, path: str, update_record: Callable[[int, dict[str, Any]], None]) -> None:
        self.path = path
        self._update_record = update_record
        self._original: bytes | None = None
        self._written: bytes | None = None
        self._seq = 0
        # session id → (activation number, tun name, config, journal record)
        self._live: dict[int, tuple[int, str, LinkDns, int]] = {}

    def _data(self, ifname: str) -> dict[str, Any]:
        assert self._original is not None
        return {"backend": self.name, "path": self.path, "ifname": ifname,
                "original": _b64(self._original)}

    def undo_data(self, session_id: int, ifindex: int, ifname: str) -> dict[str, Any]:
        if self._original is None:
            current = read_file(self.path)
            if current.startswith(MARKER):
                raise DnsError(f"{self.path} still holds iservice's content and no journal "
                               "record gives its original", errno.EBUSY)
            self._original = current
        return self._data(ifname)

    def apply(self, session_id: int, ifindex: int, ifname: str, link: LinkDns,
              change_id: int) -> None:
        prev = self._live.get(session_id)
        if prev is None:
            self._seq += 1
        seq = prev[0] if prev else self._seq
        self._live[session_id] = (seq, ifname, link, change_id)
        try:
            self._write()
        except OSError:
            if prev is None:
                del self._live[session_id]
            else:
                self._live[session_id] = prev
            if not self._live:
                self._original = None
            raise

    def _write(self, ending: tuple[str, int] | None = None) -> None:
        """Render the live sessions into the file (journaled first, see the class) in
        their records and in ``ending``'s (tun name, record) if a session is ending."""
        assert self._original is not None
        current = read_file(self.path)
        if current != self._written and not current.startswith(MARKER) \
                and current != self._original:
            log.warning("event=resolv-conf-replaced path=%s: adopting it as the original",
                        self.path)
            self._original = current
        links = sorted(self._live.values(), key=lambda v: -v[0])
        data = render(self._original, [(ifname, link) for _, ifname, link, _ in links])
        pending = self._pending(self.path, current, data)
        records = [(ifname, change) for _, ifname, _, change in self._live.values()]
        for ifname, change in [*records, *([ending] if ending else [])]:
            self._update_record(change, {**self._data(ifname), "change": change,
                                         "write": pending})
        write_file(self.path, data)
        self._written = data

    @staticmethod
    def _pending(path: str, old: bytes, new: bytes) -> dict[str, str]:
        return {"from": _b64(old), "to": _b64(new), "tmp": temp_path(path)}

    def revert(self, session_id: int, data: dict[str, Any]) -> None:
        ended = self._live.pop(session_id, None)
        if self._live:
            self._write(None if ended is None else (ended[1], ended[3]))
            return
        original = self._original
        if original is None:  # after a crash: the record has it
            original = base64.b64decode(data["original"])
        path = str(data.get("path", self.path))
        change = ended[3] if ended is not None else data.get("change")
        self._remove_temp(path, data)
        current = read_file(path)
        if current != original:
            if self._ours(current, data):
                if isinstance(change, int):
                    self._update_record(change, {**data, "change": change,
                                                 "write": self._pending(path, current, original)})
                else:  # its session never wrote (killed before): nothing of it to tear
                    log.warning("event=resolv-conf-restore-unjournaled path=%s", path)
                write_file(path, original)
                self._remove_temp(path, data)
            else:
                log.warning("event=resolv-conf-left path=%s: replaced by something else while "
                            "the tunnel was up; left as it is", path)
        self._original = None
        self._written = None

    def _ours(self, current: bytes, data: dict[str, Any]) -> bool:
        """Did iservice write this content (whole, or cut short by a kill)?"""
        if current.startswith(MARKER) or current == self._written:
            return True
        pending = data.get("write")
        if not isinstance(pending, dict):
            return False
        try:
            old, new = base64.b64decode(pending["from"]), base64.b64decode(pending["to"])
        except (KeyError, TypeError, ValueError):
            return False
        return torn_between(current, old, new)

    @staticmethod
    def _remove_temp(path: str, data: dict[str, Any]) -> None:
        """Remove the temporary file a killed write left (only the one of ``path``)."""
        pending = data.get("write")
        tmp = pending.get("tmp") if isinstance(pending, dict) else None
        if tmp is not None and tmp == temp_path(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- choosing ----------------------------------------------------------------------------


def backend_for(data: dict[str, Any],
                update_record: Callable[[int, dict[str, Any]], None]) -> DnsBackend:
    """A backend to undo a journal record with: the one the record names (the setting may
    have changed since it was written, across a crash too)."""
    name = data.get("backend")
    if name == "resolved":
        return ResolvedDns()
    if name == "resolvconf":
        return ResolvconfDns(str(data["exe"]))
    if name == "file":
        return FileDns(str(data["path"]), update_record)
    return NoDns()


def make_backend(name: str, *, resolv_conf: str, resolvconf_exe: str | None,
                 update_record: Callable[[int, dict[str, Any]], None]) -> DnsBackend:
    """The backend called ``name``; ``auto`` picks resolved, then openresolv, then the file."""
    if name == "auto":
        resolved = ResolvedDns()
        if resolved.available():
            return resolved
        exe = find_resolvconf(resolvconf_exe)
        if exe is not None:
            return ResolvconfDns(exe)
        return FileDns(resolv_conf, update_record)
    if name == "resolved":
        return ResolvedDns()
    if name == "resolvconf":
        exe = find_resolvconf(resolvconf_exe)
        if exe is None:
            raise DnsError("dns_backend = resolvconf, but no resolvconf program was found",
                           errno.ENOENT)
        return ResolvconfDns(exe)
    if name == "file":
        return FileDns(resolv_conf, update_record)
    return NoDns()
