"""Full tunnel (issue 4): ``redirect-gateway`` with Debian's openvpn 2.6 through iservice.

openvpn 2.6 does not tell scripts about redirect-gateway under --route-noexec; the
service learns it from the approved config and from openvpn's PUSH_REPLY output and
hands it to the hook (``iservice.facts``).  The server namespace counts what arrives
on its tunnel, so a ping proves which way it went.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.isv import Service, wait_for
from tests.lab import Lab, Pki, User

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

COUNTER = """table inet isv_count {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "tun*" ip daddr 10.9.0.1 counter
    iifname "tun*" ip6 daddr fd00:9::1 counter
  }
}
"""


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server('push "redirect-gateway def1 ipv6"\n')
        lab.start_server("", port=1195, name="plain", network="10.28.0.0/24",
                         network6="fd00:28::/64")
        lab.write_client_config("full.ovpn")
        lab.write_client_config("quiet.ovpn", "verb 1")
        lab.write_client_config("own.ovpn", "redirect-gateway def1", port=1195)
        lab.start_server('push "redirect-gateway def1 block-local"\n', port=1196,
                         name="blocklocal", network="10.38.0.0/24", network6="fd00:38::/64")
        lab.write_client_config("blocklocal.ovpn", port=1196)
        lab.ns_run(lab.server_ns, ["nft", "-f", "-"], input=COUNTER)
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="full", extra="dns_backend = none\n")
    s.start()
    yield s
    s.finish(journal=False)


def tunnel_counts(lab: Lab) -> tuple[int, int]:
    data = json.loads(lab.ns_run(lab.server_ns, ["nft", "-j", "list", "table", "inet",
                                                 "isv_count"]))
    counts = [e["rule"]["expr"][-1]["counter"]["packets"] for e in data["nftables"]
              if "rule" in e]
    return counts[0], counts[1]


def connect(lab: Lab, svc: Service, user: User, config: str) -> tuple[int, str]:
    return svc.connect(user, "--config", config)


def redirect_routes(lab: Lab, tun: str) -> list[str]:
    return sorted(r["dst"] for fam in (4, 6) for r in lab.routes(fam)
                  if r.get("dev") == tun and r["dst"] in
                  ("0.0.0.0/1", "128.0.0.0/1", "::/3", "2000::/4", "3000::/4", "fc00::/7"))


def bypass(lab: Lab) -> list[dict[str, Any]]:
    return [r for r in lab.routes(4) if r["dst"] == Lab.vpn_remote]


def test_pushed_redirect_gateway_sends_everything_through_the_tunnel(
        lab: Lab, svc: Service) -> None:
    before = lab.routes(4), lab.routes(6)
    user = lab.add_user()
    pid, tun = connect(lab, svc, user, "full.ovpn")
    wait_for(lambda: len(redirect_routes(lab, tun)) == 6, 10,
             what=lambda: f"{lab.routes(4)} {lab.routes(6)}\n{svc.log_tail()}")
    [host] = bypass(lab)  # the host route to the VPN server via the old default gateway
    assert host.get("gateway") == Lab.server_addr and host.get("dev") == Lab.client_if
    assert host.get("protocol") == "158"
    assert lab.route_get(Lab.outside_addr)["dev"] == tun
    v4, v6 = tunnel_counts(lab)
    # 10.9.0.1 and fd00:9::1 exist only behind the server (no route was pushed for them)
    assert lab.ping(Lab.pushed_host) and lab.ping(Lab.pushed_host6)
    assert tunnel_counts(lab) > (v4, v6)
    assert tunnel_counts(lab)[0] > v4 and tunnel_counts(lab)[1] > v6
    time.sleep(1.5)  # the tunnel itself keeps working (its packets take the bypass route)
    assert lab.ping(Lab.pushed_host, count=2)
    os.kill(pid, signal.SIGTERM)
    # the journal entry goes last, just after the tun: wait for both
    wait_for(lambda: tun not in svc.tuns() and
             svc.journal() == {"sessions": [], "changes": 0}, 10, what="disconnect")
    assert (lab.routes(4), lab.routes(6)) == before


def test_redirect_gateway_in_the_approved_config_and_kill9(lab: Lab, svc: Service) -> None:
    before = lab.routes(4), lab.routes(6)
    user = lab.add_user()
    pid, tun = connect(lab, svc, user, "own.ovpn")
    wait_for(lambda: redirect_routes(lab, tun) == ["0.0.0.0/1", "128.0.0.0/1"] and bypass(lab),
             10, what=lambda: f"{lab.routes(4)}\n{svc.log_tail()}")
    assert lab.ping(Lab.pushed_host)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: tun not in svc.tuns() and not bypass(lab), 5, what="undo")
    assert (lab.routes(4), lab.routes(6)) == before


def test_a_push_openvpn_does_not_print_is_not_seen(lab: Lab, svc: Service) -> None:
    # The documented limit on openvpn 2.6: at --verb 1 the PUSH_REPLY is not printed.
    user = lab.add_user()
    pid, tun = connect(lab, svc, user, "quiet.ovpn")
    assert "push-not-visible" in svc.log()
    time.sleep(0.5)
    assert "0.0.0.0/1" not in redirect_routes(lab, tun) and not bypass(lab)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: tun not in svc.tuns(), 5, what="undo")


def test_block_local_sends_the_local_subnet_through_the_tunnel_too(
        lab: Lab, svc: Service) -> None:
    before = lab.routes(4), lab.routes(6)
    user = lab.add_user()
    pid, tun = connect(lab, svc, user, "blocklocal.ovpn")
    wait_for(lambda: redirect_routes(lab, tun) == ["0.0.0.0/1", "128.0.0.0/1"] and bypass(lab),
             10, what=lambda: f"{lab.routes(4)}\n{svc.log_tail()}")
    # openvpn lists the local subnet's two halves among its routes: through the tunnel
    halves = sorted(r["dst"] for r in lab.routes(4) if r.get("dev") == tun and
                    r["dst"].startswith("198.18.0."))
    assert halves == ["198.18.0.0/25", "198.18.0.128/25"]
    assert lab.route_get(Lab.server_addr)["dev"] == tun
    time.sleep(1.5)
    assert lab.ping(Lab.pushed_host, count=2)  # the tunnel stays up (the bypass route)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: tun not in svc.tuns(), 10, what="disconnect")
    assert (lab.routes(4), lab.routes(6)) == before
