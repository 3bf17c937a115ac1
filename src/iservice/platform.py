"""The factory of the platform: the one module that imports a backend (``linux/``).

``docs/architecture.md`` states the rule and ``tests/unit/test_architecture.py`` checks
it: the core reaches the operating system only through the ``Platform`` built here
(``ports.py`` says what each port must do).  A Windows backend is a folder next to
``linux/`` and a second function here.
"""

from __future__ import annotations

import sys

from iservice.ports import Platform


def current() -> Platform:
    """The platform this process runs on."""
    if sys.platform.startswith("linux"):
        return linux()
    raise RuntimeError(f"iservice has no backend for {sys.platform}")


def linux() -> Platform:
    from iservice.linux import cgroup, channel, dns, firewall, identity, launch, netlink, tun
    return Platform(name="linux", network=netlink.Rtnl, tuns=tun,
                    process_groups=cgroup.Cgroups.find, firewall=firewall, dns=dns,
                    launcher=launch, identity=identity, channel=channel)
