"""The bench's small C programs (``bench/c/*.c``), built with ``cc -O2`` when a compiler
is there; each has a fallback without one (slower or costlier, said where it is used)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

C_DIR = Path(__file__).resolve().parent / "c"


def compile_c(name: str, exe: Path, *flags: str, static: bool = False) -> Path | None:
    """Build ``bench/c/NAME.c`` into ``exe``; None without a compiler or if it fails.
    ``static``: linked statically if libc.a is there (libc6-dev), else dynamically."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = C_DIR / f"{name}.c"
    for link in ((["-static"], []) if static else ([],)):
        cp = subprocess.run([cc, "-O2", *link, "-o", str(exe), str(src), *flags], check=False)
        if cp.returncode == 0:
            exe.chmod(0o755)
            return exe
    return None


def c_string(value: str | Path) -> str:
    """``value`` as a C string literal for ``-DNAME=…`` (paths of the lab: no quotes)."""
    text = str(value)
    if '"' in text or "\\" in text:
        raise ValueError(f"not a plain path: {text!r}")
    return f'"{text}"'
