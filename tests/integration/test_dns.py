"""DNS through iservice (issue 4): systemd-resolved, openresolv and a managed resolv.conf.

All real: openvpn 2.6 as an unprivileged user, systemd-resolved with a private
dbus-daemon in a sandbox (tests/resolved_sandbox.py), openresolv unpacked from
Debian's package, and a resolv.conf bind-mounted in the service's private mount
namespace (the machine's /etc/resolv.conf is never touched).  One lab for the
module: three openvpn servers that push DNS in different ways, a DNS responder
behind them, and the sandbox every service of this module runs in.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.isv import Service, Services, wait_for
from tests.lab import Lab, Pki, User
from tests.resolved_sandbox import ResolvedSandbox, openresolv_root, wait_link

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

PLAIN = ('push "dhcp-option DNS 10.9.0.1"\n'
         'push "dhcp-option DOMAIN corp.example"\n'
         'push "dhcp-option DOMAIN-SEARCH sub.corp.example"\n'
         'push "route 10.9.0.0 255.255.0.0"\n')
SPLIT = ('push "dns server 1 address 10.9.0.1"\n'
         'push "dns server 1 resolve-domains corp.example"\n'
         'push "route 10.9.0.0 255.255.0.0"\n')
# Names that are equal to, suffixes of and substrings of the admin's own search tokens.
OTHER = ('push "dhcp-option DNS 10.9.0.3"\n'
         'push "dhcp-option DOMAIN example.com"\n'
         'push "dhcp-option DOMAIN-SEARCH ex.com"\n')
ORIGINAL = (b"# the admin's resolver\n"
            b"nameserver 198.18.0.1\n"
            b"search example.com corp.example.com ex.com\n"
            b"options ndots:2 timeout:1\n")


class DnsLab:
    def __init__(self, lab: Lab, sandbox: ResolvedSandbox) -> None:
        self.lab, self.sandbox = lab, sandbox


@pytest.fixture(scope="module")
def dl(pki: Pki, lab_swept: list[str]) -> Iterator[DnsLab]:
    with Lab(pki) as lab:
        lab.start_server(PLAIN)
        lab.start_server(SPLIT, port=1195, name="split", network="10.28.0.0/24",
                         network6="fd00:28::/64")
        lab.start_server(OTHER, port=1196, name="other", network="10.38.0.0/24",
                         network6="fd00:38::/64")
        lab.write_client_config("plain.ovpn")
        lab.write_client_config("split.ovpn", port=1195)
        lab.write_client_config("other.ovpn", port=1196)
        lab.start_dns_server("10.9.0.99")
        sandbox = ResolvedSandbox(lab)
        sandbox.start()
        try:
            yield DnsLab(lab, sandbox)
        finally:
            sandbox.stop()


@pytest.fixture
def make_service(dl: DnsLab) -> Iterator[Callable[..., Service]]:
    services = Services(dl.lab, "dns")
    yield services.make
    services.close()
    for s in services.made:
        assert s.tuns() == [], s.log_tail()


def connect(svc: Service, user: User, config: str) -> tuple[int, str]:
    """Start openvpn as ``user``; wait until its tunnel is up; (pid, tun)."""
    cp = svc.start_as(user, "--config", config)
    assert cp.returncode == 0, f"{cp.stdout}\n{cp.stderr}"
    pid = int(cp.stdout.strip())
    before = set(svc.tuns())

    def up() -> str | None:
        for s in svc.journal()["sessions"]:
            info: dict[str, Any] = s["info"]
            if info.get("pid") == pid and "Initialization Sequence Completed" in \
                    svc.session_log(s["id"]):
                return str(info["tun"])
        return None
    tun = wait_for(up, 15, what=lambda: f"tunnel of {config}\n{svc.log_tail()}")
    assert tun in svc.tuns() or not before
    return pid, str(tun)


def gone(svc: Service, tun: str) -> bool:
    return tun not in svc.tuns() and not any(
        s["info"].get("tun") == tun for s in svc.journal()["sessions"])


# -- systemd-resolved ------------------------------------------------------------------

def test_resolved_gets_the_pushed_servers_and_domains_and_loses_them(
        dl: DnsLab, make_service: Callable[..., Service]) -> None:
    lab, sb = dl.lab, dl.sandbox
    svc = make_service("dns_backend = auto\n")  # resolved's name is on the sandbox's bus
    svc.start()
    assert "backend=resolved" in svc.log()
    user = lab.add_user()
    pid, tun = connect(svc, user, "plain.ovpn")
    link = wait_link(sb, tun, lambda x: "10.9.0.1" in x.get("dns", ""))
    assert link["dns"] == "10.9.0.1"
    assert link["domain"].split() == ["corp.example", "sub.corp.example", "~."]
    assert link["default-route"] == "yes"
    # a clean disconnect: the hook's del_dns_cfg reverts the link, then the tun goes
    reverts = sb.method_calls("RevertLink")
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: gone(svc, tun), 10, what="disconnect")
    assert sb.link(tun) == {}
    assert sb.method_calls("RevertLink") > reverts
    # kill -9 of openvpn: the session's undo reverts the link (journal), then the tun goes
    pid, tun = connect(svc, user, "plain.ovpn")
    wait_link(sb, tun, lambda x: x.get("dns") == "10.9.0.1")
    reverts = sb.method_calls("RevertLink")
    os.kill(pid, signal.SIGKILL)
    # the journal entry goes last, just after the tun: wait for both
    wait_for(lambda: gone(svc, tun) and svc.journal() == {"sessions": [], "changes": 0}, 5,
             what="undo after kill -9")
    assert sb.link(tun) == {}
    assert sb.method_calls("RevertLink") == reverts + 1
    assert svc.stop() == 0


def test_split_dns_is_routing_domains_only(dl: DnsLab,
                                           make_service: Callable[..., Service]) -> None:
    lab, sb = dl.lab, dl.sandbox
    svc = make_service("dns_backend = resolved\n")
    svc.start()
    user = lab.add_user()
    pid, tun = connect(svc, user, "split.ovpn")
    link = wait_link(sb, tun, lambda x: x.get("dns") == "10.9.0.1")
    assert link["domain"] == "~corp.example"
    assert link["default-route"] == "no"
    # the real resolver sends corp.example names through the tunnel to the pushed server
    # (resolved follows the link's addresses and routes through rtnetlink: give it a moment)
    def answered() -> bool:
        cp = sb.resolvectl("query", "--cache=no", "--legend=no", "host.corp.example",
                           check=False)
        return "10.9.0.99" in cp.stdout
    wait_for(answered, 10, what=lambda: sb.resolvectl("status", tun, check=False).stdout)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc, tun), 5, what="undo")
    assert sb.link(tun) == {}
    assert svc.stop() == 0


# -- a managed resolv.conf --------------------------------------------------------------

@contextlib.contextmanager
def resolv_conf_bound(lab: Lab, conf: Path) -> Iterator[None]:
    """Services started meanwhile see ``conf`` as their /etc/resolv.conf (a bind mount)."""
    lab.service_binds = [(conf, "/etc/resolv.conf")]
    try:
        yield
    finally:
        lab.service_binds = []


def nameservers(text: bytes) -> list[str]:
    return [line.split()[1] for line in text.decode().splitlines()
            if line.startswith("nameserver ")]


def search(text: bytes) -> list[str]:
    return next((line.split()[1:] for line in text.decode().splitlines()
                 if line.startswith("search ")), [])


@pytest.mark.parametrize("first_out", ["older", "newer", "service-crash"])
def test_file_two_sessions_end_in_any_order_and_the_file_comes_back(
        dl: DnsLab, make_service: Callable[..., Service], first_out: str) -> None:
    lab = dl.lab
    conf = lab.write_file(f"resolv-{first_out}.conf", "")
    conf.write_bytes(ORIGINAL)
    with resolv_conf_bound(lab, conf):
        _file_sessions(dl, make_service, conf, first_out)


def _file_sessions(dl: DnsLab, make_service: Callable[..., Service], conf: Path,
                   first_out: str) -> None:
    lab = dl.lab
    svc = make_service("dns_backend = file\n")
    svc.start()
    a, b = lab.add_user(), lab.add_user()
    pid_a, tun_a = connect(svc, a, "plain.ovpn")
    wait_for(lambda: nameservers(conf.read_bytes())[:1] == ["10.9.0.1"], 5, what="file")
    assert search(conf.read_bytes()) == ["corp.example", "sub.corp.example", "example.com",
                                         "corp.example.com", "ex.com"]
    assert "options ndots:2 timeout:1" in conf.read_text()
    pid_b, tun_b = connect(svc, b, "other.ovpn")
    # the newest session's servers first; the admin's own server is not used meanwhile
    wait_for(lambda: nameservers(conf.read_bytes()) == ["10.9.0.3", "10.9.0.1"], 5,
             what=lambda: conf.read_text())
    assert search(conf.read_bytes()) == ["example.com", "ex.com", "corp.example",
                                         "sub.corp.example", "corp.example.com"]
    if first_out == "service-crash":
        svc.kill9()
        assert conf.read_bytes() != ORIGINAL
        svc.start()  # recovery: ends both openvpns, undoes both sessions
        wait_for(lambda: "event=recovered" in svc.log(), 10, what="recovery")
        assert conf.read_bytes() == ORIGINAL
        assert svc.stop() == 0
        return
    first, second = ((pid_a, tun_a), (pid_b, tun_b)) if first_out == "older" else \
        ((pid_b, tun_b), (pid_a, tun_a))
    os.kill(first[0], signal.SIGTERM)
    wait_for(lambda: gone(svc, first[1]), 10, what="first session ends")
    left = ["10.9.0.3"] if first_out == "older" else ["10.9.0.1"]
    assert nameservers(conf.read_bytes()) == left
    assert "corp.example.com" in search(conf.read_bytes())
    os.kill(second[0], signal.SIGKILL)
    wait_for(lambda: gone(svc, second[1]), 5, what="second session ends")
    assert conf.read_bytes() == ORIGINAL
    assert svc.stop() == 0


# -- openresolv -------------------------------------------------------------------------

def test_resolvconf_backend_with_the_real_openresolv(
        dl: DnsLab, make_service: Callable[..., Service]) -> None:
    lab = dl.lab
    target = lab.write_file("openresolv-resolv.conf", "nameserver 198.18.0.1\n")
    root = openresolv_root(lab, resolv_conf=target)
    exe = root / "sbin" / "resolvconf"
    svc = make_service(f"dns_backend = resolvconf\nresolvconf_path = {exe}\n")
    svc.start()
    assert "backend=resolvconf" in svc.log()
    user = lab.add_user()
    pid, tun = connect(svc, user, "plain.ovpn")
    wait_for(lambda: "10.9.0.1" in target.read_text(), 5, what=lambda: target.read_text())
    assert "corp.example" in target.read_text()
    listed = lab.run_client([str(exe), "-l"], check=True).stdout
    assert f"{tun}.openvpn" in listed or "10.9.0.1" in listed
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(svc, tun), 5, what="undo")
    assert "10.9.0.1" not in target.read_text()
    assert "10.9.0.1" not in lab.run_client([str(exe), "-l"]).stdout
    assert svc.stop() == 0
