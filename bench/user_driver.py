"""A lab user's process that sends requests to the service on the bench's command
(one JSON line in, one out).  Run as the user: ``python -I user_driver.py SOCKET``
(``bench/common.py``'s ``Driver``).  Times are ``time.monotonic()``: one clock for the
whole machine, so the bench compares them with its own and the kernel's stamps."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from typing import Any

from iservice.wire import startup as w

path = sys.argv[1]
conns: list[socket.socket] = []


def start(workdir: str, options: str, wait_end: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.connect(path)
    s.send(w.encode_startup(w.StartupData(workdir=workdir, options=options, stdin="")))
    raw = s.recv(65536)
    t1 = time.monotonic()
    r = w.decode_reply(raw)
    t2: float | None = None
    if wait_end:
        while s.recv(65536):
            pass
        t2 = time.monotonic()
        s.close()
    else:
        conns.append(s)
    return {"t0": t0, "t1": t1, "t2": t2, "pid": getattr(r, "pid", None),
            "error": None if hasattr(r, "pid") else repr(r)}


def burst(workdir: str, options: str, n: int) -> dict[str, Any]:
    socks: list[socket.socket] = []
    t0: dict[int, float] = {}
    out: list[dict[str, Any]] = []
    for _i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        t0[s.fileno()] = time.monotonic()
        s.connect(path)
        s.send(w.encode_startup(w.StartupData(workdir=workdir, options=options, stdin="")))
        socks.append(s)
    waiting = {s.fileno(): s for s in socks}
    while waiting:
        r, _, _ = select.select(list(waiting), [], [], 30)
        if not r:
            break
        for fd in r:
            s = waiting.pop(fd)
            raw = s.recv(65536)
            t1 = time.monotonic()
            rep = w.decode_reply(raw)
            out.append({"t0": t0[fd], "t1": t1, "pid": getattr(rep, "pid", None),
                        "error": None if hasattr(rep, "pid") else repr(rep)})
            conns.append(s)
    return {"results": out, "missing": len(waiting)}


def spawn(argv: list[str]) -> dict[str, Any]:
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)
    t1 = time.monotonic()
    p.wait()
    return {"t0": t0, "t1": t1, "t2": time.monotonic()}


for line in sys.stdin:
    req = json.loads(line)
    op = req.pop("op")
    if op == "start":
        res = start(**req)
    elif op == "burst":
        res = burst(**req)
    elif op == "spawn":
        res = spawn(**req)
    elif op == "close":
        for c in conns:
            c.close()
        conns.clear()
        res = {}
    else:
        res = {"error": f"unknown op {op!r}"}
    print(json.dumps(res), flush=True)
