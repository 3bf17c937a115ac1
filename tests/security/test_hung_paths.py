"""A path that never answers (a user's FUSE mount whose daemon hangs, a dead NFS server)
holds up only the request that names it: the check as the user gives up after
``check_timeout``, one user holds at most one of the check threads, and that user's
next request is refused at once while the given-up check is still stuck."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.isv import PYTHON, Service, wait_for
from tests.lab import Lab, LabProcess, User
from tests.lab.hung import hung_mount

from iservice.wire import startup as w

pytestmark = [pytest.mark.root]


SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(120)
s.connect(sys.argv[1])
s.send(bytes.fromhex(sys.argv[2]))
print(s.recv(65536).hex(), flush=True)
"""


def send_start(lab: Lab, svc: Service, user: User, workdir: str) -> LabProcess:
    """A startup request as ``user`` naming ``workdir``, in the background; its reply
    is printed (hex) when it comes."""
    raw = w.encode_startup(w.StartupData(workdir, "--config approved.ovpn", ""))
    return lab.popen_client([PYTHON, "-I", "-c", SENDER, str(svc.socket_path), raw.hex()],
                            user=user, label="hung-request")


def reply_of(proc: LabProcess) -> w.Reply:
    assert proc.wait(60) == 0, proc.error_text()
    return w.decode_reply(bytes.fromhex(proc.output().strip()))


def test_a_path_that_never_answers_holds_up_only_its_own_user(
        lab: Lab, make_service: Callable[..., Service], user: User) -> None:
    other = lab.add_user("isvo")
    with hung_mount(lab.base_dir / "hung-a") as hung_a, \
            hung_mount(lab.base_dir / "hung-b") as hung_b:
        # (the services' mount namespaces are copied at their start: mounts first)
        slow = make_service(extra="exe_path = /bin/true\ncheck_timeout = 100\n")
        quick = make_service(extra="exe_path = /bin/true\ncheck_timeout = 2\n")
        slow.start()
        quick.start()

        # two requests of one user stuck at once: they hold one check thread, not both
        stuck = [send_start(lab, slow, user, str(hung_a / "x")) for _ in range(2)]
        wait_for(lambda: slow.log().count(f"event=request uid={user.uid} ") == 2, 20,
                 what=slow.log_tail)
        cp = slow.start_as(other, "--config", "approved.ovpn", timeout=20)
        assert cp.returncode == 0 and cp.stdout.strip().isdigit(), cp.stdout + cp.stderr

        # the time limit: refused after check_timeout; the next one at once, while the
        # given-up check is still stuck; others go on
        first = reply_of(send_start(lab, quick, user, str(hung_b / "x")))
        assert isinstance(first, w.ErrorReply) and "took too long" in first.func, first
        again = reply_of(send_start(lab, quick, user, str(lab.config_dir)))
        assert isinstance(again, w.ErrorReply) and "still waiting" in again.func, again
        cp = quick.start_as(other, "--config", "approved.ovpn", timeout=20)
        assert cp.returncode == 0 and cp.stdout.strip().isdigit(), cp.stdout + cp.stderr
    # the mounts are gone (their connections aborted): the stuck checks end, with errors
    for proc in stuck:
        assert isinstance(reply_of(proc), w.ErrorReply)
    # and the user may ask again
    wait_for(lambda: quick.start_as(user, "--config", "approved.ovpn").returncode == 0, 20,
             what=quick.log_tail)
    for svc in (slow, quick):
        wait_for(lambda s=svc: not s.journal()["sessions"], 10, what=svc.log_tail)
