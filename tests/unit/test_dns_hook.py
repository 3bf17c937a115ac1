"""Full tunnel facts (openvpn 2.6) and the producer's DNS, redirect and block messages."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

from iservice.policy.redirect import (
    Facts,
    PushWatcher,
    Redirect,
    argv_options,
    config_options,
    options_facts,
)
from iservice.produce import Context, produce
from iservice.wire import msg as m

PUSH = ("2026-11-25 21:09:53 PUSH: Received control message: 'PUSH_REPLY,"
        "redirect-gateway def1 ipv6 block-local,dhcp-option DNS 10.8.0.1,route-gateway 10.8.0.1,"
        "topology subnet,ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM'")


# -- where the facts come from -------------------------------------------------------------

def test_config_parsing_skips_comments_and_inline_blocks() -> None:
    text = ("client\n# redirect-gateway def1\n; block-outside-dns\n<ca>\nredirect-gateway\n</ca>\n"
            "--verb 4\nredirect-gateway \"def1\" 'bypass-dhcp' # trailing\n"
            "setenv X 'a b' \\\"c\n")
    assert config_options(text) == [["client"], ["verb", "4"],
                                     ["redirect-gateway", "def1", "bypass-dhcp"],
                                     ["setenv", "X", "a b", '"c']]


def test_the_last_redirect_gateway_wins_and_verb_decides_visibility() -> None:
    opts = argv_options(["--config", "x.ovpn", "--redirect-gateway", "def1", "ipv6",
                         "--verb", "3"])
    facts = options_facts([["redirect-gateway", "local"], *opts])
    assert facts.facts.redirect == Redirect(ipv4=True, ipv6=True)
    assert facts.push_visible
    assert not options_facts([["verb", "1"]]).push_visible
    assert not options_facts([["verb", "5"], ["log", "/tmp/x"]]).push_visible
    assert options_facts([["redirect-gateway", "!ipv4", "ipv6"]]).facts.redirect == \
        Redirect(ipv4=False, ipv6=True)
    assert options_facts([["block-outside-dns"], ["route-nopull"]]).route_nopull


def test_push_watcher_follows_pushes_filters_and_reconnects() -> None:
    w = PushWatcher(Facts())
    assert w.line(PUSH)
    assert w.facts.redirect == Redirect(ipv4=True, ipv6=True, block_local=True)
    assert w.line("2026-11-25 21:09:53 Pushed option removed by filter: "
                  "'redirect-gateway def1 ipv6 block-local'")
    assert w.facts.redirect is None
    # a continued push adds to the set; a new PUSH_REPLY starts a new one
    w.line("PUSH: Received control message: 'PUSH_REPLY,block-outside-dns,push-continuation 2'")
    w.line("PUSH: Received control message: 'PUSH_REPLY,redirect-gateway def1'")
    assert w.facts == Facts(Redirect(), True)
    w.line("PUSH: Received control message: 'PUSH_REPLY,route 10.9.0.0 255.255.0.0'")
    assert w.facts == Facts()
    assert not w.line("some other line")


def test_config_facts_stay_and_route_nopull_ignores_pushes() -> None:
    w = PushWatcher(Facts(Redirect(local=True)), route_nopull=True)
    w.line(PUSH)
    assert w.facts.redirect == Redirect(local=True)
    w = PushWatcher(Facts(Redirect(local=True)))
    w.line("PUSH: Received control message: 'PUSH_REPLY,route-gateway 10.8.0.1'")
    assert w.facts.redirect == Redirect(local=True)


def test_push_watcher_notes_the_vpn_servers() -> None:
    w = PushWatcher(Facts())
    assert w.line("2026-11-25 21:09:53 UDPv4 link remote: [AF_INET]192.0.2.1:1194")
    assert not w.line("2026-11-25 21:09:53 [server] Peer Connection Initiated with "
                      "[AF_INET]192.0.2.1:1194")
    assert w.line("TCP connection established with [AF_INET6]2001:db8::1:443")
    assert not w.line("UDPv4 link remote: [AF_INET]1.2.3:1194")  # not an address
    assert w.servers == ["192.0.2.1", "2001:db8::1"]
    for i in range(10):  # the latest few only
        w.line(f"UDPv4 link remote: [AF_INET]192.0.2.{i}:1194")
    assert w.servers == ["192.0.2.6", "192.0.2.7", "192.0.2.8", "192.0.2.9"]
    assert w.line("UDPv4 link remote: [AF_INET]192.0.2.7:1194")
    assert w.servers == ["192.0.2.6", "192.0.2.8", "192.0.2.9", "192.0.2.7"]


# -- what the producer makes ----------------------------------------------------------------

BASE = {"dev": "lo", "tun_mtu": "1500", "ifconfig_local": "10.8.0.2",
        "ifconfig_netmask": "255.255.255.0", "route_vpn_gateway": "10.8.0.1",
        "route_net_gateway": "198.18.0.1", "trusted_ip": "192.0.2.1"}
LO = m.Interface(socket.if_nametoindex("lo"), "lo")
UNSET = m.Interface(m.IFACE_INDEX_INVALID, "")
EVENTS = {"up": m.EVENT_UP, "route-up": m.EVENT_ROUTE_UP,
          "route-pre-down": m.EVENT_ROUTE_PREDOWN, "down": m.EVENT_DOWN}


class _Producer:
    """``produce`` for an environment with ``script_type`` and the facts the service read
    (in ``env`` under ``facts``), the session's tun being ``lo``."""

    @staticmethod
    def messages_for(env: dict[str, object]) -> list[m.Message]:
        facts = env.get("facts", Facts())
        assert isinstance(facts, Facts)
        plain = {k: v for k, v in env.items() if isinstance(v, str)}
        return produce(EVENTS[plain["script_type"]], plain, Context("lo", LO.index, facts)).messages


producer = _Producer()


def env_with(facts: Facts, **kw: str) -> dict[str, object]:
    return {**BASE, "facts": facts, **kw}


def of_type(msgs: list[m.Message], *types: type) -> list[m.Message]:
    return [x for x in msgs if isinstance(x, types)]


def test_up_sends_dhcp_option_dns_per_family_then_register_dns() -> None:
    env = {**BASE, "script_type": "up",
           "foreign_option_1": "dhcp-option DNS 10.8.0.1",
           "foreign_option_2": "dhcp-option DNS6 fd00:8::1",
           "foreign_option_3": "dhcp-option DOMAIN corp.example",
           "foreign_option_4": "dhcp-option DOMAIN-SEARCH a.example",
           "foreign_option_5": "dhcp-option DOMAIN bad name!",
           "foreign_option_6": "dhcp-option DNS 127.0.0.1",
           "foreign_option_7": "dhcp-option NTP 10.8.0.1"}
    msgs = producer.messages_for(env)
    assert of_type(msgs, m.DnsCfgMsg) == [
        m.DnsCfgMsg(m.MsgType.ADD_DNS_CFG, 0, LO, "corp.example,a.example", socket.AF_INET,
                    (IPv4Address("10.8.0.1"),)),
        m.DnsCfgMsg(m.MsgType.ADD_DNS_CFG, 0, LO, "", socket.AF_INET6,
                    (IPv6Address("fd00:8::1"),))]
    assert isinstance(msgs[-1], m.RegisterDnsMsg)
    down = producer.messages_for({**env, "script_type": "down"})
    assert [x.type for x in down] == [m.MsgType.DEL_DNS_CFG, m.MsgType.DEL_DNS_CFG,
                                      m.MsgType.DEL_ADDRESS]


def test_dns_option_variables_win_and_become_nrpt() -> None:
    env = {**BASE, "script_type": "up",
           "dns_server_2_address_1": "10.8.0.99",
           "dns_server_1_address_1": "10.8.0.53", "dns_server_1_address_2": "fd00::53",
           "dns_server_1_resolve_domain_1": "corp.example", "dns_server_1_dnssec": "yes",
           "dns_search_domain_1": "a.example",
           "foreign_option_1": "dhcp-option DNS 10.8.0.53"}
    msgs = producer.messages_for(env)
    assert of_type(msgs, m.DnsCfgMsg) == []
    assert of_type(msgs, m.NrptCfgMsg) == [m.NrptCfgMsg(
        m.MsgType.ADD_NRPT_CFG, 0, LO, ("10.8.0.53", "fd00::53"), "corp.example", "a.example",
        True)]


def test_no_dns_no_messages() -> None:
    msgs = producer.messages_for({**BASE, "script_type": "up"})
    assert not of_type(msgs, m.DnsCfgMsg, m.NrptCfgMsg, m.RegisterDnsMsg, m.WfpBlockMsg)


def test_redirect_from_the_facts_bypass_first_and_deleted_last() -> None:
    env = env_with(Facts(Redirect()), script_type="route-up",
                   route_network_1="10.9.0.0", route_netmask_1="255.255.0.0",
                   route_gateway_1="10.8.0.1")
    up = producer.messages_for(env)
    assert [(str(x.prefix), x.prefix_len, x.iface) for x in up if isinstance(x, m.RouteMsg)] == [
        ("10.9.0.0", 16, LO), ("192.0.2.1", 32, UNSET), ("0.0.0.0", 1, LO),
        ("128.0.0.0", 1, LO)]
    down = producer.messages_for({**env, "script_type": "route-pre-down"})
    assert [(str(x.prefix), x.type) for x in down if isinstance(x, m.RouteMsg)] == [
        ("128.0.0.0", m.MsgType.DEL_ROUTE), ("0.0.0.0", m.MsgType.DEL_ROUTE),
        ("192.0.2.1", m.MsgType.DEL_ROUTE), ("10.9.0.0", m.MsgType.DEL_ROUTE)]


def test_redirect_local_has_no_bypass_and_no_facts_no_redirect() -> None:
    env = env_with(Facts(Redirect(local=True)), script_type="route-up")
    assert [str(x.prefix) for x in producer.messages_for(env) if isinstance(x, m.RouteMsg)] == [
        "0.0.0.0", "128.0.0.0"]
    assert producer.messages_for({**BASE, "script_type": "route-up"}) == []
    env = env_with(Facts(), script_type="route-up")
    assert producer.messages_for(env) == []


def test_openvpn_27_variables_win_over_the_facts() -> None:
    env = env_with(Facts(), script_type="route-up", route_redirect_gateway_ipv4="2")
    assert len(producer.messages_for(env)) == 3
    env = env_with(Facts(Redirect()), script_type="route-up",
                   route_redirect_gateway_ipv6="1")
    assert producer.messages_for(env) == []  # IPv6 only: openvpn lists those routes itself


def test_ipv6_routes_via_the_net_gateway_bypass_the_tunnel() -> None:
    env = {**BASE, "script_type": "route-up", "net_gateway_ipv6": "2001:db8:18::1",
           "route_ipv6_network_1": "2001:db8:99::7/128",
           "route_ipv6_gateway_1": "2001:db8:18::1",
           "route_ipv6_network_2": "2000::/4", "route_ipv6_gateway_2": "fd00:8::1"}
    routes = producer.messages_for(env)
    assert [(str(x.prefix), x.iface) for x in routes if isinstance(x, m.RouteMsg)] == [
        ("2001:db8:99::7", UNSET), ("2000::", LO)]


def test_block_messages() -> None:
    env = env_with(Facts(block_outside_dns=True), script_type="up")
    assert of_type(producer.messages_for(env), m.WfpBlockMsg) == [
        m.WfpBlockMsg(m.MsgType.ADD_WFP_BLOCK, 0, m.WFP_BLOCK_DNS, LO)]
    env["ISERVICE_KILL_SWITCH"] = "1"
    assert of_type(producer.messages_for(env), m.WfpBlockMsg)[0].flags == 3
    # never deleted by the producer: the block holds across reconnects
    assert not of_type(producer.messages_for({**env, "script_type": "down"}), m.WfpBlockMsg)
