"""Fast disconnect (issue 16, item 1) with the real openvpn 2.6: at SIGTERM nothing is
deleted route by route (the session's undo takes the tun with everything on it), while a
restart still deletes exactly the old routes.

openvpn's ``signal`` variable at route-pre-down and down, as seen here: ``sigterm`` /
``sigint`` when it exits, ``sigusr1`` / ``sighup`` / ``ping-restart`` on a restart and
``UNKNOWN`` when persist-tun takes the routes down after a restart whose pushed
options changed (``produce.EXIT_SIGNALS``).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from ipaddress import ip_network
from typing import Any

import pytest
from tests.isv import ISERVICE, PYTHON, Service, Services, wait_for
from tests.lab import Lab, Pki, User

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

MANY = 2000


def pushes(n: int, second: int, v6: str) -> str:
    """``n`` IPv4 host routes 10.<second>.x.y and one IPv6 route, pushed."""
    return "".join(f'push "route 10.{second}.{i // 250}.{i % 250} 255.255.255.255"\n'
                   for i in range(n)) + f'push "route-ipv6 {v6}"\n'


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        yield lab


@pytest.fixture
def make_service(lab: Lab) -> Iterator[Callable[..., Service]]:
    services = Services(lab)
    yield services.make
    services.close()


@pytest.fixture
def user(lab: Lab) -> User:
    return lab.add_user()


def our_routes(lab: Lab) -> list[dict[str, Any]]:
    return [r for fam in (4, 6) for r in lab.routes(fam) if r.get("protocol") == "158"]


def started_pid(cp: Any) -> int:
    assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}"
    return int(cp.stdout.strip())


def audit(svc: Service, event: str) -> list[str]:
    return [line for line in svc.log().splitlines() if f"event={event} " in line]


def deletes(svc: Service) -> list[str]:
    return [line for line in audit(svc, "applied") + audit(svc, "failed")
            if re.search(r'what="del_(route|address|dns_cfg|nrpt_cfg|tun_routes)', line)]


@pytest.mark.parametrize(("hook", "sig"), [("auto", signal.SIGTERM), ("auto", signal.SIGINT),
                                           ("script", signal.SIGTERM)])
def test_an_exiting_openvpn_sends_no_deletes(lab: Lab, user: User,
                                             make_service: Callable[..., Service], hook: str,
                                             sig: signal.Signals) -> None:
    port = {"auto": 1210, "script": 1211}[hook] + (sig == signal.SIGINT) * 2
    server = lab.start_server(pushes(MANY, 51, "fd00:51::/64")
                              + 'push "dhcp-option DNS 10.50.0.1"\n', port=port,
                              name=f"many-{hook}-{sig}", network="10.50.0.0/24",
                              network6="fd00:50::/64", timeout=60)
    try:
        lab.write_client_config(f"many-{port}.ovpn", port=port)
        svc = make_service(f"hook = {hook}\n")
        svc.start()
        pid = started_pid(svc.start_as(user, "--config", f"many-{port}.ovpn"))
        wait_for(lambda: len(our_routes(lab)) == MANY + 1, 60,
                 what=lambda: f"{len(our_routes(lab))} routes\n{svc.log_tail(10)}")
        assert deletes(svc) == []
        os.kill(pid, sig)
        wait_for(lambda: not our_routes(lab) and not svc.tuns() and
                 svc.journal() == {"sessions": [], "changes": 0}, 10,
                 what=lambda: f"{len(our_routes(lab))} routes left\n{svc.log_tail(10)}")
        # openvpn ran route-pre-down and down (the plugin or the hook forwarded them), the
        # service made nothing of them: no delete at all, everything went with the tun.
        assert deletes(svc) == [], deletes(svc)[:3]
        name = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}[sig]
        envs = [line for line in audit(svc, "environment")
                if re.search(r"what=(route-pre-down|down) ", line)]
        assert len(envs) == 2, envs
        assert all(f"signal={name} " in line and "requests=0 " in line and
                   "verdict=exiting" in line for line in envs), envs
        svc.finish()
    finally:
        server.stop()


def test_a_restart_with_changed_routes_deletes_exactly_the_old_ones(
        lab: Lab, user: User, make_service: Callable[..., Service]) -> None:
    # No persist-tun: at SIGUSR1 openvpn runs route-pre-down naming its old routes
    # (signal=sigusr1); they are deleted one by one, as before, and the new set comes.
    old = lab.start_server(pushes(300, 61, "fd00:61::/64"), port=1215, name="old",
                           network="10.60.0.0/24", network6="fd00:60::/64", timeout=30)
    lab.write_client_config("restart.ovpn", port=1215)
    svc = make_service()
    svc.start()
    pid = started_pid(svc.start_as(user, "--config", "restart.ovpn"))

    def routes() -> list[str]:
        return sorted(str(ip_network(r["dst"])) for r in our_routes(lab))

    wait_for(lambda: len(routes()) == 301, 30, what=svc.log_tail)
    old_set = routes()
    old.stop()
    new = lab.start_server(pushes(200, 62, "fd00:62::/64"), port=1215, name="new",
                           network="10.60.0.0/24", network6="fd00:60::/64", timeout=30)
    try:
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: len(routes()) == 201 and all(".62." in r or ":62:" in r
                                                      for r in routes()), 30,
                 what=lambda: f"{len(routes())} routes\n{svc.log_tail(10)}")
        deleted = [str(ip_network(re.search(r"dst=(\S+)", line).group(1)))  # type: ignore[union-attr]
                   for line in deletes(svc) if 'what="del_route' in line]
        assert sorted(deleted) == old_set  # each old route once, nothing else
        pre = [line for line in audit(svc, "environment") if "what=route-pre-down " in line]
        assert len(pre) == 1 and "signal=sigusr1 " in pre[0] and "requests=301 " in pre[0]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not svc.tuns() and not our_routes(lab), 10, what="cleanup")
        assert len([line for line in deletes(svc) if 'what="del_route' in line]) == 301
        svc.finish()
    finally:
        new.stop()


# A test double of openvpn (the real one loses a SIGTERM only inside a narrow window of its
# start, which a test cannot hit at will): it prints what it receives, like openvpn's log.
STUBBORN = r'''
import signal, sys, time
NOTIFY = sys.argv[0].endswith("-notify")
n = 0
def on_term(sig, frame):
    global n
    n += 1
    print(f"stand-in: SIGTERM {n}", flush=True)
    if NOTIFY and n == 1:  # as openvpn with explicit-exit-notify: exits a while later
        print("SIGTERM received, sending exit notification to peer", flush=True)
        signal.setitimer(signal.ITIMER_REAL, 1.8)  # after SIGTERM_REPEAT, before the grace
    elif not NOTIFY and n == 2:  # as openvpn that lost the first one
        print("SIGTERM[hard,] received, process exiting", flush=True)
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGALRM, lambda *_: sys.exit(0))
print("Initialization Sequence Completed", flush=True)
while True:
    time.sleep(1)
'''


@pytest.mark.parametrize("kind", ["lost", "notify"])
def test_disconnect_sends_sigterm_again_only_while_openvpn_does_not_show_it_exits(
        lab: Lab, user: User, make_service: Callable[..., Service], kind: str) -> None:
    """A lost SIGTERM (openvpn 2.6 at route-up) is sent again, so the disconnect ends as
    asked instead of in SIGKILL after the grace period; an openvpn that says it is exiting
    (explicit-exit-notify's wait) gets no second one, which would cut the wait short."""
    exe = lab.write_file(f"bin/stubborn-{kind}", f"#!{PYTHON} -I\n{STUBBORN}", mode=0o755)
    lab.write_client_config("stubborn.ovpn", port=1299)
    svc = make_service(extra=f"exe_path = {exe}\n")  # stop_grace 3 s (tests/isv.py)
    svc.start()
    started_pid(svc.start_as(user, "--config", "stubborn.ovpn"))
    [session] = svc.journal()["sessions"]
    sid = session["id"]
    wait_for(lambda: "Initialization Sequence Completed" in svc.session_log(sid), 10,
             what=lambda: svc.session_log(sid))
    cp = lab.run_client([ISERVICE, "disconnect", "--socket", str(svc.socket_path), str(sid)],
                        user=user, timeout=40)
    assert cp.returncode == 0, cp.stdout + cp.stderr + svc.log_tail()
    out = svc.session_log(sid)
    assert audit(svc, "kill") == [], svc.log_tail()  # no SIGKILL: it ended as asked
    if kind == "lost":
        assert "stand-in: SIGTERM 2" in out and len(audit(svc, "sigterm-again")) == 1, out
    else:
        assert "stand-in: SIGTERM 1" in out and "SIGTERM 2" not in out, out
        assert audit(svc, "sigterm-again") == []
    wait_for(lambda: not svc.tuns() and not svc.journal()["sessions"], 10, what="undone")
