"""``apt-get purge iservice`` (run last by scripts/test-package.sh): it undoes what running
and killed services changed, and leaves nothing the package added.

Two instances run in a lab, each with its settings in /etc/openvpnNAME/iservice.conf
(where the prerm looks): A was killed with a session up (its tun, routes, journal and
openvpn are left), B still runs with a session.  The purge runs in the lab's client
namespace, where their tun devices are; without systemd, the prerm's ``iservice cleanup
--stop`` is what stops B and undoes A.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.isv import ISERVICE, Service, alive, wait_for
from tests.lab import Lab, Pki
from tests.package import leftovers

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the package, a lab")]


@pytest.fixture
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        # two servers pushing different routes: one route belongs to one session
        lab.start_server('push "route 10.9.0.0 255.255.0.0"\n')
        lab.start_server('push "route 10.19.0.0 255.255.0.0"\n', port=1195,
                         name="second", network="10.18.0.0/24", network6="fd00:18::/64")
        lab.write_client_config("approved.ovpn")
        lab.write_client_config("second.ovpn", port=1195)
        yield lab


def instance_service(lab: Lab, made: list[Path], name: str) -> Service:
    """A lab service whose settings file is the instance's /etc/openvpnNAME/iservice.conf."""
    svc = Service(lab, name=name)
    conf_dir = Path(f"/etc/openvpn{name}")
    conf_dir.mkdir(mode=0o755)
    made.append(conf_dir)
    conf = conf_dir / "iservice.conf"
    conf.write_text(svc.settings_path.read_text())
    conf.chmod(0o644)
    svc.settings_path = conf
    return svc


def test_purge_undoes_services_and_leaves_nothing(lab: Lab) -> None:
    before_file = os.environ.get("ISERVICE_SNAPSHOT")
    assert before_file, "scripts/test-package.sh records the machine before installing"
    before = json.loads(Path(before_file).read_text())
    tag = lab.tag.replace("-", "")[:8]
    made: list[Path] = []
    procs = []
    try:
        killed = instance_service(lab, made, f"isvpkga{tag}")
        running = instance_service(lab, made, f"isvpkgb{tag}")
        user = lab.add_user("isvp")
        openvpns = []
        for svc, config in ((killed, "approved.ovpn"), (running, "second.ovpn")):
            procs.append(svc.start())
            cp = svc.start_as(user, "--config", config)
            assert cp.returncode == 0, cp.stdout + cp.stderr
            openvpns.append(int(cp.stdout))
        wait_for(lambda: {"10.9.0.0/16", "10.19.0.0/16"} <= {r["dst"] for r in lab.routes(4)},
                 20, what=lambda: killed.log_tail() + running.log_tail())
        killed.kill9()
        assert killed.journal()["sessions"] and alive(openvpns[0])
        # an admin's auto-connect at boot: a link the package did not ship
        enabled = subprocess.run([ISERVICE, "enable", "approved"], capture_output=True,
                                 text=True, check=False)
        assert enabled.returncode == 0, enabled.stderr

        start = time.monotonic()
        cp = subprocess.run(lab.ns_cmd(lab.client_ns, [
            "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "-q",
            "-o", "DPkg::Lock::Timeout=300", "iservice"]),
            capture_output=True, text=True, timeout=300, check=False)
        took = time.monotonic() - start
        if report := os.environ.get("ISERVICE_PKG_REPORT"):
            with open(report, "a", encoding="utf-8") as f:
                f.write(f"purged (two instances to undo) in {took:.1f} s\n")
        output = cp.stdout + cp.stderr  # apt-get mixes the maintainer scripts' streams
        assert cp.returncode == 0, output
        assert "iservice cleanup: stopped the service" in output, output
        assert "event=recovered" in output and "killed=True" in output, output

        # what the services changed is undone, their openvpn and B itself ended
        assert procs[1].wait(10) == 0
        wait_for(lambda: not any(alive(p) for p in openvpns), 5, what="openvpn ended")
        assert [x["ifname"] for x in lab.links() if x["ifname"].startswith("istun")] == []
        assert [r for f in (4, 6) for r in lab.routes(f) if r.get("protocol") == "158"] == []
        for svc in (killed, running):
            assert not (svc.state_dir / "journal.sqlite3").exists()
            assert not svc.state_dir.exists()  # only the journal and its lock were there
        # and nothing the package added is left
        assert leftovers.added(before, leftovers.snapshot()) == []
        assert not os.path.lexists("/usr/bin/iservice")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
