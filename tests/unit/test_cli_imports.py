"""The client commands stay light: `iservice sessions`, `status` and `profiles` import
nothing of the service (no asyncio, no ctypes, no server/session/monitor/control server),
and `--help` only argparse.  Checked in a fresh interpreter, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVICE_SIDE = ("asyncio", "ctypes", "iservice.control", "iservice.server", "iservice.session",
                "iservice.monitor", "iservice.linux.identity", "iservice.journal",
                "iservice.linux.netlink")

PROBE = """
import contextlib, io, sys
from iservice import cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        status = cli.main(sys.argv[1:])
    except SystemExit as exc:
        status = exc.code
import json
print(json.dumps({"status": status, "modules": sorted(sys.modules), "out": out.getvalue()}))
"""


def probe(*argv: str) -> dict[str, object]:
    cp = subprocess.run([sys.executable, "-I", "-c", PROBE, *argv], capture_output=True,
                        text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(cp.stdout)
    return result


@pytest.mark.parametrize("argv", [
    ("sessions", "--socket", "/nonexistent/service"),
    ("status", "x", "--socket", "/nonexistent/service", "--json"),
    ("profiles", "--socket", "/nonexistent/service"),
])
def test_client_commands_import_nothing_of_the_service(argv: tuple[str, ...]) -> None:
    result = probe(*argv)
    assert result["status"] == 3, result["out"]  # nothing listens there: unreachable
    modules = set(result["modules"])  # type: ignore[arg-type]
    assert "iservice.wire.control" in modules and "iservice.client" in modules
    assert not modules & set(SERVICE_SIDE), sorted(modules & set(SERVICE_SIDE))


def test_help_imports_only_argparse() -> None:
    result = probe("--help")
    assert result["status"] == 0 and "connect" in str(result["out"])
    modules = set(result["modules"])  # type: ignore[arg-type]
    ours = {m for m in modules if m.startswith("iservice")}
    assert ours == {"iservice", "iservice.cli", "iservice.termsafe"}, ours
    assert not modules & {"dataclasses", "socket", *SERVICE_SIDE}
