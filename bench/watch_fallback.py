"""bench/events.py's time-stamping child without a C compiler (bench/c/watch.c in Python:
its stamps cost the machine more CPU).  Run as ``python -I -S watch_fallback.py FD``."""

import ctypes
import os
import socket
import struct
import sys
import time

ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: never outlives the bench
s = socket.socket(fileno=int(sys.argv[1]))
head, now, recv, write = struct.Struct("=dI"), time.monotonic, s.recv, os.write
while True:
    try:
        data = recv(1 << 20)
    except OSError as exc:  # ENOBUFS: events were lost; the bench says so loudly
        data = b"LOST " + str(exc).encode()
    if not data:
        break
    write(1, head.pack(now(), len(data)) + data)
