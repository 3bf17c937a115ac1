"""iservice lab: a tiny DNS responder (``Lab.start_dns_server``).

argv: ANSWER ADDR...: UDP and TCP port 53 on each ADDR (one socket per address, so a
reply comes from the address asked); every A query is answered with ANSWER, AAAA with
no record; each query is printed as ``query NAME from ADDR``; ``ready`` once all
sockets listen.
"""

import socket
import struct
import sys
import threading

ANSWER = socket.inet_aton(sys.argv[1])


def reply(q: bytes, src: str) -> bytes:
    tid, flags, _ = struct.unpack_from("!HHH", q)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode(errors="replace"))
        i += 1 + q[i]
    (qtype,) = struct.unpack_from("!H", q, i + 1)
    question = q[12:i + 5]
    print(f"query {'.'.join(labels)} from {src}", flush=True)
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + ANSWER
    head = struct.pack("!HHHHHH", tid, 0x8180 | (flags & 0x0100), 1, 1 if answer else 0, 0, 0)
    return head + question + answer


def udp(s: socket.socket) -> None:
    while True:
        q, addr = s.recvfrom(4096)
        try:
            s.sendto(reply(q, addr[0]), addr)
        except Exception as exc:
            print("bad query", exc, flush=True)


def tcp_conn(c: socket.socket, addr: tuple[str, int]) -> None:
    with c:
        (n,) = struct.unpack("!H", c.recv(2))
        q = b""
        while len(q) < n:
            q += c.recv(n - len(q))
        r = reply(q, addr[0])
        c.sendall(struct.pack("!H", len(r)) + r)


def tcp(s: socket.socket) -> None:
    while True:
        c, addr = s.accept()
        threading.Thread(target=tcp_conn, args=(c, addr), daemon=True).start()


for address in sys.argv[2:]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    u = socket.socket(family, socket.SOCK_DGRAM)
    t = socket.socket(family, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind((address, 53))
    t.bind((address, 53))
    t.listen(16)
    threading.Thread(target=udp, args=(u,), daemon=True).start()
    threading.Thread(target=tcp, args=(t,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
