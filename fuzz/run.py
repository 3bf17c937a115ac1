#!/usr/bin/env python3
"""Coverage-guided fuzzing of iservice's parsers with atheris (libFuzzer).

    python fuzz/run.py                       # every target, 1,000,000 inputs each
    python fuzz/run.py --runs 20000 msg argv # some targets, fewer inputs
    python fuzz/run.py --jobs 2              # two targets at a time (one core each)

Run it with the venv's interpreter (atheris is in the ``fuzz`` extra, which
``scripts/setup.sh`` installs): ``/opt/iservice/bin/python fuzz/run.py``.

Each target (``fuzz/targets.py``) runs in its own process, seeded from
``fuzz/corpus/<target>/``; new inputs found go to a scratch corpus (printed; kept
with ``--keep``).  A crash is any exception other than the parser's own error
type, or a failed oracle; libFuzzer stops at the first one and writes the input
to ``fuzz/crashes/<target>-crash-<sha1>``.  The summary line per target gives
inputs run, seconds, inputs per second, coverage and crashes; the exit status is
0 only if every target ran its inputs without a crash.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_NAMES = ("startup", "msg", "env", "argv", "options", "settings", "profile", "control")
MAX_LEN = {"startup": 8200, "msg": 1800, "env": 4096, "argv": 512, "options": 512,
           "settings": 2048, "profile": 2048, "control": 4200}


def worker(target: str, libfuzzer_args: list[str]) -> None:
    """Inside the fuzzing process: instrument, then hand control to libFuzzer."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["iservice", "fuzz"]):
        from fuzz.targets import TARGETS
    fn = TARGETS[target]

    def one(data: bytes) -> None:
        fn(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


@dataclass
class Result:
    target: str
    runs: int
    seconds: float
    crashed: bool
    cov: str
    log: str
    returncode: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashed


def fuzz_one(target: str, runs: int, work: Path, seed: int, quiet: bool) -> Result:
    corpus = work / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    args = [f"-runs={runs}", f"-max_len={MAX_LEN[target]}", f"-seed={seed}",
            "-print_final_stats=1", f"-artifact_prefix={crashes}/{target}-",
            "-timeout=10", "-rss_limit_mb=2048", str(corpus), str(HERE / "corpus" / target)]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", target,
                           "--", *args], capture_output=True, text=True, errors="replace",
                          check=False, cwd=ROOT)
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    stat_runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    n = int(done[-1][0]) if done else int(stat_runs[-1]) if stat_runs else 0
    cov = re.findall(r"\bcov: (\d+) ft: (\d+)", log)
    crashed = "Uncaught Python exception" in log or "ERROR: libFuzzer" in log or \
        "== ERROR" in log
    if not quiet and (crashed or proc.returncode):
        sys.stderr.write(log[-6000:])
    return Result(target, n, seconds, crashed, f"cov {cov[-1][0]} ft {cov[-1][1]}" if cov else "",
                  log, proc.returncode)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        rest = argv[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        worker(argv[1], rest)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET",
                    help=f"some of {', '.join(TARGET_NAMES)} (default: all)")
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at the same time")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch corpus (new interesting inputs)")
    ap.add_argument("--quiet", action="store_true")
    opts = ap.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install '.[fuzz]' (scripts/setup.sh does it)",
              file=sys.stderr)
        return 2
    targets = opts.targets or list(TARGET_NAMES)
    if unknown := [t for t in targets if t not in TARGET_NAMES]:
        ap.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGET_NAMES)}")
    work = Path(tempfile.mkdtemp(prefix="iservice-fuzz-"))
    try:
        with ThreadPoolExecutor(max(1, opts.jobs)) as pool:
            results = list(pool.map(
                lambda t: fuzz_one(t, opts.runs, work, opts.seed, opts.quiet), targets))
    finally:
        if opts.keep:
            print(f"scratch corpus kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'target':<10} {'inputs':>10} {'seconds':>8} {'per s':>8}  coverage  crashes")
    for r in results:
        rate = r.runs / r.seconds if r.seconds else 0.0
        print(f"{r.target:<10} {r.runs:>10} {r.seconds:>8.1f} {rate:>8.0f}  "
              f"{r.cov or '-':<18} {1 if r.crashed else 0}")
    bad = [r for r in results if not r.ok or r.runs < opts.runs]
    for r in bad:
        print(f"FAILED {r.target}: rc={r.returncode} runs={r.runs} crashed={r.crashed}",
              file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
