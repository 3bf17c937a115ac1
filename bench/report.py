"""Rows, the Markdown table, and the machine every table is measured on.

Every table carries the CPU model, its core count, the kernel and the load average at
the start and end of the run; a full run's table is kept per CPU model in
``bench/results/<cpu-slug>.md`` and ``.json`` (``bench/readme.py`` puts the latest of
each CPU model into the README's "Performance" section).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    name: str
    figure: float | None
    peer: float | None
    unit: str
    target: str
    ok: bool | None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.peer:
            return None
        return self.figure / self.peer

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "figure": self.figure, "peer": self.peer,
                "unit": self.unit, "ratio": self.ratio, "target": self.target, "ok": self.ok,
                "note": self.note, "samples": self.samples}


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "∞"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.2f} s"
    if unit == "ms":
        return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "MB":
        return f"{v:.1f} MB"
    if unit == "B/route":
        return f"{v:.0f} B/route"
    return f"{v:g} {unit}"


HEADER = ("| benchmark | iservice | peer (same run) | ratio | target | result |\n"
          "|---|---|---|---|---|---|")


def table_line(r: Row | dict[str, Any]) -> str:
    d = r.to_json() if isinstance(r, Row) else r
    ratio = "–" if d["ratio"] is None else f"{d['ratio']:.2f}"
    result = {True: "pass", False: "**FAIL**", None: "info"}[d["ok"]]
    name = d["name"] + (f" ({d['note']})" if d["note"] else "")
    return (f"| {name} | {fmt(d['figure'], d['unit'])} | {fmt(d['peer'], d['unit'])} "
            f"| {ratio} | {d['target']} | {result} |")


def table(rows: Sequence[Row | dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(table_line(r) for r in rows)])


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p99(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]  # nearest rank


# --------------------------------------------------------------------------- the machine


@dataclass
class Machine:
    cpu: str  # "model name" of /proc/cpuinfo
    cpu_id: str  # family / model / stepping: a VM's model name can hide the generation
    cores: int  # online CPUs the bench can use
    hypervisor: str  # lscpu's "Hypervisor vendor", "" on bare metal
    kernel: str
    os: str
    mem_gb: float
    openvpn: str
    python: str

    @classmethod
    def here(cls, openvpn: str = "openvpn") -> Machine:
        info: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break  # the first processor is enough
        hypervisor = ""
        with contextlib.suppress(OSError):
            out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False,
                                 env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")})
            for line in out.stdout.splitlines():
                if line.startswith("Hypervisor vendor:"):
                    hypervisor = line.split(":", 1)[1].strip()
        os_name = "?"
        with contextlib.suppress(OSError):
            for line in Path("/etc/os-release").read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip('"')
        ovpn = "?"
        with contextlib.suppress(OSError):
            ovpn = subprocess.run([openvpn, "--version"], capture_output=True, text=True,
                                  check=False).stdout.split("\n")[0].split(" [")[0]
        cpu_id = ", ".join(f"{k} {info[k]}" for k in ("cpu family", "model", "stepping")
                           if k in info)
        return cls(cpu=info.get("model name", platform.processor() or "?"), cpu_id=cpu_id,
                   cores=len(os.sched_getaffinity(0)), hypervisor=hypervisor,
                   kernel=platform.release(), os=os_name,
                   mem_gb=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30, 1),
                   openvpn=ovpn, python=platform.python_version())

    @property
    def slug(self) -> str:
        """The results file's name: the CPU model; with its family and model numbers
        when the name has no model number (``AMD EPYC`` in a VM)."""
        text = self.cpu
        if not re.search(r"\d", text) and self.cpu_id:
            text += " " + self.cpu_id.replace("cpu family", "family").replace(", stepping",
                                                                               " stepping")
            text = re.sub(r" stepping \S+", "", text)
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown-cpu"

    def describe(self) -> str:
        cpu = f"{self.cores} × {self.cpu}"
        extra = [x for x in (self.cpu_id, self.hypervisor and f"{self.hypervisor} guest") if x]
        if extra:
            cpu += f" ({'; '.join(extra)})"
        return (f"{cpu}, {self.mem_gb:.0f} GB RAM, kernel {self.kernel}, {self.os}, "
                f"{self.openvpn}, Python {self.python}")


@dataclass
class Run:
    """One run of the bench: what was run, where, how loaded, and its rows."""
    command: str
    mode: str  # "full" (every row, default sizes) or "partial"/"quick"
    started: str  # ISO 8601, UTC
    minutes: float
    load: tuple[float, float]  # 1-minute load average at the start and at the end
    machine: Machine
    rows: list[dict[str, Any]]

    def head(self) -> str:
        return (f"`{self.command}` ({self.mode}), {self.started[:16].replace('T', ' ')} UTC, "
                f"{self.minutes:.1f} min, load average (1 min) at start / end "
                f"{self.load[0]:.2f} / {self.load[1]:.2f}; {self.machine.describe()}")

    def markdown(self) -> str:
        return self.head() + "\n\n" + table(self.rows) + "\n"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["load"] = list(self.load)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Run:
        return cls(command=d["command"], mode=d["mode"], started=d["started"],
                   minutes=d["minutes"], load=(d["load"][0], d["load"][1]),
                   machine=Machine(**d["machine"]), rows=d["rows"])

    def write(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(self.markdown())
        out.with_suffix(".json").write_text(json.dumps(self.to_json(), indent=1) + "\n")
