#!/usr/bin/env python3
"""Route add/delete rate of iservice.linux.netlink in a fresh network namespace.

Run as root:  PYTHONPATH=src python bench/bench_netlink.py [--family 4|6] [--no-gateway] [N ...]

For each N: build N ``Route`` objects (validated), add them with one ``routes_apply``,
check they are all listed, delete them with one ``routes_apply``; prints routes/s.
The namespace (``isvc-nl-bench-<random>``) and its tun are removed at the end.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from iservice.linux.netlink import (
    AF_INET,
    AF_INET6,
    RTPROT_ISERVICE,
    Route,
    rtnl_in_netns,
)
from iservice.linux.tun import create_tun


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("counts", nargs="*", type=int, default=[1000, 10_000, 30_000])
    ap.add_argument("--family", choices=("4", "6"), default="4")
    ap.add_argument("--no-gateway", action="store_true", help="routes via dev only")
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs per count")
    args = ap.parse_args()

    name = "isvc-nl-bench-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with rtnl_in_netns(f"/run/netns/{name}") as rt:
            tun = create_tun("istun0", 65534, 65534, netns_path=f"/run/netns/{name}")
            rt.link_set(tun, up=True)
            v6 = args.family == "6"
            gw: IPv4Address | IPv6Address | None
            if v6:
                rt.addr_add(tun, IPv6Address("2001:db8::2"), 64)
                gw, fam, base = IPv6Address("2001:db8::1"), AF_INET6, int(IPv6Address("fd00::"))
            else:
                rt.addr_add(tun, IPv4Address("10.8.0.2"), 24)
                gw, fam, base = IPv4Address("10.8.0.1"), AF_INET, int(IPv4Address("10.64.0.0"))
            if args.no_gateway:
                gw = None
            print(f"IPv{args.family}, {'no gateway' if gw is None else f'via {gw}'}, metric 10,"
                  f" tun, best of {args.repeat}")
            print(f"{'N':>7} {'build+validate/s':>17} {'add routes/s':>13} {'delete routes/s':>16}")
            for n in args.counts:
                best = [0.0, 0.0, 0.0]
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    if v6:
                        routes = [Route(IPv6Network((base + (i << 64), 64)), tun, gw, 10)
                                  for i in range(n)]
                    else:
                        routes = [Route(IPv4Network((base + i, 32)), tun, gw, 10)
                                  for i in range(n)]
                    t1 = time.perf_counter()
                    add = rt.routes_apply([(True, r) for r in routes])
                    t2 = time.perf_counter()
                    listed = sum(r.protocol == RTPROT_ISERVICE for r in rt.route_list(fam))
                    t3 = time.perf_counter()
                    delete = rt.routes_apply([(False, r) for r in routes])
                    t4 = time.perf_counter()
                    if set(add) != {0} or set(delete) != {0} or listed != n:
                        print(f"FAILED: add {set(add)} delete {set(delete)} listed {listed}")
                        return 1
                    for k, dt in enumerate((t1 - t0, t2 - t1, t4 - t3)):
                        best[k] = max(best[k], n / dt)
                print(f"{n:>7} {best[0]:>17,.0f} {best[1]:>13,.0f} {best[2]:>16,.0f}")
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
