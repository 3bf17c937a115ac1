"""``iservice enable PROFILE`` / ``iservice disable PROFILE``: connect a profile by itself
(docs/install.md, "Auto-connect").

Each profile gets an instance of a systemd template unit that runs ``iservice connect
--foreground PROFILE``: as root, the system unit ``iservice-connect@.service`` (wanted by
``multi-user.target``: at boot, after the service is up); as any other user, the user
unit of the same name (wanted by ``default.target``: at that user's login).  These
commands only enable or disable that instance with ``systemctl`` (``--user`` for a
user); ``--now`` also starts or stops it.

No prompt can be answered at boot or login, so the profile must not ask (a certificate,
or credentials the profile itself names); ``connect`` ends with status 2 when it would
have to ask, and the unit does not restart after 2 (usage) or 4 (authentication).

``instance_name`` is pure (systemd's escaping of a unit instance, as ``systemd-escape``
does it); ``run`` is the I/O around it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
TEMPLATE = "iservice-connect@.service"
_UNIT_NAME_MAX = 255  # systemd's limit on a unit name
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def instance_name(profile: str) -> str:
    """``profile`` as a unit instance string: ``/`` becomes ``-``; every byte of anything
    but ASCII letters, digits, ``:``, ``_`` and ``.`` (and a leading ``.``) becomes
    ``\\xNN``.  The unit's ``%I`` gives ``profile`` back."""
    out = []
    for i, ch in enumerate(profile):
        if ch == "/":
            out.append("-")
        elif ch in _PLAIN and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def unit_name(profile: str) -> str:
    """The instance of the template for ``profile``; ValueError if none can name it."""
    if not profile or profile.strip() != profile:
        raise ValueError("a profile name must be non-empty, without surrounding blanks")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in profile):
        raise ValueError("a profile name must not contain control characters")
    name = TEMPLATE.replace("@", "@" + instance_name(profile), 1)
    if len(name) > _UNIT_NAME_MAX:
        raise ValueError(f"the profile name is too long for a unit name ({len(name)} > "
                         f"{_UNIT_NAME_MAX} characters once escaped)")
    return name


def systemctl_argv(systemctl: str, action: str, unit: str, *, user: bool,
                   now: bool) -> list[str]:
    """``systemctl [--user] enable|disable [--now] UNIT``."""
    if action not in ("enable", "disable"):
        raise ValueError(f"unknown action {action!r}")
    return [systemctl, *(["--user"] if user else []), action, *(["--now"] if now else []),
            unit]


def _when(user: bool) -> str:
    return "at your login (a user unit)" if user else "at boot (a system unit)"


def run(action: str, profile: str, *, now: bool, check: Callable[[str], str | None],
        out: TextIO | None = None, err: TextIO | None = None,
        runner: Callable[[Sequence[str]], int] | None = None) -> int:
    """Enable or disable auto-connect of ``profile`` for the caller (root: at boot).

    ``check(profile)`` says what is wrong with the profile (None: fine); it may print a
    warning itself and return None when it cannot tell (the service is not running)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        unit = unit_name(profile)
    except ValueError as exc:
        print(f"iservice {action}: {exc}", file=err)
        return EXIT_USAGE
    if action == "enable":
        problem = check(profile)
        if problem is not None:
            print(f"iservice enable: {problem}", file=err)
            return EXIT_USAGE
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        print(f"iservice {action}: systemctl not found: auto-connect needs systemd",
              file=err)
        return EXIT_UNAVAILABLE
    user = os.geteuid() != 0
    argv = systemctl_argv(systemctl, action, unit, user=user, now=now)
    status = (runner or _call)(argv)
    if status != 0:
        print(f"iservice {action}: {' '.join(argv[1:])} failed (status {status})", file=err)
        return EXIT_FAILED
    if action == "enable":
        started = " and started it now" if now else f"; it starts {_when(user)}"
        print(f"Enabled auto-connect of {profile} ({unit}){started}.", file=out)
    else:
        stopped = " and stopped it" if now else ""
        print(f"Disabled auto-connect of {profile} ({unit}){stopped}.", file=out)
    return EXIT_OK


def profile_check(control_path: str, err: TextIO | None = None) -> Callable[[str], str | None]:
    """The check ``run`` wants: the profile must be one the service approves for the
    caller (``iservice connect``'s own lookup).  With no service listening on the control
    socket there is nobody to ask: a warning, and the profile is taken as given."""
    def check(profile: str) -> str | None:
        from iservice import cleanup, connect
        # a path is checked here; a name only the service can resolve
        if "/" not in profile and not os.path.isfile(profile) and \
                cleanup.listener_pid(control_path) is None:
            print(f"iservice enable: warning: the service is not running ({control_path}), "
                  f"so {profile!r} was not checked", file=err or sys.stderr)
            return None
        try:
            connect.resolve_profile(profile, control_path)
        except LookupError as exc:
            return str(exc)
        return None
    return check


def _call(argv: Sequence[str]) -> int:
    try:
        return subprocess.call(list(argv), stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"iservice: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127
