"""The resolved calls, the backend choice and the kill switch's nftables text."""

from __future__ import annotations

import socket
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from iservice.linux import dns, firewall
from iservice.linux.dns import FileDns, NoDns, ResolvconfDns, ResolvedDns, make_backend
from iservice.policy.dns import LinkDns


def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, Any]]:
    calls: list[tuple[str, str | None, Any]] = []
    monkeypatch.setattr(ResolvedDns, "_call",
                        lambda self, method, sig, body: calls.append((method, sig, body)))
    return calls


def test_resolved_full_tunnel_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = recorded(monkeypatch)
    link = LinkDns((ip_address("10.8.0.1"), ip_address("fd00::1")), ("corp.example",), (),
                   True, None)
    ResolvedDns().apply(1, 42, "istun1", link, 1)
    assert calls == [
        ("SetLinkDNS", "ia(iay)", (42, [(socket.AF_INET, ip_address("10.8.0.1").packed),
                                        (socket.AF_INET6, ip_address("fd00::1").packed)])),
        ("SetLinkDomains", "ia(sb)", (42, [("corp.example", False), (".", True)])),
        ("SetLinkDefaultRoute", "ib", (42, True)),
    ]


def test_resolved_split_dns_with_dnssec(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = recorded(monkeypatch)
    link = LinkDns((ip_address("10.8.0.53"),), (), ("corp.example", "x.example"), False, True)
    ResolvedDns().apply(1, 42, "istun1", link, 1)
    assert calls[1] == ("SetLinkDomains", "ia(sb)",
                        (42, [("corp.example", True), ("x.example", True)]))
    assert calls[2:] == [("SetLinkDefaultRoute", "ib", (42, False)),
                         ("SetLinkDNSSEC", "is", (42, "yes"))]


def test_resolved_revert_only_the_same_link(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = recorded(monkeypatch)
    ResolvedDns().revert(1, {"ifindex": 1, "ifname": "lo"})
    ResolvedDns().revert(1, {"ifindex": 1, "ifname": "istun5"})  # index now someone else's
    ResolvedDns().revert(1, {"ifindex": 2**31 - 1, "ifname": "istun5"})  # gone
    assert calls == [("RevertLink", "i", (1,))]


def test_auto_without_a_bus_or_resolvconf_is_the_file(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    monkeypatch.setattr(dns, "find_resolvconf", lambda configured: None)
    b = make_backend("auto", resolv_conf="/x/resolv.conf", resolvconf_exe=None,
                     update_record=lambda c, d: None)
    assert isinstance(b, FileDns) and b.path == "/x/resolv.conf"
    monkeypatch.setattr(dns, "find_resolvconf", lambda configured: "/sbin/resolvconf")
    assert isinstance(make_backend("auto", resolv_conf="/x", resolvconf_exe=None,
                                   update_record=lambda c, d: None), ResolvconfDns)
    assert isinstance(make_backend("none", resolv_conf="/x", resolvconf_exe=None,
                                   update_record=lambda c, d: None), NoDns)
    monkeypatch.setattr(dns, "find_resolvconf", lambda configured: None)
    with pytest.raises(OSError):
        make_backend("resolvconf", resolv_conf="/x", resolvconf_exe=None,
                     update_record=lambda c, d: None)


def test_resolvconf_gets_resolv_conf_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[list[str], str]] = []
    monkeypatch.setattr(ResolvconfDns, "_run",
                        lambda self, args, stdin="": runs.append((list(args), stdin)))
    r = ResolvconfDns("/sbin/resolvconf")
    link = LinkDns((ip_address("10.8.0.1"),), ("a.example", "b.example"), (), True, None)
    r.apply(3, 9, "istun3", link, 1)
    r.revert(3, r.undo_data(3, 9, "istun3"))
    assert runs == [(["-a", "istun3.openvpn"],
                     "# iservice session 3\nnameserver 10.8.0.1\nsearch a.example b.example\n"),
                    (["-d", "istun3.openvpn", "-f"], "")]


def test_dns_only_table() -> None:
    text = firewall.table_body("iservice_5", 2, {1001: ["192.0.2.1", "2001:db8::1",
                                                          "192.0.2.1"], 1002: ["192.0.2.9"]})
    assert "table inet iservice_5 {" in text
    assert "meta skuid 1001 ip daddr { 192.0.2.1 } accept" in text
    assert "meta skuid 1001 ip6 daddr { 2001:db8::1 } accept" in text
    assert "meta skuid 1002 ip daddr { 192.0.2.9 } accept" in text
    assert 'oifname "lo" accept' in text and 'oifname "istun*" accept' in text
    assert "udp dport 53 reject" in text and "tcp dport 53 reject with tcp reset" in text
    assert "\n    reject\n" not in text


@pytest.mark.parametrize("flags", [1, 3])
def test_block_all_table(flags: int) -> None:
    text = firewall.table_body("iservice_5", flags, {7: ["192.0.2.1"]})
    assert text.index("meta skuid 7 ip daddr") < text.index("\n    reject\n")
    assert "udp sport 68 udp dport 67 accept" in text and "nd-neighbor-solicit" in text
    assert "\n    udp dport 53 reject\n" in text  # machine-wide (no scope given)


def test_a_scoped_table_blocks_only_that_users_traffic() -> None:
    text = firewall.table_body("iservice_5", 3, {7: ["192.0.2.1"]}, scope_uid=1001)
    assert "\n    meta skuid 1001 reject\n" in text
    assert "meta skuid 1001 meta l4proto tcp reject with tcp reset" in text
    assert "meta skuid 1001 udp dport 53 reject" in text
    assert "\n    reject\n" not in text and "\n    udp dport 53 reject" not in text
    # the administrator's forced DNS block stays machine-wide in a scoped table
    forced = firewall.table_body("iservice_5", 3, {}, scope_uid=1001, unscoped=2)
    assert "\n    udp dport 53 reject\n" in forced and "meta skuid 1001 reject" in forced


def test_table_names_come_from_the_session_id_alone() -> None:
    assert firewall.table_name(7) == "iservice_7"
    assert firewall.table_name(7, 2) == "iservice_7_2"
