"""Control-socket budgets with the real service (issue 13 item 5, control part): one user's
flood of control connections — held open, never sending — does not stop another user's
`iservice sessions`; the flooding user's excess connections are told `busy`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.isv import ISERVICE, PYTHON, Service, wait_for
from tests.lab import Lab, Pki

pytestmark = [pytest.mark.root]

FLOOD = """
import json, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, busy = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    held.append(s)
print("holding", len(held), flush=True)
time.sleep(float(sys.argv[3]))
# the refused ones were answered at once: count them (the held ones time out at 2 s)
for s in held:
    s.settimeout(0.05)
    try:
        if json.loads(s.recv(65536)).get("code") == "busy":
            busy += 1
    except (OSError, ValueError):
        pass
print("busy", busy, flush=True)
"""


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        yield lab


def test_one_users_flood_does_not_stop_another_users_sessions(lab: Lab) -> None:
    svc = Service(lab, name="budget")  # the default limits
    svc.start()
    try:
        flooder, other = lab.add_user("flood"), lab.add_user("calm")
        control = svc.run_dir / "control"
        flood = lab.popen_client([PYTHON, "-I", "-c", FLOOD, str(control), "300", "1.5"],
                                 user=flooder, label="flood")
        wait_for(lambda: "holding 300" in flood.output() or flood.poll() is not None, 20,
                 what=lambda: flood.output() + flood.error_text())
        assert "holding 300" in flood.output(), flood.error_text()
        # 300 connections of one user are open at the service right now
        cp = lab.run_client([ISERVICE, "sessions", "--socket", str(svc.socket_path)],
                            user=other, timeout=30)
        assert cp.returncode == 0 and "No sessions." in cp.stdout, cp.stdout + cp.stderr
        assert flood.wait(30) == 0, flood.error_text()
        busy = int(flood.output().split("busy")[1].split()[0])
        assert busy >= 300 - 32, flood.output()  # past the per-user budget: busy
        assert "event=too-many-clients" in svc.log() and "control connection" in svc.log()
        # and once the flood is over, the flooder is served again
        cp = lab.run_client([ISERVICE, "sessions", "--socket", str(svc.socket_path)],
                            user=flooder, timeout=30)
        assert cp.returncode == 0, cp.stderr
    finally:
        svc.stop()
