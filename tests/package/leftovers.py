"""What the Debian package may leave on the machine, recorded before it is installed and
compared after it is purged (scripts/test-package.sh, test_purge.py).

``python3 -m tests.package.leftovers snapshot FILE`` writes the record: every existing
path matching ``PATTERNS`` (and, recursively, what lies under each), the group, and
dpkg's state of the package.  ``added(before, after)`` lists what is new.
"""

from __future__ import annotations

import glob
import grp
import json
import os
import subprocess
import sys
from typing import Any

GROUP = "openvpn-admin"
# Everything iservice puts on a machine, or makes at run time, by pattern.
PATTERNS = [
    "/usr/bin/iservice*", "/usr/local/bin/iservice*",
    "/usr/lib/python3/dist-packages/iservice*", "/usr/lib/python3.*/dist-packages/iservice*",
    "/lib/systemd/system/iservice*", "/usr/lib/systemd/system/iservice*",
    "/usr/lib/systemd/user/iservice*", "/etc/systemd/system/*/iservice*",
    "/etc/systemd/system/iservice*", "/etc/systemd/user/*/iservice*",
    "/var/lib/systemd/deb-systemd-helper-enabled/*iservice*",
    "/var/lib/systemd/deb-systemd-helper-enabled/*/iservice*",
    "/var/lib/systemd/deb-systemd-user-helper-enabled/*iservice*",
    "/var/lib/iservice*", "/run/openvpn/service", "/run/openvpn/control",
    "/usr/share/man/man*/iservice*", "/usr/share/bash-completion/completions/iservice",
    "/usr/share/zsh/vendor-completions/_iservice", "/usr/share/doc/iservice",
    "/usr/share/lintian/overrides/iservice", "/var/lib/dpkg/info/iservice.*",
    # the directory of a service's session cgroups, made under its own cgroup (the root
    # one here: the maintainer scripts' `iservice cleanup`); cgroup2 alone or beside v1
    "/sys/fs/cgroup/iservice-*", "/sys/fs/cgroup/unified/iservice-*",
]


def paths() -> list[str]:
    found: set[str] = set()
    for pattern in PATTERNS:
        for path in glob.glob(pattern):
            found.add(path)
            if os.path.isdir(path) and not os.path.islink(path):
                for root, dirs, files in os.walk(path):
                    found.update(os.path.join(root, n) for n in dirs + files)
    return sorted(found)


def dpkg_state(package: str = "iservice") -> str:
    cp = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                        text=True, check=False)
    return cp.stdout.strip() if cp.returncode == 0 else "unknown"


def snapshot() -> dict[str, Any]:
    try:
        group: str | None = grp.getgrnam(GROUP).gr_name
    except KeyError:
        group = None
    return {"paths": paths(), "group": group, "dpkg": dpkg_state()}


def added(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What ``after`` has that ``before`` had not, one line each."""
    out = [f"path {p}" for p in sorted(set(after["paths"]) - set(before["paths"]))]
    if after["group"] and not before["group"]:
        out.append(f"group {after['group']}")
    if after["dpkg"] != before["dpkg"] and "not-installed" not in after["dpkg"]:
        out.append(f"dpkg state {after['dpkg']!r} (was {before['dpkg']!r})")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "snapshot":
        print("usage: python3 -m tests.package.leftovers snapshot FILE", file=sys.stderr)
        return 2
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(snapshot(), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
