"""What the client prints (issue 13 item 7 second half, and --json errors): control
characters in openvpn's output and in session details never reach the terminal raw, and
every command with --json reports the service's refusals as {"code", "message"}."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from tests.isv import ISERVICE, PtyClient, Service, wait_for
from tests.lab import Lab, Pki, User

pytestmark = [pytest.mark.root]

# An approved profile whose server name carries terminal escapes: openvpn prints the name
# in its log lines (it cannot resolve it), and the session's log shows them.
EVIL = "evil\x1b[2J\x1b]0;pwned\x07\u202ehost.invalid"


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.write_client_config("evil.ovpn", remote=f'"{EVIL}"')
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="outsvc")
    s.start()
    yield s
    assert s.stop() == 0, s.log_tail()


def cli(lab: Lab, svc: Service, user: User, *args: str) -> tuple[int, str, str]:
    cp = lab.run_client([ISERVICE, args[0], "--socket", str(svc.socket_path), *args[1:]],
                        user=user, timeout=60)
    return cp.returncode, cp.stdout, cp.stderr


def test_control_characters_are_escaped(lab: Lab, svc: Service) -> None:
    user = lab.add_user("out")
    term = PtyClient(lab.client_cmd([ISERVICE, "connect", "--socket", str(svc.socket_path),
                                     "--timeout", "4", "evil"], user=user))
    try:
        code = term.wait(60)
    finally:
        term.close()
    assert code == 5, term.transcript  # never connects: timeout
    assert "\x1b[2J" not in term.transcript and "\x07" not in term.transcript
    # the session is gone after the timeout; start one that stays, as a raw request
    cp = lab.run_client([ISERVICE, "start", "--socket", str(svc.socket_path), "--workdir",
                         str(lab.config_dir), "--", "--config", "evil.ovpn"], user=user)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    wait_for(lambda: "host.invalid" in cli(lab, svc, user, "log", "evil")[1], 20,
             what="openvpn's line naming the server")
    code, out, _ = cli(lab, svc, user, "log", "evil")
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\u202ehost.invalid" in out
    code, out, _ = cli(lab, svc, user, "log", "evil", "-n", "50")
    assert all(c == "\n" or c == "\t" or c >= " " for c in out)
    code, out, _ = cli(lab, svc, user, "status", "evil", "--json")
    assert json.loads(out)["name"] == "evil-" + str(json.loads(out)["id"])
    assert cli(lab, svc, user, "disconnect", "evil")[0] == 0


def test_json_errors_from_the_service(lab: Lab, svc: Service) -> None:
    user = lab.add_user("jsn")
    for argv, status, code in [
        (("sessions", "--all", "--json"), 1, "forbidden"),
        (("status", "nosuch", "--json"), 1, "not-found"),
        (("import", "/etc/hostname", "--json"), 1, "forbidden"),  # user_profiles is off
        (("remove", "x", "--json"), 1, "forbidden"),
    ]:
        got, out, err = cli(lab, svc, user, *argv)
        assert got == status, out + err
        obj = json.loads(out)
        assert obj["code"] == code and obj["message"] and err == "", obj
