"""iservice's C parts: the openvpn plugin (``iservice_plugin.c``, built into
``iservice_plugin.so``), the ``iservice-runas`` helper (``iservice_runas.c``) that
starts openvpn as the user (``iservice.linux.launch``), and ``iservice_spawn.so``
(``iservice_spawn.c``), which the service calls to create that helper's process
inside the session's cgroup (``iservice.linux.spawn``).

The plugin is not a Python module: openvpn ``dlopen()``s it (``--plugin PATH FD``).
``pip install .`` compiles it when a C compiler and openvpn's ``openvpn-plugin.h`` are
there (``setup.py``); without them the install still succeeds and the service uses
the script hook (``iservice.hook``) instead, ``setpriv`` instead of the helper, and
the helper's own cgroup join instead of the spawn library.
"""

from __future__ import annotations

import os

PLUGIN_FILE = "iservice_plugin.so"
RUNAS_FILE = "iservice-runas"
SPAWN_FILE = "iservice_spawn.so"


def _installed(name: str) -> str | None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    return path if os.path.isfile(path) else None


def plugin_path() -> str | None:
    """The installed plugin, or None when it was not built."""
    return _installed(PLUGIN_FILE)


def runas_path() -> str | None:
    """The installed ``iservice-runas`` helper, or None when it was not built."""
    return _installed(RUNAS_FILE)


def spawn_library_path() -> str | None:
    """The installed ``iservice_spawn.so``, or None when it was not built."""
    return _installed(SPAWN_FILE)
