"""What one session's hook should know that openvpn 2.6 does not tell it (the facts).

``policy.redirect`` says where the facts come from (the approved config and
command line, and the ``PUSH_REPLY`` lines in openvpn's output).  This module
keeps them for one session and hands them to the hook: a memfd the service
writes, and a *read-only* descriptor of it that openvpn (and so every hook it
runs) inherits; ``--setenv ISERVICE_FACTS_FD n`` tells the hook which one.  The
facts are advice to an untrusted hook, not authority: the service checks every
message the hook then sends, exactly as if openvpn.exe had sent it.

Ordering: openvpn prints a ``PUSH_REPLY`` (and flushes) before it runs the
``up`` hook, the session reads all pending output before it decides a channel
batch (``Session._drain_output``), and the ``route-up`` hook runs only after
the ``up`` hook got its acks; so the ``route-up`` hook always reads facts that
include the last push.  The ``up`` event's own use of the facts (block-outside-dns →
add_wfp_block) needs the same care: the script hook's ~30 ms start-up hid the race,
the plugin is quicker than the service's next read, so it reads the facts only
after its first messages (MTU, addresses) were acknowledged — by then the session
has drained the output that preceded them.
"""

from __future__ import annotations

import contextlib
import os
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
            try:
                with open(opt[1], encoding="utf-8", errors="replace") as f:
                    text = f.read(MAX_CONFIG)
            except OSError:
                continue  # openvpn will say what is wrong with it
            options += config_options(text)
        else:
            options.append(opt)
    return options_facts(options)


class SessionFacts:
    def __init__(self, opts: OptionFacts) -> None:
        self.watcher = PushWatcher(opts.facts, opts.route_nopull)
        self.push_visible = opts.push_visible
        self.on_servers: Callable[[list[str]], None] | None = None
        self._fd = os.memfd_create("iservice-facts", os.MFD_CLOEXEC)
        self._write()
        # What openvpn inherits: the same file, opened read-only.
        self.child_fd: int | None = os.open(f"/proc/self/fd/{self._fd}",
                                            os.O_RDONLY | os.O_CLOEXEC)

    def _write(self) -> None:
        data = self.watcher.facts.encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def observe(self, line: str) -> None:
        """A line of openvpn's output (a ``SessionOutput`` observer)."""
        servers = list(self.watcher.servers)
        if not self.watcher.line(line):
            return
        self._write()
        if self.watcher.servers != servers and self.on_servers is not None:
            self.on_servers(list(self.watcher.servers))

    def launched(self) -> None:
        """openvpn has its copy: close ours."""
        if self.child_fd is not None:
            os.close(self.child_fd)
            self.child_fd = None

    def close(self) -> None:
        self.launched()
        with contextlib.suppress(OSError):
            os.close(self._fd)
