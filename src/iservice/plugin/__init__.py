"""iservice's openvpn plugin (``iservice_plugin.c``, built into ``iservice_plugin.so``).

The plugin is not a Python module: openvpn ``dlopen()``s it (``--plugin PATH FD``).
``pip install .`` compiles it when a C compiler and openvpn's ``openvpn-plugin.h`` are
there (``setup.py``); without them the install still succeeds and the service uses
the script hook (``iservice.hook``) instead.
"""

from __future__ import annotations

import os

PLUGIN_FILE = "iservice_plugin.so"


def plugin_path() -> str | None:
    """The installed plugin, or None when it was not built."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), PLUGIN_FILE)
    return path if os.path.isfile(path) else None
