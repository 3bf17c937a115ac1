"""DNS, NRPT and kill-switch requests (issue 4): names, servers, the session's DNS state."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iservice import errors
from iservice.policy.dns import (
    BadDnsValue,
    BlockState,
    DnsState,
    LinkDns,
    Nrpt,
    parse_domain,
    parse_domains,
    parse_server,
)
from iservice.policy.requests import (
    DefaultRoute,
    FlushDns,
    Limits,
    Nothing,
    Refused,
    RequestPolicy,
    SessionRecords,
    SetBlock,
    SetDns,
)
from iservice.wire import msg as m

TUN = m.Interface(index=7, name="istun3")
TUN_BY_NAME = m.Interface(index=m.IFACE_INDEX_INVALID, name="istun3")
OTHER = m.Interface(index=2, name="eth0")
OTHER_BY_NAME = m.Interface(index=m.IFACE_INDEX_INVALID, name="eth0")


def policy(records: SessionRecords | None = None, *, forced: int = 0,
           max_dns: int = 8) -> RequestPolicy:
    return RequestPolicy(
        tun_ifindex=7, tun_name="istun3", limits=Limits(100, 4, 2, max_dns),
        records=records or SessionRecords({}, {}),
        default_route=lambda fam: DefaultRoute(IPv4Address("192.0.2.1"), 2), forced_block=forced)


def dns(addrs: tuple[str, ...] = ("10.8.0.1",), domains: str = "",
        iface: m.Interface = TUN, add: bool = True, family: int = socket.AF_INET) -> m.DnsCfgMsg:
    kind = m.MsgType.ADD_DNS_CFG if add else m.MsgType.DEL_DNS_CFG
    return m.DnsCfgMsg(kind, 1, iface, domains, family, tuple(ip_address(a) for a in addrs))


def nrpt(addrs: tuple[str, ...] = ("10.8.0.53",), resolve: str = "", search: str = "",
         dnssec: bool = False, iface: m.Interface = TUN, add: bool = True) -> m.NrptCfgMsg:
    kind = m.MsgType.ADD_NRPT_CFG if add else m.MsgType.DEL_NRPT_CFG
    return m.NrptCfgMsg(kind, 1, iface, addrs, resolve, search, dnssec)


def block(flags: int, iface: m.Interface = TUN, add: bool = True) -> m.WfpBlockMsg:
    kind = m.MsgType.ADD_WFP_BLOCK if add else m.MsgType.DEL_WFP_BLOCK
    return m.WfpBlockMsg(kind, 1, flags, iface)


def apply(records: SessionRecords, msg: m.Message, **kw: int) -> object:
    """Decide and, like the session, record the new state."""
    op = policy(records, **kw).decide(msg)
    if isinstance(op, SetDns):
        records.dns.dns = op.state
    return op


# -- names and servers ------------------------------------------------------------------

@pytest.mark.parametrize("text,name", [
    ("corp.example", "corp.example"), (".Corp.Example.", "corp.example"),
    ("a-b_c.x1", "a-b_c.x1"), (" lead.example ", "lead.example"), ("x" * 63, "x" * 63)])
def test_good_names(text: str, name: str) -> None:
    assert parse_domain(text) == name


@pytest.mark.parametrize("text", [
    "", ".", "a..b", "-a.b", "a-.b", "x" * 64, "a b", "a\nnameserver 1.2.3.4", "~corp",
    "*.corp", "corp/x", "cörp.example", "a." * 127 + "a"])
def test_bad_names(text: str) -> None:
    with pytest.raises(BadDnsValue):
        parse_domain(text)


def test_domain_lists_split_on_commas_only_and_keep_order() -> None:
    assert parse_domains("b.example, a.example,,B.example") == ("b.example", "a.example")
    assert parse_domains("") == ()
    with pytest.raises(BadDnsValue):
        parse_domains("corp.example\nnameserver 203.0.113.1")


@given(st.text(max_size=80))
def test_parsed_names_never_carry_separators(text: str) -> None:
    try:
        names = parse_domains(text)
    except BadDnsValue:
        return
    for name in names:
        assert name and not any(c.isspace() or c in ",~\0" for c in name)


@pytest.mark.parametrize("text", ["0.0.0.0", "127.0.0.1", "::1", "224.0.0.1", "fe80::1",
                                  "::ffff:10.0.0.1", "10.0.0.1:53", "nonsense"])
def test_bad_servers(text: str) -> None:
    with pytest.raises(BadDnsValue):
        parse_server(text)


# -- the state a session asks for --------------------------------------------------------

def test_dhcp_options_mean_all_names_through_the_tunnel() -> None:
    state = DnsState(servers4=(IPv4Address("10.8.0.1"),), servers6=(IPv6Address("fd00::1"),),
                     domains=("corp.example",))
    assert state.link() == LinkDns((IPv4Address("10.8.0.1"), IPv6Address("fd00::1")),
                                   ("corp.example",), (), True, None)


def test_nrpt_with_resolve_domains_is_split_dns() -> None:
    state = DnsState(nrpt=Nrpt((IPv4Address("10.8.0.53"),), ("corp.example",), (), True))
    link = state.link()
    assert link.routing_domains == ("corp.example",) and link.search == ()
    assert link.default_route is False and link.dnssec is True
    assert LinkDns.from_json(link.to_json()) == link


def test_add_dns_cfg_replaces_its_family_and_del_clears_it() -> None:
    rec = SessionRecords({}, {})
    op = apply(rec, dns(("10.8.0.1", "10.8.0.2"), "corp.example"))
    assert isinstance(op, SetDns) and op.previous == DnsState()
    assert rec.dns.dns.servers4 == (IPv4Address("10.8.0.1"), IPv4Address("10.8.0.2"))
    apply(rec, dns(("fd00::1",), family=socket.AF_INET6))
    apply(rec, dns(("10.8.0.9",)))  # a restart re-sends: replaced, not added
    assert rec.dns.dns.servers4 == (IPv4Address("10.8.0.9"),)
    assert rec.dns.dns.domains == ("corp.example",)
    apply(rec, dns((), "corp.example", add=False))
    assert rec.dns.dns.servers4 == () and rec.dns.dns.domains == ()
    assert rec.dns.dns.servers6 == (IPv6Address("fd00::1"),)
    apply(rec, dns(("fd00::1",), family=socket.AF_INET6, add=False))
    assert rec.dns.dns.empty
    with pytest.raises(Refused) as exc:
        apply(rec, dns(add=False))
    assert exc.value.error_number == errors.ERROR_NOT_FOUND


def test_nrpt_add_and_del() -> None:
    rec = SessionRecords({}, {})
    apply(rec, nrpt(("10.8.0.53", "fd00::53"), ".corp.example,x.example", "corp.example",
                    dnssec=True))
    assert rec.dns.dns.nrpt == Nrpt((IPv4Address("10.8.0.53"), IPv6Address("fd00::53")),
                                    ("corp.example", "x.example"), ("corp.example",), True)
    apply(rec, nrpt(add=False))
    assert rec.dns.dns.empty
    with pytest.raises(Refused):
        apply(rec, nrpt(add=False))


@pytest.mark.parametrize("msg", [dns(iface=OTHER), dns(iface=OTHER_BY_NAME),
                                 nrpt(iface=OTHER), block(1, OTHER), block(2, OTHER_BY_NAME),
                                 dns(add=False, iface=OTHER)])
def test_other_links_are_refused(msg: m.Message) -> None:
    rec = SessionRecords({}, {})
    with pytest.raises(Refused) as exc:
        policy(rec).decide(msg)
    assert exc.value.error_number == errors.ERROR_ACCESS_DENIED
    assert rec.dns.dns.empty and rec.dns.block.flags == 0


def test_own_link_by_name_is_fine() -> None:
    assert isinstance(policy().decide(dns(iface=TUN_BY_NAME)), SetDns)


@pytest.mark.parametrize("msg", [
    dns(("10.8.0.1",), "bad name"), dns(("127.0.0.1",)), dns((), ""),
    nrpt(("not-an-ip",)), nrpt(("10.8.0.53",), "corp example"), nrpt(()), block(0), block(4)])
def test_invalid_values_are_refused(msg: m.Message) -> None:
    with pytest.raises(Refused) as exc:
        policy().decide(msg)
    assert exc.value.error_number == errors.ERROR_INVALID_PARAMETER


def test_dns_server_limit() -> None:
    rec = SessionRecords({}, {})
    apply(rec, dns(("10.8.0.1", "10.8.0.2")), max_dns=3)
    with pytest.raises(Refused) as exc:
        apply(rec, nrpt(("10.8.0.53", "10.8.0.54")), max_dns=3)
    assert exc.value.error_number == errors.ERROR_NOT_ENOUGH_QUOTA


def test_register_dns_flushes() -> None:
    assert policy().decide(m.RegisterDnsMsg(m.MsgType.REGISTER_DNS, 1)) == FlushDns()


def test_block_add_replace_del_and_the_admins_block_stays() -> None:
    rec = SessionRecords({}, {})
    assert policy(rec).decide(block(2)) == SetBlock(2, 0)
    rec.dns.block = BlockState(2)
    assert policy(rec).decide(block(1)) == SetBlock(1, 2)
    assert policy(rec).decide(block(0, add=False)) == SetBlock(0, 2)
    # block_dns = true: flag 2 cannot be taken away by the channel
    assert policy(rec, forced=2).decide(block(1)) == SetBlock(3, 2, None, 2)
    # ... and a del that leaves only it changes nothing: nft is not run
    assert policy(rec, forced=2).decide(block(0, add=False)) == Nothing()
    # the same block again changes nothing either (a flood of them costs no nft run)
    assert policy(rec).decide(block(2)) == Nothing()
    rec.dns.block = BlockState(0)
    with pytest.raises(Refused) as exc:
        policy(rec).decide(block(0, add=False))
    assert exc.value.error_number == errors.ERROR_NOT_FOUND
