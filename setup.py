"""Builds the openvpn plugin (src/iservice/plugin/iservice_plugin.c) during ``pip install``.

Everything else is in pyproject.toml.  The plugin is a plain shared object that openvpn
``dlopen()``s, not a Python extension: it gets a fixed file name (no ABI suffix) and
links against nothing but libc.  ``optional=True``: without a compiler or openvpn's
header the install goes on without it, and the service falls back to the script hook.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildPlugin(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + ".so"

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # no PyInit_*: openvpn looks up openvpn_plugin_*_v3 itself


setup(
    ext_modules=[Extension(
        "iservice.plugin.iservice_plugin",
        sources=["src/iservice/plugin/iservice_plugin.c"],
        extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
        optional=True,
    )],
    cmdclass={"build_ext": BuildPlugin},
)
