"""The command: ``bash bench/run.sh [--quick] [--only P2,MEM] [--counts …] [--repeat R]``.

Builds the namespace lab of the tests, runs every measurement with its peer in the same
run, prints the Markdown table and writes it with the raw samples.  A full run (every
row, default sizes) goes to ``bench/results/<cpu-slug>.md`` and ``.json``, the latest
per CPU model; a quick or partial run to the system's temporary directory (``--out``
says otherwise).  Exit status 1 when something did not run, or a full run misses a
target.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.lab import OPENVPN, Lab, Pki

from bench import memory, neighbour, p1_start, p2_routes, p3_concurrency, p4_undo
from bench.common import Bench, Config
from bench.report import RESULTS, Machine, Row, Run

# name for --only → the measurement, in the order they run
PARTS: dict[str, Callable[[Bench], None]] = {
    "HOOK": p1_start.hook_startup,
    "P1": p1_start.p1,
    "P4": p4_undo.p4,
    "P3": p3_concurrency.p3,
    "MEM": memory.memory_per_route,
    "NOISY": neighbour.noisy_neighbour,
    "P2": p2_routes.p2,
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small N and few repeats: checks that the benchmark runs (CI)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--counts", help="P2 route counts, e.g. 100,1000,10000,30000,1000v6")
    ap.add_argument("--repeat", type=int, help="P2 repeats per count (median)")
    ap.add_argument("--out", help="writes OUT.md and OUT.json (default: see above)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (namespaces, users, openvpn)", file=sys.stderr)
        return 2
    cfg = Config.quick_run() if args.quick else Config.full()
    if args.counts:
        cfg.p2_counts = [(int(c.removesuffix("v6")), c.endswith("v6"))
                         for c in args.counts.split(",")]
    if args.repeat:
        cfg.p2_repeat = cfg.p2_repeat_large = args.repeat
    only = {x.strip().upper() for x in args.only.split(",")}
    unknown = only - set(PARTS)
    if unknown:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    full = not args.quick and only == set(PARTS) and not args.counts and not args.repeat
    machine = Machine.here(OPENVPN)
    started = datetime.datetime.now(datetime.UTC)
    load0 = os.getloadavg()[0]  # other work on the machine skews every figure: say how much
    t0 = time.monotonic()
    pki_dir = Path(tempfile.mkdtemp(prefix="isv-bench-pki-", dir="/tmp"))
    rows: list[Row] = []
    try:
        pki = Pki.create(pki_dir)
        with Lab(pki) as lab:
            lab.write_client_config("approved.ovpn", "verb 1\n")
            server = lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                                      'push "route-ipv6 fd00:9::/64"\n')
            bench = Bench(lab, cfg)
            try:
                for name, part in PARTS.items():
                    if name not in only:
                        continue
                    try:
                        part(bench)
                    except Exception as exc:  # the other parts still run; the row says
                        traceback.print_exc()
                        bench.add(Row(f"{name}: did not run", None, None, "", "works", False,
                                      note=f"error: {str(exc).splitlines()[0][:160]}"))
            finally:
                rows = bench.rows
                bench.close()
                server.stop()
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)
    mode = "quick" if cfg.quick else "full" if full else "partial"
    run = Run(command=shown_command(sys.argv[1:] if argv is None else argv), mode=mode,
              started=started.isoformat(),
              minutes=(time.monotonic() - t0) / 60, load=(load0, os.getloadavg()[0]),
              machine=machine, rows=[r.to_json() for r in rows])
    text = run.markdown()
    print("\n" + text)
    if args.out:
        out = Path(args.out)
    elif full:
        out = RESULTS / machine.slug
    else:
        out = Path(tempfile.gettempdir()) / f"iservice-bench-{mode}"
    run.write(out)
    print(f"written: {out.with_suffix('.md')} and .json", flush=True)
    broken = [r for r in rows if r.figure is None and r.ok is False]  # did not run
    failed = [r for r in rows if r.ok is False]
    return 1 if broken or (failed and not cfg.quick) else 0


def shown_command(argv: Sequence[str]) -> str:
    """The command as the table's header shows it (without ``--out``, a local path)."""
    shown: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            shown.append(a)
    return " ".join(["bash bench/run.sh", *shown])
