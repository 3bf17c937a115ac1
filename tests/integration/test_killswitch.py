"""The kill switch (issue 4): one nftables table per session, undone with the session.

A DNS responder runs in the server namespace on every address: 203.0.113.1 is
reachable without the VPN (a resolver "outside the tunnel"), 10.9.0.1 only through
it.  Also here: a hostile openvpn (a test double run as exe_path) that asks for DNS
and blocks on links that are not its own.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.isv import PYTHON, Service, wait_for
from tests.lab import Lab, Pki, User

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

HOSTILE_SRC = Path(__file__).resolve().parent.parent / "hostile_openvpn.py"
OUTSIDE, INSIDE = Lab.outside_addr, Lab.pushed_host


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server('push "route 10.9.0.0 255.255.0.0"\n'
                         'push "block-outside-dns"\n')
        lab.start_server('push "route 10.9.0.0 255.255.0.0"\n', port=1195, name="plain",
                         network="10.28.0.0/24", network6="fd00:28::/64")
        lab.write_client_config("bod.ovpn")
        lab.write_client_config("plain.ovpn", port=1195)
        lab.start_dns_server("10.9.0.99")
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="ks", extra="dns_backend = none\n")
    s.start()
    yield s
    s.finish(journal=False)
    assert tables(lab) == []


def tables(lab: Lab) -> list[str]:
    out = lab.ns_run(lab.client_ns, ["nft", "list", "tables"])
    return [line.split()[-1] for line in out.splitlines() if "iservice_" in line]


def connect(svc: Service, user: User, *options: str) -> tuple[int, str]:
    return svc.connect(user, *options)


def dns_works(lab: Lab, server: str, user: User | None = None) -> bool:
    return lab.dns_query(server, "www.example", user=user) == "10.9.0.99" and \
        lab.dns_query(server, "www.example", tcp=True, user=user) == "10.9.0.99"


def dns_fails(lab: Lab, server: str, user: User | None = None) -> bool:
    return lab.dns_query(server, "www.example", timeout=0.5, user=user) is None and \
        lab.dns_query(server, "www.example", tcp=True, timeout=0.5, user=user) is None


def test_block_outside_dns_pushed_by_the_server(lab: Lab, svc: Service) -> None:
    assert dns_works(lab, OUTSIDE)
    user = lab.add_user()
    pid, tun = connect(svc, user, "--config", "bod.ovpn")
    wait_for(lambda: tables(lab), 5, what=lambda: svc.log_tail())
    assert dns_fails(lab, OUTSIDE, user)  # a resolver outside the tunnel: refused
    assert dns_works(lab, INSIDE, user)  # through the tunnel: answered
    assert lab.ping(OUTSIDE, user=user)  # only DNS is blocked
    # a non-admin's block covers that user's traffic only, never another user's
    assert dns_works(lab, OUTSIDE) and dns_works(lab, OUTSIDE, lab.add_user())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: tun not in svc.tuns(), 10, what="disconnect")
    assert tables(lab) == []
    assert dns_works(lab, OUTSIDE)


def test_kill_switch_blocks_everything_but_the_tunnel_even_after_a_crash(
        lab: Lab, svc: Service) -> None:
    assert lab.ping(OUTSIDE)
    user = lab.add_user()
    pid, tun = connect(svc, user, "--config", "plain.ovpn",
                       "--setenv", "ISERVICE_KILL_SWITCH", "1")
    wait_for(lambda: tables(lab), 5, what=lambda: svc.log_tail())
    assert not lab.ping(OUTSIDE, timeout=0.5, user=user)
    assert dns_fails(lab, OUTSIDE, user)
    assert lab.ping(INSIDE, user=user) and dns_works(lab, INSIDE, user)
    # other users (and root) are not cut off by this user's kill switch
    assert lab.ping(OUTSIDE) and lab.ping(OUTSIDE, user=lab.add_user())
    time.sleep(2.5)  # openvpn's own packets to the server still pass: the tunnel stays up
    assert lab.ping(INSIDE, count=2, user=user)
    # the service dies: the table stays (fail closed) until the next start undoes it
    svc.kill9()
    assert tables(lab) and not lab.ping(OUTSIDE, timeout=0.5, user=user)
    svc.start()
    wait_for(lambda: "event=recovered" in svc.log(), 10, what="recovery")
    assert tables(lab) == [] and tun not in svc.tuns()
    assert lab.ping(OUTSIDE, user=user) and dns_works(lab, OUTSIDE, user)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, what="openvpn ended")


def test_block_dns_setting_applies_to_every_session(lab: Lab) -> None:
    s = Service(lab, name="ksforced", extra="dns_backend = none\nblock_dns = true\n")
    s.start()
    try:
        user = lab.add_user()
        pid, tun = connect(s, user, "--config", "plain.ovpn")
        wait_for(lambda: tables(lab), 5, what=lambda: s.log_tail())
        # the administrator's block_dns covers the whole machine, root included
        assert dns_fails(lab, OUTSIDE) and dns_fails(lab, OUTSIDE, user)
        assert dns_works(lab, INSIDE, user)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: tun not in s.tuns(), 5, what="undo")
        assert tables(lab) == [] and dns_works(lab, OUTSIDE)
    finally:
        assert s.stop() == 0, s.log_tail()


# -- a hostile openvpn --------------------------------------------------------------------

SCENARIO = """
from ipaddress import IPv4Address
I = m.Interface
own = I(tun_index, tun)
lo = I(1, "lo")
lab_c = I(m.IFACE_INDEX_INVALID, "lab-c")
def dns(iface, domains="corp.example", addrs=("10.9.0.1",), t=m.MsgType.ADD_DNS_CFG):
    return m.encode_message(m.DnsCfgMsg(t, 7, iface, domains, socket.AF_INET,
                                        tuple(IPv4Address(a) for a in addrs)))
def nrpt(iface, addrs=("10.9.0.1",), resolve="corp.example"):
    return m.encode_message(m.NrptCfgMsg(m.MsgType.ADD_NRPT_CFG, 7, iface, addrs, resolve, "",
                                         False))
def block(iface, flags, t=m.MsgType.ADD_WFP_BLOCK):
    return m.encode_message(m.WfpBlockMsg(t, 7, flags, iface))
r = {}
r["dns_lo"] = send(dns(lo))
r["dns_other_by_name"] = send(dns(lab_c))
r["nrpt_lo"] = send(nrpt(lo))
r["block_lo"] = send(block(lo, 1))
r["block_other_by_name"] = send(block(lab_c, 2))
r["injected_name"] = send(dns(own, "corp.example\\nnameserver 203.0.113.1"))
r["bad_server"] = send(nrpt(own, ("127.0.0.1",)))
r["bad_flags"] = send(block(own, 4))
r["del_nothing"] = send(block(own, 0, m.MsgType.DEL_WFP_BLOCK))
done(**r)
"""


def test_a_hostile_channel_cannot_touch_other_links(lab: Lab) -> None:
    exe = lab.write_file("bin/hostile-openvpn", f"#!{PYTHON} -I\n" + HOSTILE_SRC.read_text(),
                         mode=0o755)
    conf = lab.write_file("hostile-resolv.conf", "nameserver 198.18.0.1\n")
    original = conf.read_bytes()
    s = Service(lab, name="kshostile", extra=f"exe_path = {exe}\ndns_backend = file\n")
    lab.service_binds = [(conf, "/etc/resolv.conf")]
    try:
        s.start()
    finally:
        lab.service_binds = []
    try:
        user = lab.add_user()
        lab.write_file("client/hostile-dns.ovpn", SCENARIO)
        cp = s.start_as(user, "--config", "hostile-dns.ovpn")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        result = user.home / "hostile-dns.ovpn.result"
        wait_for(result.exists, 10, what=lambda: s.log_tail())
        r: dict[str, Any] = json.loads(result.read_text())
        denied, invalid, not_found = 5, 87, 1168
        for key in ("dns_lo", "dns_other_by_name", "nrpt_lo", "block_lo",
                    "block_other_by_name"):
            assert r[key] == [7, denied], (key, r[key])
        assert r["injected_name"] == [7, invalid]
        assert r["bad_server"] == [7, invalid]
        assert r["bad_flags"] == [7, invalid]
        assert r["del_nothing"] == [7, not_found]
        # nothing changed anywhere
        assert conf.read_bytes() == original
        assert tables(lab) == []
        os.kill(int(cp.stdout), signal.SIGKILL)
        wait_for(lambda: not s.tuns(), 5, what="undo")
    finally:
        assert s.stop() == 0, s.log_tail()
