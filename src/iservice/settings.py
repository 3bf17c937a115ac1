"""The service's settings (SPEC §8): ``/etc/openvpn<inst>/iservice.conf``.

File format
-----------
* UTF-8 text (a leading BOM is accepted), at most 1 MiB, one ``key = value`` per
  line; ``\\n`` ends a line (a ``\\r`` before it is stripped with the blanks).
* Blank lines, and lines whose first non-blank character is ``#``, are ignored.
* The key is everything before the first ``=``, the value everything after it
  (so a value may contain ``=``); blanks around both are stripped.
* No quoting and no escapes: the value is taken literally.  No inline comments:
  a value containing a blank followed by ``#`` is refused rather than silently
  taken as part of a path.
* Keys are the lowercase names below, case-sensitive.  An unknown key, a key
  given twice, a line without ``=`` or an invalid value is a ``SettingsError``
  naming the file, the line and the key: a typo must not silently weaken a
  setting.
* For the optional keys (``log_dir``, ``socket_group``, ``hook_path``,
  ``resolvconf_path``) an empty value means "not set"; for every other key an
  empty value is an error.

Keys (original value names first)
---------------------------------
``exe_path``            absolute path, default ``/usr/sbin/openvpn``
``config_dir``          absolute path, default ``/etc/openvpn<inst>/client``
``priority``            ``IDLE_PRIORITY_CLASS`` ... ``HIGH_PRIORITY_CLASS``
                        (ASCII case-insensitive), default NORMAL; stored as the
                        nice value
``ovpn_admin_group``    group name, default ``openvpn-admin``
``log_dir``             absolute path or unset (openvpn's output goes nowhere)
``socket_path``         absolute path (<= 107 bytes, the ``sun_path`` limit),
                        default ``/run/openvpn<inst>/service``
``control_socket_path`` absolute path (<= 107 bytes), default ``control`` next to
                        ``socket_path``: the control socket (``docs/control.md``)
``socket_mode``         octal (``0660``, ``660`` or ``0o660``); only read/write
                        bits (within 0o666), and owner read+write required;
                        default ``0666``
``socket_group``        group name or unset
``state_dir``           absolute path, default ``/var/lib/iservice<inst>``
``dns_backend``         ``auto`` | ``resolved`` | ``resolvconf`` | ``file`` |
                        ``none`` (case-insensitive), default ``auto``
``resolv_conf``         absolute path, default ``/etc/resolv.conf``
``resolvconf_path``     absolute path of ``resolvconf`` or unset (looked up in
                        the usual sbin/bin directories)
``block_dns``           ``true/false/yes/no/on/off/1/0``, default false: every
                        session blocks DNS outside its tunnel once it is up
``route_scope``         ``machine`` | ``user`` (case-insensitive), default
                        ``machine``: a session's routes and DNS are the machine's,
                        as in the original; ``user``: a non-admin session's routes,
                        DNS and kill switch apply to that user's traffic only
                        (a routing table and rules per session; docs/security.md)
``hook``                ``auto`` | ``plugin`` | ``script`` (case-insensitive),
                        default ``auto``: how openvpn asks for network changes.
                        ``plugin`` = the C plugin installed with iservice
                        (``--plugin``, no script at all), ``script`` = the
                        ``iservice-hook`` script (``hook_path``), ``auto`` = the
                        plugin when it was built, else the script
``hook_path``           absolute path or unset (derived at run time); used with
                        ``hook = script`` (and by ``auto`` without the plugin)
``user_profiles``       boolean, default false: users may import profiles of their
                        own (``iservice import``, docs/profiles.md)
``max_clients``, ``max_clients_per_user``, ``max_sessions_per_user``,
``max_routes``, ``max_routes_per_user``, ``max_addresses``,
``max_addresses_per_user``, ``max_dns_servers``, ``max_bypass_routes``
                        decimal integers 1 ... 2**31-1; ``max_clients`` and
                        ``max_clients_per_user`` (64 and 8) count connections that
                        are not (yet) a running session; the ``_per_user`` route
                        and address limits (200000 and 64) are summed over the
                        user's sessions
``stop_grace``          seconds, decimal, 0 < x <= 300, default 5
``check_timeout``       seconds, decimal, 0 < x <= 300, default 10: how long a start's
                        check as the user (its paths: workdir, config) may wait for the
                        file system before the request is refused
``audit_rate``, ``audit_burst``
                        decimal integers 1 ... 2**31-1, default 10 and 20000:
                        each user's audit lines, per second and saved up
                        (``audit.py``, docs/security.md "Audit lines per user")

Instance names
--------------
The instance name becomes part of paths (``/etc/openvpn<inst>``), so it is
restricted to 1-64 characters from ``A-Z a-z 0-9 _ . $ @ + -``, must not start
with ``.`` or ``-`` and must not contain ``..``; ``""`` is the default instance.
"""

from __future__ import annotations

import difflib
import errno
import math
import os
import re
import stat
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from iservice.errors import SettingsError

__all__ = [
    "DNS_BACKENDS",
    "HOOK_KINDS",
    "PRIORITIES",
    "Settings",
    "default_settings_path",
    "load_settings",
    "parse_settings",
    "validate_instance",
]

# Windows priority class -> nice value.  Keys are upper case; look up with
# ``_priority`` (ASCII case-insensitive).  Read-only so nobody changes policy by import.
PRIORITIES: Mapping[str, int] = types.MappingProxyType(
    {
        "IDLE_PRIORITY_CLASS": 19,
        "BELOW_NORMAL_PRIORITY_CLASS": 10,
        "NORMAL_PRIORITY_CLASS": 0,
        "ABOVE_NORMAL_PRIORITY_CLASS": -5,
        "HIGH_PRIORITY_CLASS": -10,
    }
)
DNS_BACKENDS: frozenset[str] = frozenset({"auto", "resolved", "resolvconf", "file", "none"})
ROUTE_SCOPES: frozenset[str] = frozenset({"machine", "user"})
HOOK_KINDS: frozenset[str] = frozenset({"auto", "plugin", "script"})

_INSTANCE_RE = re.compile(r"[A-Za-z0-9_.$@+-]{1,64}")
_MAX_FILE_BYTES = 1 << 20
_MAX_LIMIT = 2**31 - 1
_MAX_SUN_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_OPTIONAL = frozenset({"log_dir", "socket_group", "hook_path", "resolvconf_path"})


class _Invalid(Exception):
    """A value is invalid; the caller adds key, line and file."""


def validate_instance(name: str) -> str:
    """Return ``name`` if it is a safe instance name (see module doc), else raise."""
    if name == "":
        return name
    problem = None
    if not _INSTANCE_RE.fullmatch(name):
        if len(name) > 64:
            problem = "longer than 64 characters"
        else:
            problem = "only letters, digits and _ . $ @ + - are allowed"
    elif name[0] in ".-":
        problem = "must not start with '.' or '-'"
    elif ".." in name:
        problem = "must not contain '..'"
    if problem is not None:
        raise SettingsError(f"invalid instance name {name!r}: {problem}")
    return name


def default_settings_path(instance: str) -> str:
    """``/etc/openvpn<inst>/iservice.conf``."""
    return f"/etc/openvpn{validate_instance(instance)}/iservice.conf"


# --- value checks (typed values; shared by the parser and Settings.__post_init__) ---


def _check_text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid("contains characters that are not valid Unicode") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _Invalid("contains control characters")


def _check_abs_path(value: str) -> None:
    _check_text(value)
    if not value.startswith("/"):
        raise _Invalid(f"{value!r} is not an absolute path (it must start with '/')")


def _check_socket_path(value: str) -> None:
    _check_abs_path(value)
    if value.endswith("/"):
        raise _Invalid(f"{value!r} names a directory, not a socket")
    if len(value.encode("utf-8")) > _MAX_SUN_PATH:
        raise _Invalid(f"{value!r} is longer than {_MAX_SUN_PATH} bytes (unix socket limit)")


def _check_group(value: str) -> None:
    _check_text(value)
    if not value or value != value.strip():
        raise _Invalid("a group name must be non-empty without surrounding blanks")
    if ":" in value or "/" in value:
        raise _Invalid(f"{value!r} is not a valid group name (':' and '/' are not allowed)")


def _check_priority(value: int) -> None:
    if value not in PRIORITIES.values():
        raise _Invalid(f"nice value {value} is not one of {sorted(PRIORITIES.values())}")


def _check_mode(value: int) -> None:
    if not 0 <= value <= 0o777:
        raise _Invalid(f"mode {value:#o} has bits outside 0o777")
    if value & 0o111:
        raise _Invalid(f"mode {value:#o} has execute bits (meaningless on a socket)")
    if value & 0o600 != 0o600:
        raise _Invalid(f"mode {value:#o} must give the owner read and write (0o600)")


def _check_dns_backend(value: str) -> None:
    if value not in DNS_BACKENDS:
        raise _Invalid(f"unknown backend {value!r}; valid: {', '.join(sorted(DNS_BACKENDS))}")


def _check_route_scope(value: str) -> None:
    if value not in ROUTE_SCOPES:
        raise _Invalid(f"unknown route scope {value!r}; valid: machine, user")


def _parse_route_scope(text: str) -> object:
    value = text.lower() if text.isascii() else text
    _check_route_scope(value)
    return value


def _check_hook(value: str) -> None:
    if value not in HOOK_KINDS:
        raise _Invalid(f"unknown hook {value!r}; valid: {', '.join(sorted(HOOK_KINDS))}")


def _check_limit(value: int) -> None:
    if not 1 <= value <= _MAX_LIMIT:
        raise _Invalid(f"{value} is not an integer between 1 and {_MAX_LIMIT}")


def _check_grace(value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 300):
        raise _Invalid(f"{value} is not a number of seconds with 0 < x <= 300")


@dataclass(frozen=True)
class Settings:
    """Validated settings of one service instance; a Settings that exists is valid.

    ``config_dir``, ``socket_path`` and ``state_dir`` left at ``""`` are filled
    from ``instance`` at construction.  (So ``dataclasses.replace(s, instance=x)``
    keeps the old instance's paths; build a new Settings instead.)  ``priority``
    is the nice value of the configured priority class (see ``PRIORITIES``).
    The constructor raises ``SettingsError`` (naming the field) for any invalid value.
    """

    instance: str = ""
    exe_path: str = "/usr/sbin/openvpn"
    config_dir: str = ""  # "" = derived from the instance
    priority: int = 0
    ovpn_admin_group: str = "openvpn-admin"
    log_dir: str | None = None
    socket_path: str = ""  # "" = derived
    control_socket_path: str = ""  # "" = "control" in socket_path's directory
    socket_mode: int = 0o666
    socket_group: str | None = None
    state_dir: str = ""  # "" = derived
    dns_backend: str = "auto"
    resolv_conf: str = "/etc/resolv.conf"
    resolvconf_path: str | None = None
    block_dns: bool = False
    route_scope: str = "machine"
    hook: str = "auto"
    hook_path: str | None = None
    user_profiles: bool = False
    max_clients: int = 64  # connections not (yet) a running session, all users
    max_clients_per_user: int = 8  # the same, per user: one user cannot fill max_clients
    max_sessions_per_user: int = 16
    max_routes: int = 100000
    max_routes_per_user: int = 200000  # summed over the user's sessions
    max_addresses: int = 16
    max_addresses_per_user: int = 64
    max_dns_servers: int = 8
    max_bypass_routes: int = 4
    stop_grace: float = 5.0
    check_timeout: float = 10.0
    audit_rate: int = 10
    audit_burst: int = 20000

    def __post_init__(self) -> None:
        validate_instance(self.instance)
        # Fill the instance-derived defaults (frozen: via object.__setattr__).
        derived = {
            "config_dir": f"/etc/openvpn{self.instance}/client",
            "socket_path": f"/run/openvpn{self.instance}/service",
            "state_dir": f"/var/lib/iservice{self.instance}",
        }
        for name, default in derived.items():
            if getattr(self, name) == "":
                object.__setattr__(self, name, default)
        if self.control_socket_path == "" and isinstance(self.socket_path, str):
            object.__setattr__(self, "control_socket_path",
                               os.path.join(os.path.dirname(self.socket_path), "control"))
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, _TYPES[name]) or (
                isinstance(value, bool) and _TYPES[name] is not bool
            ):
                raise SettingsError(f"wrong type {type(value).__name__}", key=name)
            try:
                check(value)
            except _Invalid as exc:
                raise SettingsError(str(exc), key=name) from None
        object.__setattr__(self, "stop_grace", float(self.stop_grace))
        object.__setattr__(self, "check_timeout", float(self.check_timeout))


_CHECKS: dict[str, Callable[[Any], None]] = {
    "exe_path": _check_abs_path,
    "config_dir": _check_abs_path,
    "priority": _check_priority,
    "ovpn_admin_group": _check_group,
    "log_dir": _check_abs_path,
    "socket_path": _check_socket_path,
    "control_socket_path": _check_socket_path,
    "socket_mode": _check_mode,
    "socket_group": _check_group,
    "state_dir": _check_abs_path,
    "dns_backend": _check_dns_backend,
    "resolv_conf": _check_abs_path,
    "resolvconf_path": _check_abs_path,
    "block_dns": lambda value: None,
    "route_scope": _check_route_scope,
    "hook": _check_hook,
    "hook_path": _check_abs_path,
    "user_profiles": lambda value: None,
    "max_clients": _check_limit,
    "max_clients_per_user": _check_limit,
    "max_sessions_per_user": _check_limit,
    "max_routes": _check_limit,
    "max_routes_per_user": _check_limit,
    "max_addresses": _check_limit,
    "max_addresses_per_user": _check_limit,
    "max_dns_servers": _check_limit,
    "max_bypass_routes": _check_limit,
    "stop_grace": _check_grace,
    "check_timeout": _check_grace,
    "audit_rate": _check_limit,
    "audit_burst": _check_limit,
}
_TYPES: dict[str, type | tuple[type, ...]] = {
    name: int if name.startswith(("max_", "audit_")) else str for name in _CHECKS
}
_TYPES.update(priority=int, socket_mode=int, block_dns=bool, user_profiles=bool,
              stop_grace=(int, float), check_timeout=(int, float))


# --- text -> value parsers (each ends with the matching check) ---


def _parse_str(check: Callable[[str], None]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        check(text)
        return text

    return parse


def _parse_priority(text: str) -> object:
    key = text.upper() if text.isascii() else text  # no Unicode case folding tricks
    if key not in PRIORITIES:
        raise _Invalid(f"unknown priority {text!r}; valid: {', '.join(PRIORITIES)}")
    return PRIORITIES[key]


def _parse_mode(text: str) -> object:
    digits = text[2:] if text[:2] in ("0o", "0O") else text
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise _Invalid(f"{text!r} is not an octal mode such as 0660")
    mode = int(digits, 8)
    _check_mode(mode)
    return mode


def _parse_dns_backend(text: str) -> object:
    value = text.lower() if text.isascii() else text
    _check_dns_backend(value)
    return value


def _parse_hook(text: str) -> object:
    value = text.lower() if text.isascii() else text
    _check_hook(value)
    return value


def _parse_bool(text: str) -> object:
    value = text.lower() if text.isascii() else text
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _Invalid(f"{text!r} is not a boolean (true/false, yes/no, on/off, 1/0)")


def _parse_limit(text: str) -> object:
    # Only ASCII digits: int() would also take "1_000", "+5" and other scripts' digits.
    if not re.fullmatch(r"[0-9]{1,10}", text):
        raise _Invalid(f"{text!r} is not a positive decimal integer")
    value = int(text)
    _check_limit(value)
    return value


def _parse_grace(text: str) -> object:
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{0,6})?|\.[0-9]{1,6}", text):
        raise _Invalid(f"{text!r} is not a decimal number of seconds")
    value = float(text)
    _check_grace(value)
    return value


_PARSERS: dict[str, Callable[[str], object]] = {
    "exe_path": _parse_str(_check_abs_path),
    "config_dir": _parse_str(_check_abs_path),
    "priority": _parse_priority,
    "ovpn_admin_group": _parse_str(_check_group),
    "log_dir": _parse_str(_check_abs_path),
    "socket_path": _parse_str(_check_socket_path),
    "control_socket_path": _parse_str(_check_socket_path),
    "socket_mode": _parse_mode,
    "socket_group": _parse_str(_check_group),
    "state_dir": _parse_str(_check_abs_path),
    "dns_backend": _parse_dns_backend,
    "resolv_conf": _parse_str(_check_abs_path),
    "resolvconf_path": _parse_str(_check_abs_path),
    "block_dns": _parse_bool,
    "route_scope": _parse_route_scope,
    "hook": _parse_hook,
    "hook_path": _parse_str(_check_abs_path),
    "user_profiles": _parse_bool,
    "max_clients": _parse_limit,
    "max_clients_per_user": _parse_limit,
    "max_sessions_per_user": _parse_limit,
    "max_routes": _parse_limit,
    "max_routes_per_user": _parse_limit,
    "max_addresses": _parse_limit,
    "max_addresses_per_user": _parse_limit,
    "max_dns_servers": _parse_limit,
    "max_bypass_routes": _parse_limit,
    "stop_grace": _parse_grace,
    "check_timeout": _parse_grace,
    "audit_rate": _parse_limit,
    "audit_burst": _parse_limit,
}
assert set(_PARSERS) == {f.name for f in fields(Settings)} - {"instance"}


def parse_settings(text: str, *, instance: str = "", path: str = "<string>") -> Settings:
    """Parse the settings text of ``instance``; errors name ``path``, the line and the key."""
    validate_instance(instance)
    values: dict[str, object] = {}
    seen_on: dict[str, int] = {}
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise SettingsError(
                "expected 'key = value' (no '=' on this line)", line=number, path=path
            )
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key not in _PARSERS:
            hint = difflib.get_close_matches(key, _PARSERS, n=1)
            reason = "unknown key" + (f" (did you mean '{hint[0]}'?)" if hint else "")
            raise SettingsError(reason, key=_printable(key), line=number, path=path)
        if key in seen_on:
            raise SettingsError(
                f"given twice (first on line {seen_on[key]})", key=key, line=number, path=path
            )
        seen_on[key] = number
        try:
            if re.search(r"\s#", value):
                raise _Invalid(
                    "inline comments are not supported; put '#' comments on their own line"
                )
            if value == "":
                if key not in _OPTIONAL:
                    raise _Invalid("empty value")
                values[key] = None
            else:
                values[key] = _PARSERS[key](value)
        except _Invalid as exc:
            raise SettingsError(str(exc), key=key, line=number, path=path) from None
    try:
        return Settings(instance=instance, **values)  # type: ignore[arg-type]
    except SettingsError as exc:  # cannot happen for parsed values; keep the file name
        raise SettingsError(exc.reason, key=exc.key, path=path) from None


def _printable(key: str) -> str:
    # The key goes into a log line: show control characters escaped.
    return key if key.isprintable() else repr(key)


def load_settings(path: str | None = None, *, instance: str = "") -> Settings:
    """Read and parse the settings file.

    ``path`` None means ``default_settings_path(instance)``, whose absence means
    all defaults; an explicitly given file must exist.  The file must not be
    world-writable, and must be owned by root or by the user running the
    service: whoever can write it controls who is an admin.
    """
    validate_instance(instance)
    explicit = path is not None
    file_path = path if path is not None else default_settings_path(instance)
    try:
        fd = os.open(file_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        if explicit:
            raise SettingsError("file not found", path=file_path) from None
        return Settings(instance=instance)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot open: {_strerror(exc)}", path=file_path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SettingsError("not a regular file", path=file_path)
        if info.st_mode & stat.S_IWOTH:
            raise SettingsError("is writable by every user; fix with chmod o-w", path=file_path)
        if info.st_uid not in (0, os.geteuid()):
            raise SettingsError(
                f"is owned by uid {info.st_uid}, not by root or the service user",
                path=file_path,
            )
        chunks = []
        size = 0
        while size <= _MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > _MAX_FILE_BYTES:
            raise SettingsError(f"larger than {_MAX_FILE_BYTES} bytes", path=file_path)
    except OSError as exc:
        raise SettingsError(f"cannot read: {_strerror(exc)}", path=file_path) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SettingsError(
            f"not valid UTF-8 (byte {exc.start} of the file)", line=line, path=file_path
        ) from None
    return parse_settings(text, instance=instance, path=file_path)


def _strerror(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    return str(exc)
