"""bench/memory.py's service wrapper: ``iservice serve`` with a probe thread.

Run as the service: ``python -X tracemalloc=1 service_probe.py DIR serve --settings …``.
When the bench creates ``DIR/req-K``, the thread runs a full garbage collection and
writes ``DIR/resp-K``: the memory of the live Python allocations tracemalloc traces
(objects, their dicts and buffers; not SQLite's or the kernel's), VmRSS, and the source
lines whose live allocations grew most since the previous request.
Bench only: the service itself has no such hook.
"""

import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path


def probe(directory: Path) -> None:
    k = 0
    previous: tracemalloc.Snapshot | None = None
    while True:
        if (directory / f"req-{k}").exists():
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else -1
            top: list[tuple[str, int, int]] = []
            if tracemalloc.is_tracing():
                snap = tracemalloc.take_snapshot()
                if previous is not None:
                    top = [(str(st.traceback[0]), st.size_diff, st.count_diff)
                           for st in snap.compare_to(previous, "lineno")[:12]]
                previous = snap
            rss = 0
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
            tmp = directory / f"resp-{k}.tmp"
            tmp.write_text(json.dumps({"traced": traced, "rss": rss, "top": top}))
            os.rename(tmp, directory / f"resp-{k}")
            k += 1
        time.sleep(0.02)


directory = Path(sys.argv.pop(1))
threading.Thread(target=probe, args=(directory,), name="bench-probe", daemon=True).start()
from iservice.cli import main  # noqa: E402  (after the probe: tracemalloc sees every import)

sys.argv[0] = "iservice"
sys.exit(main())
