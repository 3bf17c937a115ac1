"""The layers' import rules (docs/architecture.md), enforced.

import-linter checks the contracts in pyproject.toml; grimp's import graph (the one
import-linter builds) checks the two rules a contract cannot say well: only
``iservice.platform`` imports ``iservice.linux``, and there is no import cycle,
``TYPE_CHECKING`` imports included.  Each rule is also shown to bite: a copy of the
package with one forbidden import added must fail it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
LINT = Path(sys.executable).with_name("lint-imports")


def lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"),
                           "--no-cache"], capture_output=True, text=True, env=env,
                          cwd=str(ROOT), check=False)


def _ours(name: str) -> bool:
    return name == "iservice" or name.startswith("iservice.")


def graph(src: Path) -> grimp.ImportGraph:
    """The import graph of the package under ``src`` (grimp finds the package through
    the import system: the modules already imported are set aside meanwhile, and put
    back, so the other tests keep the very classes they imported)."""
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        return grimp.build_graph("iservice", exclude_type_checking_imports=False)
    finally:
        sys.path.remove(str(src))
        for name in [m for m in sys.modules if _ours(m)]:
            del sys.modules[name]
        sys.modules.update(saved)


def linux_importers(g: grimp.ImportGraph) -> set[str]:
    """Modules outside the backend and the factory that import the backend directly."""
    out = set()
    for m in g.modules:
        if m == "iservice.platform" or m == "iservice.linux" or m.startswith("iservice.linux."):
            continue
        if any(i == "iservice.linux" or i.startswith("iservice.linux.")
               for i in g.find_modules_directly_imported_by(m)):
            out.add(m)
    return out


def cycles(g: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodule (``effects`` → ``effects.tun``) and
            # the submodule importing a sibling is not a cycle; only real loops count
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g.modules):
        if v not in index:
            visit(v)
    return found


def test_the_contracts_are_kept() -> None:
    cp = lint(SRC)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "3 kept, 0 broken" in cp.stdout


def test_only_the_platform_factory_imports_the_backend() -> None:
    assert linux_importers(graph(SRC)) == set()


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph(SRC)) == []


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(SRC / "iservice", dst / "iservice",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "iservice-runas"))
    return dst


def add_import(src: Path, module: str, line: str) -> None:
    path = src / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = src / module.replace(".", "/") / "__init__.py"
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest)


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("iservice.wire.msg", "import iservice.session", "wire, policy and the neutral values"),
    ("iservice.policy.requests", "import iservice.linux.netlink",
     "wire, policy and the neutral values"),
    ("iservice.monitor", "import iservice.connect", "nothing of the service imports the client"),
    ("iservice.client", "import iservice.server", "the client side imports no server-side"),
])
def test_a_forbidden_import_breaks_its_contract(copy: Path, module: str, line: str,
                                                contract: str) -> None:
    add_import(copy, module, line)
    cp = lint(copy)
    assert cp.returncode != 0
    assert f"{contract}" in cp.stdout and "BROKEN" in cp.stdout, cp.stdout


def test_a_backend_import_outside_the_factory_is_found(copy: Path) -> None:
    add_import(copy, "iservice.session", "import iservice.linux.tun")
    assert linux_importers(graph(copy)) == {"iservice.session"}


def test_a_type_checking_cycle_is_found(copy: Path) -> None:
    add_import(copy, "iservice.journal", "from typing import TYPE_CHECKING\n"
               "if TYPE_CHECKING:\n    import iservice.monitor")
    assert any({"iservice.journal", "iservice.monitor"} <= set(c) for c in cycles(graph(copy)))
