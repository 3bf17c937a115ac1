"""A throw-away network lab for iservice's integration tests, campaign, bench and demo
(stdlib only).

``Lab`` builds two network namespaces joined by a veth pair, a real openvpn server in the
"server" namespace, lab users and groups, and the wrappers that run commands in the "client"
namespace: as root, as a lab user, or inside the *service wrapper* (a private mount namespace
where ``/dev/net/tun`` is a 0666 node, because the host's node is 0600; see SPEC §9).
Everything it creates is removed in ``close()`` / ``__exit__``, also after errors: processes
are ended by their own PID (SIGTERM, wait, SIGKILL), then namespaces, users, groups and files.

The package, by concern:

=================  ==================================================================
``procs.py``       running commands, waiting, LabProcess, ending processes by PID
``pki.py``         the throw-away CA and certificates (openssl)
``accounts.py``    lab users and groups (shadow-utils), commands run as a user
``core.py``        ``LabCore``: the lab's life, its manifest and the sweep of killed
                   runs, files, users, the command wrappers (client, service)
``network.py``     ``NetworkLab``: the namespaces, veth, addresses (topology there),
                   a DNS responder, inspection (links, routes, ping)
``openvpn.py``     ``OpenVpnLab``: openvpn servers and clients, their handles,
                   configs, the auth and env-dump scripts
``hung.py``        ``hung_mount``: a test double of a file system that never answers
``files/``         the scripts and configuration the lab runs (shell, Python, openssl)
=================  ==================================================================

Usage::

    pki = Pki.create(Path(tempfile.mkdtemp()))
    with Lab(pki) as lab:
        lab.start_server('push "route 10.9.0.0 255.255.0.0"')
        cfg = lab.write_client_config()
        vpn = lab.start_client(cfg)            # root openvpn in the client ns
        assert lab.ping("10.9.0.1")
"""

from __future__ import annotations

from tests.lab.accounts import USER_PATH, User
from tests.lab.core import MANIFEST, TUN_DEVICE, TUN_MAJOR, TUN_MINOR, LabCore
from tests.lab.network import NetworkLab
from tests.lab.openvpn import INIT_DONE, OpenVPNHandle, OpenVpnLab, ServerHandle
from tests.lab.pki import OPENVPN, Pki
from tests.lab.procs import (
    REQUIRED_TOOLS,
    LabError,
    LabProcess,
    log,
    missing_tools,
    parse_env_dump,
    run,
    tail,
    wait_until,
)


class Lab(OpenVpnLab):
    """Two namespaces, a veth, openvpn servers, lab users; all removed at exit."""


__all__ = [
    "INIT_DONE", "MANIFEST", "OPENVPN", "REQUIRED_TOOLS", "TUN_DEVICE", "TUN_MAJOR",
    "TUN_MINOR", "USER_PATH", "Lab", "LabCore", "LabError", "LabProcess", "NetworkLab",
    "OpenVPNHandle", "OpenVpnLab", "Pki", "ServerHandle", "User", "log", "missing_tools",
    "parse_env_dump", "run", "tail", "wait_until",
]
