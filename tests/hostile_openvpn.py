#!/usr/bin/env python3
"""TEST DOUBLE for openvpn: a user-owned program that writes to the session channel.

The user owns openvpn's process and can make it write anything to the channel
(ptrace, a patched binary); this stand-in plays that hostile openvpn.  The
service starts it as ``exe_path`` with the user's rights, exactly like openvpn.
It finds the channel descriptor in the ``--plugin PATH FD`` option (or, with
``hook = script``, the ``--up`` hook command) the service appended, then runs
the scenario in the file given by ``--config`` (a Python snippet, placed in
config_dir by the test) with these names:

  chan       the channel socket          send(raw) -> ack tuple or None
  tun, tun_index                         the session's tun (from --dev)
  m          iservice.wire.msg           done(**results) writes the results file

After the scenario it stays alive until SIGTERM/SIGKILL, like a connected openvpn.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time


def main() -> None:
    argv = sys.argv[1:]
    opts: dict[str, str] = {}
    for i, a in enumerate(argv):
        if a.startswith("--") and i + 1 < len(argv):
            opts[a[2:]] = argv[i + 1]  # the service's options come last and win
    if "--plugin" in argv:
        fd = int(argv[argv.index("--plugin") + 2])
    else:
        fd = int(opts["up"].split()[-1])
    chan = socket.socket(fileno=fd)
    chan.settimeout(5)
    tun = opts["dev"]
    from iservice.wire import msg as m

    def send(raw: bytes) -> tuple[int, int] | None:
        chan.send(raw)
        try:
            ack = chan.recv(64)
        except (TimeoutError, OSError):
            return None
        if len(ack) < 32:
            return None
        _t, _size, mid, err = struct.unpack_from("<I4xQi4xI", ack)
        return mid, err

    results: dict[str, object] = {}

    def done(**kw: object) -> None:
        results.update(kw)
        name = os.path.basename(opts["config"]) + ".result"
        path = os.path.join(os.environ["HOME"], name)
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.rename(path + ".tmp", path)

    with open(opts["config"]) as f:
        scenario = f.read()
    env = {"chan": chan, "send": send, "tun": tun, "tun_index": socket.if_nametoindex(tun),
           "m": m, "done": done, "socket": socket, "struct": struct}
    exec(compile(scenario, opts["config"], "exec"), env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
