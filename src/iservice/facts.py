"""What the producer should know that openvpn 2.6 does not tell it (the facts).

``policy.redirect`` says where the facts come from (the approved config and
command line, and the ``PUSH_REPLY`` lines in openvpn's output).  This module
keeps them for one session; the producer (``produce.py``) reads them when an
environment openvpn forwarded is complete.  The facts are advice, not authority:
the service checks every request made with them, exactly as if openvpn.exe had
sent it.

Ordering: openvpn prints a ``PUSH_REPLY`` (and flushes) before it calls the plugin
(or runs the hook) at ``up``; the plugin sends the environment only then, and the
session reads all of openvpn's pending output before it makes the requests
(``Session._env_context``).  So the ``up`` and ``route-up`` environments always meet
facts that include the last push, however quick the plugin is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from iservice.policy.redirect import (
    OptionFacts,
    PushWatcher,
    argv_options,
    config_options,
    options_facts,
)

MAX_CONFIG = 1 << 20


def read_option_facts(argv: Sequence[str]) -> OptionFacts:
    """Facts from openvpn's argv, with each ``--config FILE`` read in its place.

    Call it with the user's file-system rights (``run_as_fs_user``): the file is the
    one the validator approved, and it is read as the user reads it.  A ``config``
    directive inside a config file is not followed (documented limit).
    """
    options: list[list[str]] = []
    for opt in argv_options(argv):
        if opt[0] == "config" and len(opt) > 1:
            text = _read_config(opt[1])
            if text is not None:
                options += config_options(text)
        else:
            options.append(opt)
    return options_facts(options)


def _read_config(path: str) -> str | None:
    """A config file's text; None if it cannot be read (openvpn will say why) or is not
    a regular file.  Opened with ``O_NONBLOCK``: an admin's ``--config`` may name a
    FIFO (or ``/dev/stdin``), and a plain ``open`` would wait for a writer — holding one
    of the few as-user check slots every user's start needs (``identity.FS_USER_THREADS``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, encoding="utf-8", errors="replace", closefd=False) as f:
            return f.read(MAX_CONFIG)
    except OSError:
        return None
    finally:
        os.close(fd)


class SessionFacts:
    def __init__(self, opts: OptionFacts) -> None:
        self.watcher = PushWatcher(opts.facts, opts.route_nopull)
        self.push_visible = opts.push_visible
        self.on_servers: Callable[[list[str]], None] | None = None

    def observe(self, line: str) -> None:
        """A line of openvpn's output (a ``SessionOutput`` observer)."""
        servers = list(self.watcher.servers)
        if not self.watcher.line(line):
            return
        if self.watcher.servers != servers and self.on_servers is not None:
            self.on_servers(list(self.watcher.servers))
