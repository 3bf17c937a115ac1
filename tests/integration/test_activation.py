"""Both sockets activate the service (issue 14 item 2): with only the two sockets listening
(systemd's own `systemd-socket-activate`, which passes them named as the socket units'
`FileDescriptorName=` do), the first `iservice connect NAME` — whose first step is the
control socket — starts the service; `profiles` and `sessions` work the same way.  With
nothing listening, every client command exits 3 and says how to start the service."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from tests.isv import ISERVICE, Service, wait_for
from tests.lab import Lab, Pki

pytestmark = [pytest.mark.root]

ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server('push "route 10.9.0.0 255.255.0.0"\n', port=1194, name="act")
        lab.write_client_config("plain.ovpn", port=1194)
        yield lab


def cli(lab: Lab, svc: Service, *args: str, user: object = None) -> tuple[int, str, str]:
    cp = lab.run_client([ISERVICE, *args[:1], "--socket", str(svc.socket_path), *args[1:]],
                        user=user, timeout=60)  # type: ignore[arg-type]
    return cp.returncode, cp.stdout, cp.stderr


def test_the_control_socket_starts_the_service(lab: Lab) -> None:
    svc = Service(lab, name="actsvc")
    svc.run_dir.mkdir(mode=0o755)
    control = svc.run_dir / "control"
    svc.proc = lab.popen_service(
        [ACTIVATE, "--seqpacket", "-l", str(svc.socket_path), "-l", str(control),
         "--fdname=service:control", "--",
         ISERVICE, "serve", "--settings", str(svc.settings_path)], label=svc.name)
    try:
        wait_for(lambda: control.exists() and svc.socket_path.exists(), 10,
                 what="the two listening sockets")
        for path in (control, svc.socket_path):  # what the units' SocketMode=0666 does
            path.chmod(0o666)
        user = lab.add_user("act")
        assert "event=ready" not in svc.log()  # not started yet: only the sockets listen
        code, out, err = cli(lab, svc, "connect", "plain", "--timeout", "30", user=user)
        assert code == 0, out + err + svc.log_tail()
        assert "event=ready" in svc.log() and "Connected: plain" in out
        assert svc.proc.poll() is None
        code, out, err = cli(lab, svc, "sessions", "--json", user=user)
        assert code == 0 and '"CONNECTED"' in out, err
        code, out, err = cli(lab, svc, "profiles", user=user)
        assert code == 0 and "plain" in out, err
        code, out, err = cli(lab, svc, "disconnect", "plain", user=user)
        assert code == 0, err
        assert svc.stop() == 0, svc.log_tail()
        # the sockets were systemd's: the service leaves them (RemoveOnStop= is systemd's)
        assert control.exists() and svc.socket_path.exists()
        assert svc.tuns() == [] and svc.journal()["sessions"] == []
    finally:
        if svc.proc.poll() is None:
            svc.stop()
