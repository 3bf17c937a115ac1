"""Builds iservice's three C parts during ``pip install``: the openvpn plugin
(src/iservice/plugin/iservice_plugin.c), the ``iservice-runas`` helper that starts
openvpn as the user (src/iservice/plugin/iservice_runas.c), and ``iservice_spawn.so``
(src/iservice/plugin/iservice_spawn.c), which starts that helper inside the session's
cgroup.

Everything else is in pyproject.toml.  The plugin is a plain shared object that openvpn
``dlopen()``s, not a Python extension: it gets a fixed file name (no ABI suffix) and
links against nothing but libc.  ``optional=True``: without a compiler or openvpn's
header the install goes on without it (with a warning), and the service falls back to
the script hook.  The plugin's layouts (``iservice_layout.h``) are generated here from
their Python declaration (``iservice/wire/msg.py``), so they are written down once.
The helper is a small program installed next to it (statically linked when libc.a is
there: ~0.13 ms less per start, measured); without it the service uses util-linux's
``setpriv`` (linux/launch.py says what each costs).  The spawn library is a plain shared
object too, loaded with ``ctypes``; without it (or on a kernel or architecture where
``clone3`` cannot create a process in a cgroup) the helper joins the cgroup itself,
~14 ms slower per start (linux/spawn.py).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

RUNAS_SOURCE = "src/iservice/plugin/iservice_runas.c"
RUNAS_NAME = "iservice-runas"
C_FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra"]
LAYOUT_HEADER = "iservice_layout.h"


def warn_loudly(text: str) -> None:
    """A warning that stands out in a build log (pip shows it only with -v)."""
    bar = "*" * 78
    sys.stderr.write(f"\n{bar}\nWARNING (iservice): {text}\n{bar}\n\n")


class BuildPlugin(build_ext):
    def run(self) -> None:
        self.layout_header()
        super().run()
        self.build_runas()
        # The parts are optional, so a missing gcc or openvpn-plugin.h must at least be said.
        if not os.path.isfile(self.get_ext_fullpath("iservice.plugin.iservice_plugin")):
            warn_loudly("the openvpn plugin (iservice_plugin.so) was not built: gcc, "
                        "libc6-dev and openvpn's openvpn-plugin.h are needed; the service "
                        "will use the slower script hook (hook = script)")

    def layout_header(self) -> None:
        """``iservice_layout.h`` for the plugin, from the layouts' Python declaration."""
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
        from iservice.wire.msg import c_header
        include = os.path.join(self.build_temp, "include")
        os.makedirs(include, exist_ok=True)
        path, text = os.path.join(include, LAYOUT_HEADER), c_header()
        try:
            with open(path) as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:  # rewritten only when it changed: a newer header rebuilds the plugin
            with open(path, "w") as f:
                f.write(text)
        for ext in self.extensions:
            ext.include_dirs.append(include)
            ext.depends.append(path)

    def build_runas(self) -> None:
        """The helper program, next to the plugin; optional like the plugin."""
        out_dir = os.path.dirname(self.get_ext_fullpath("iservice.plugin.iservice_plugin"))
        try:
            objects = self.compiler.compile([RUNAS_SOURCE], output_dir=self.build_temp,
                                            extra_postargs=C_FLAGS)
            try:
                self.compiler.link_executable(objects, RUNAS_NAME, output_dir=out_dir,
                                              extra_preargs=["-static"])
            except Exception:  # no libc.a: a dynamic one works the same, a bit slower
                self.compiler.link_executable(objects, RUNAS_NAME, output_dir=out_dir)
        except Exception as exc:  # optional: the service falls back to setpriv
            warn_loudly(f"{RUNAS_NAME} was not built ({exc}): gcc and libc6-dev are "
                        "needed; the service will start openvpn via setpriv (slower)")

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + ".so"

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # no PyInit_*: openvpn looks up openvpn_plugin_*_v3 itself


setup(
    ext_modules=[Extension(
        "iservice.plugin.iservice_plugin",
        sources=["src/iservice/plugin/iservice_plugin.c"],
        extra_compile_args=[*C_FLAGS, "-fvisibility=hidden"],
        optional=True,
    ), Extension(
        # called by the service through ctypes; every symbol bound at load time, so the
        # vfork'ed child never runs the lazy binder
        "iservice.plugin.iservice_spawn",
        sources=["src/iservice/plugin/iservice_spawn.c"],
        extra_compile_args=[*C_FLAGS, "-fvisibility=hidden"],
        extra_link_args=["-Wl,-z,now"],
        optional=True,
    )],
    cmdclass={"build_ext": BuildPlugin},
)
