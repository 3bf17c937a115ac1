"""iservice lab: ask SERVER (port 53) for NAME's A record (``Lab.dns_query``).

argv: SERVER NAME udp|tcp TIMEOUT; prints the address answered, exits 1 when nothing
usable came back.  Run as ``python -I -c <this text>``, so that a lab user needs no
access to this file (the checkout may live where users cannot read).
"""

import socket
import struct
import sys

server, name, proto, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
query += struct.pack("!HH", 1, 1)
family = socket.AF_INET6 if ":" in server else socket.AF_INET
try:
    if proto == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.sendto(query, (server, 53))
        reply = s.recv(4096)
    else:
        s = socket.create_connection((server, 53), timeout=timeout)
        s.sendall(struct.pack("!H", len(query)) + query)
        size = struct.unpack("!H", s.recv(2))[0]
        reply = b""
        while len(reply) < size:
            reply += s.recv(size - len(reply))
except OSError:
    sys.exit(1)
if struct.unpack_from("!H", reply, 6)[0]:
    print(socket.inet_ntoa(reply[-4:]))
