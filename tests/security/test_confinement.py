"""The confined service: the systemd units' sandbox, its exposure figure, and that the
service really works with only the capabilities the unit leaves it.

systemd is not PID 1 on the test machines, so the unit cannot be started here;
``systemd-analyze security --offline=yes`` reads it without a running systemd (taken
from Debian's package when the machine has none), and the capability bounding set is
exercised for real by running the service under ``setpriv`` with the same set and
no_new_privs, through a whole session.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.isv import ISERVICE, Service, wait_for
from tests.lab import Lab, User

ROOT = Path(__file__).resolve().parents[2]
UNITS = [ROOT / "systemd" / "iservice.service", ROOT / "systemd" / "iservice@.service"]
CAPS = {"CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_NICE"}
MAX_EXPOSURE = 3.5
SD_CACHE = Path("/var/cache/iservice-tests/systemd")


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_sandbox_settings(unit: Path) -> None:
    s = unit_settings(unit)
    assert set(s["CapabilityBoundingSet"][0].split()) == CAPS
    assert s["AmbientCapabilities"] == [""]
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                "ProtectHome": "no", "PrivateTmp": "yes", "ProtectKernelTunables": "yes",
                "ProtectKernelModules": "yes", "ProtectControlGroups": "no",
                "Delegate": "yes",
                "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
                "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
                "SystemCallArchitectures": "native", "DevicePolicy": "closed",
                "DeviceAllow": "/dev/net/tun rw", "UMask": "0077"}
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert s["SystemCallFilter"][0] == "@system-service"
    assert s["SystemCallFilter"][1].startswith("~") and "@mount" in s["SystemCallFilter"][1]
    assert set(s["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_NETLINK",
                                                           "AF_INET", "AF_INET6"}
    assert s["StateDirectory"][0].startswith("iservice")


def systemd_analyze() -> tuple[list[str], dict[str, str]]:
    """A systemd-analyze to run: the machine's, or one unpacked from Debian's packages."""
    found = shutil.which("systemd-analyze")
    if found:
        return [found], {}
    binary = SD_CACHE / "root" / "usr" / "bin" / "systemd-analyze"
    libdir = SD_CACHE / "root" / "usr" / "lib" / "x86_64-linux-gnu" / "systemd"
    if not binary.exists():
        SD_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "systemd", "libsystemd-shared"], cwd=SD_CACHE,
                       check=True, capture_output=True, timeout=300)
        for deb in SD_CACHE.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(SD_CACHE / "root")], check=True)
    return [str(binary)], {"LD_LIBRARY_PATH": str(libdir)}


def exposure(unit: Path) -> float:
    argv, env = systemd_analyze()
    cp = subprocess.run([*argv, "security", "--offline=yes", str(unit)], capture_output=True,
                        text=True, timeout=60, check=False, env={**os.environ, **env})
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", cp.stdout + cp.stderr)
    assert found, cp.stdout + cp.stderr
    return float(found.group(1))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="apt-get download needs root")
def test_exposure_is_at_most_3_5() -> None:
    figures = {u.name: exposure(u) for u in UNITS}
    debian = Path("/lib/systemd/system/openvpn-client@.service")
    if debian.exists():
        figures[debian.name] = exposure(debian)
    print(f"\nsystemd-analyze security --offline=yes: {figures}")
    for u in UNITS:
        assert figures[u.name] <= MAX_EXPOSURE, figures



@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")
def test_service_works_with_only_the_units_capabilities(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    svc = make_service()
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in sorted(CAPS))
    svc.proc = lab.popen_service(["setpriv", f"--bounding-set=-all,{caps}", "--no-new-privs",
                                  ISERVICE, "serve", "--settings", str(svc.settings_path)],
                                 label=svc.name)
    wait_for(lambda: "event=ready" in svc.log() or svc.proc.poll() is not None, 10,
             what=svc.log_tail)
    assert svc.proc.poll() is None, svc.log()
    status = Path(f"/proc/{svc.service_pid()}/status").read_text()
    bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    assert bin(bounding).count("1") == len(CAPS)
    assert re.search(r"NoNewPrivs:\s*1", status)
    cp = svc.start_as(user, "--config", "approved.ovpn")
    assert cp.returncode == 0, cp.stdout + cp.stderr + svc.log_tail()
    pid = int(cp.stdout.strip())
    wait_for(lambda: any(r.get("protocol") == "158" for r in lab.routes(4)), 15,
             what=svc.log_tail)
    # openvpn (spawned through setpriv under this bounding set) is the user, without
    # a single capability.
    ovpn = Path(f"/proc/{pid}/status").read_text()
    assert re.search(rf"Uid:\s*{user.uid}\s+{user.uid}\s+{user.uid}\s+{user.uid}\b", ovpn)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert re.search(rf"{cap}:\s*0+\n", ovpn), (cap, ovpn)
    assert lab.ping(Lab.pushed_host)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not svc.tuns() and not svc.journal()["sessions"], 5, what=svc.log_tail)
    t0 = time.monotonic()
    assert svc.stop() == 0
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in svc.log()
