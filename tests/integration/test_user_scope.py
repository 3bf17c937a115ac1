"""``route_scope = user``: two users, each with their own full tunnel, at the same time.

With the real openvpn 2.6 and a server pushing ``redirect-gateway def1 ipv6`` and a DNS
server: each user's traffic (and DNS lookups, whatever resolver they ask) leaves through
their own tunnel, root's and other users' through neither; the LAN stays reachable;
ending one session leaves the other untouched; nothing is left after both.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest
from tests.isv import Service, alive, wait_for
from tests.lab import Lab, Pki, User

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, users")]

TUNNEL_ANSWER = "10.77.0.1"  # the DNS server behind the VPN
LAN_ANSWER = "10.66.6.6"  # the DNS server on the client's LAN


@pytest.fixture(scope="module")
def lab(pki: Pki, lab_swept: list[str]) -> Iterator[Lab]:
    with Lab(pki) as lab:
        lab.start_server('push "redirect-gateway def1 ipv6"\n'
                         f'push "dhcp-option DNS {Lab.pushed_host}"\n')
        lab.start_dns_server(TUNNEL_ANSWER, name="dns-vpn", addresses=[Lab.pushed_host])
        lab.start_dns_server(LAN_ANSWER, name="dns-lan", addresses=[Lab.server_addr])
        lab.write_client_config("full.ovpn")
        yield lab


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[Service]:
    s = Service(lab, name="peruser", extra="dns_backend = none\nroute_scope = user\n")
    s.start()
    yield s
    s.finish()


def connect(lab: Lab, svc: Service, user: User) -> tuple[int, str]:
    return svc.connect(user, "--config", "full.ovpn", timeout=20)


def main_routes(lab: Lab) -> tuple[list[dict[str, object]], ...]:
    """The main table, less the link-local route the kernel gives every IPv6 link
    (a tun's fe80::/64 steers nothing but link-local traffic on that tun)."""
    return lab.routes(4), [r for r in lab.routes(6)
                           if not (r["dst"] == "fe80::/64" and
                                   str(r.get("dev", "")).startswith("istun"))]


def dev_for(lab: Lab, addr: str, uid: int) -> str:
    out = lab.ns_run(lab.client_ns, ["ip", "-j", "route", "get", addr, "uid", str(uid)])
    return str(json.loads(out)[0]["dev"])


def rules(lab: Lab) -> list[str]:
    return sorted(lab.ns_run(lab.client_ns, ["ip", f"-{f}", "rule"]) for f in (4, 6))


def tunnel_address(lab: Lab, tun: str) -> str:
    return next(a["local"] for a in lab.addrs(tun) if a["family"] == "inet")


def count_from(lab: Lab, sources: list[str]) -> dict[str, int]:
    data = json.loads(lab.ns_run(lab.server_ns, ["nft", "-j", "list", "table", "inet",
                                                 "isv_us"]))
    counts: dict[str, int] = {}
    for e in data["nftables"]:
        if "rule" in e:
            exprs = e["rule"]["expr"]
            src = next(x["match"]["right"] for x in exprs if "match" in x and
                       x["match"]["left"].get("payload", {}).get("field") == "saddr")
            counts[src] = exprs[-1]["counter"]["packets"]
    return {s: counts[s] for s in sources}


def test_two_users_each_with_their_own_full_tunnel(lab: Lab, svc: Service) -> None:
    before_rules = rules(lab)
    before = main_routes(lab)
    alice, bob, carol = lab.add_user(), lab.add_user(), lab.add_user()
    pa, ta = connect(lab, svc, alice)
    pb, tb = connect(lab, svc, bob)
    assert ta != tb
    # The main table is as it was: both full tunnels live in their users' own tables.
    assert main_routes(lab) == before
    # Each user's traffic leaves through their own tunnel; root's and carol's through
    # neither; the LAN (the default gateway's subnet) stays reachable for everybody.
    for addr in (Lab.outside_addr, Lab.outside_addr6, Lab.pushed_host):
        assert dev_for(lab, addr, alice.uid) == ta
        assert dev_for(lab, addr, bob.uid) == tb
        assert dev_for(lab, addr, 0) == Lab.client_if
        assert dev_for(lab, addr, carol.uid) == Lab.client_if
    for uid in (alice.uid, bob.uid, 0):
        assert dev_for(lab, Lab.server_addr, uid) == Lab.client_if
    # ... and so do real packets: the server counts them by tunnel address.
    a_addr, b_addr = tunnel_address(lab, ta), tunnel_address(lab, tb)
    lab.ns_run(lab.server_ns, ["nft", "-f", "-"], input=(
        "table inet isv_us {\n  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    iifname \"tun*\" ip saddr {a_addr} ip daddr {Lab.outside_addr} counter\n"
        f"    iifname \"tun*\" ip saddr {b_addr} ip daddr {Lab.outside_addr} counter\n"
        "  }\n}\n"))
    try:
        zero = count_from(lab, [a_addr, b_addr])
        assert lab.ping(Lab.outside_addr, user=alice)
        after_a = count_from(lab, [a_addr, b_addr])
        assert after_a[a_addr] > zero[a_addr] and after_a[b_addr] == zero[b_addr]
        assert lab.ping(Lab.outside_addr, user=bob)
        after_b = count_from(lab, [a_addr, b_addr])
        assert after_b[b_addr] > after_a[b_addr] and after_b[a_addr] == after_a[a_addr]
        assert lab.ping(Lab.outside_addr) and lab.ping(Lab.outside_addr, user=carol)
        assert count_from(lab, [a_addr, b_addr]) == after_b  # root and carol: no tunnel
    finally:
        lab.ns_run(lab.server_ns, ["nft", "delete", "table", "inet", "isv_us"], check=False)
    # DNS: a user's lookups go to their tunnel's server, whichever resolver they ask
    # (the LAN's, or one on loopback); root's and carol's go where they asked.
    assert lab.dns_query(Lab.server_addr, "www.example", user=alice) == TUNNEL_ANSWER
    assert lab.dns_query(Lab.server_addr, "www.example", user=alice, tcp=True) == TUNNEL_ANSWER
    assert lab.dns_query("127.0.0.53", "www.example", user=alice) == TUNNEL_ANSWER
    assert lab.dns_query(Lab.server_addr, "www.example", user=bob) == TUNNEL_ANSWER
    assert lab.dns_query(Lab.server_addr, "www.example") == LAN_ANSWER
    assert lab.dns_query(Lab.server_addr, "www.example", user=carol) == LAN_ANSWER
    # Ending alice's session leaves bob's untouched.
    os.kill(pa, signal.SIGTERM)
    wait_for(lambda: ta not in svc.tuns(), 10, what=svc.log_tail)
    assert dev_for(lab, Lab.outside_addr, alice.uid) == Lab.client_if
    assert dev_for(lab, Lab.outside_addr, bob.uid) == tb
    assert lab.ping(Lab.outside_addr, user=bob)
    assert lab.dns_query(Lab.server_addr, "www.example", user=alice) == LAN_ANSWER
    assert lab.dns_query(Lab.server_addr, "www.example", user=bob) == TUNNEL_ANSWER
    os.kill(pb, signal.SIGTERM)
    wait_for(lambda: svc.tuns() == [] and svc.journal() == {"sessions": [], "changes": 0},
             10, what=svc.log_tail)
    assert rules(lab) == before_rules
    assert main_routes(lab) == before
    tables = lab.run_service(["nft", "list", "tables"]).stdout
    assert "iservice_" not in tables


def test_a_killed_service_leaves_no_rule_table_or_redirect(lab: Lab, svc: Service) -> None:
    before_rules = rules(lab)
    user = lab.add_user()
    pid, tun = connect(lab, svc, user)
    assert dev_for(lab, Lab.outside_addr, user.uid) == tun
    svc.kill9()
    svc.start()
    wait_for(lambda: "event=recovered" in svc.log(), 10, what=svc.log_tail)
    wait_for(lambda: svc.tuns() == [], 5, what=svc.log_tail)
    assert rules(lab) == before_rules
    assert dev_for(lab, Lab.outside_addr, user.uid) == Lab.client_if
    assert "iservice_" not in lab.run_service(["nft", "list", "tables"]).stdout
    assert svc.journal() == {"sessions": [], "changes": 0}
    wait_for(lambda: not alive(pid), 5, what="the session's openvpn ended")
