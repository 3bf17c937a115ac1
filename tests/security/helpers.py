"""Helpers of the security suite (fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

from tests.isv import PYTHON, Service
from tests.lab import Lab, User


def snapshot(lab: Lab, svc: Service, user: User | None = None) -> dict[str, Any]:
    """Everything a session could change, as comparable data."""
    nft = lab.ns_run(lab.client_ns, ["nft", "list", "ruleset"], check=False)
    procs: list[int] = []
    if user is not None:
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if d.stat().st_uid == user.uid:
                        procs.append(int(d.name))
                except OSError:
                    pass
    return {
        "routes4": lab.routes(4), "routes6": lab.routes(6),
        "links": sorted(x["ifname"] for x in lab.links()),
        # addresses without their changing flags (DAD "tentative", lifetimes)
        "addrs": {x["ifname"]: sorted((a["family"], a["local"], a["prefixlen"])
                                      for a in lab.addrs(x["ifname"])) for x in lab.links()},
        "nft": nft,
        "tuns": svc.tuns(),
        "journal": svc.journal(),
        "user_processes": sorted(procs),
        "resolv_conf": Path("/etc/resolv.conf").read_bytes(),
    }


RAW_CLIENT = r"""
import base64, json, socket, sys, time
path, cases = sys.argv[1], json.loads(sys.stdin.read())
out = []
for payload in cases:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(path)
    data = base64.b64decode(payload)
    if data:
        s.send(data)
    else:
        s.send(b"")
    replies = []
    t0 = time.monotonic()
    while True:
        r = s.recv(65536)
        if not r:
            break
        replies.append(base64.b64encode(r).decode())
    out.append({"replies": replies, "seconds": time.monotonic() - t0})
    s.close()
print(json.dumps(out))
"""


def raw_requests(lab: Lab, svc: Service, user: User, payloads: list[bytes],
                 timeout: float = 120) -> list[dict[str, Any]]:
    """Send each payload on its own connection, as ``user``; every reply of each."""
    cases = json.dumps([base64.b64encode(p).decode() for p in payloads])
    cp = lab.run_client([PYTHON, "-I", "-c", RAW_CLIENT, str(svc.socket_path)],
                        user=user, timeout=timeout, input=cases)
    assert cp.returncode == 0, cp.stderr
    out: list[dict[str, Any]] = json.loads(cp.stdout)
    for o in out:
        o["replies"] = [base64.b64decode(r) for r in o["replies"]]
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def audit_lines(log: str, uid: int) -> list[str]:
    """The audit lines of ``uid`` in a service's log (not the audit-suppressed ones)."""
    return [x for x in log.splitlines() if " iservice.audit: event=" in x and f" uid={uid} " in x
            and "event=audit-suppressed" not in x]


def suppressed(log: str, uid: int) -> dict[str, int]:
    """Lines of ``uid`` left out, by event, from its audit-suppressed lines."""
    out: dict[str, int] = {}
    for x in log.splitlines():
        if "event=audit-suppressed" in x and f" uid={uid} " in x:
            found = re.search(r" count=(\d+) events=(\S+)", x)
            assert found is not None, x
            count, events = int(found.group(1)), found.group(2)
            pairs = [e.rsplit(":", 1) for e in events.split(",")]
            assert sum(int(n) for _, n in pairs) == count, x
            for name, n in pairs:
                out[name] = out.get(name, 0) + int(n)
    return out
