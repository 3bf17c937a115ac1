"""The openvpn plugin (``iservice_plugin.so``) against the script hook it replaces.

The plugin is loaded with ctypes and driven through openvpn's v3 plugin API
(``openvpn_plugin_open_v3`` / ``func_v3`` / ``close_v1``, structs of
``openvpn-plugin.h``); a thread plays the service on the other end of a
SOCK_SEQPACKET pair, records every message and acks it.  The reference is the hook:
for each environment the plugin must send exactly ``hook.messages_for(env)`` encoded
by ``wire.msg.encode_message`` (message ids aside), and fail exactly when the hook
fails (ValueError/KeyError: nothing sent).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iservice.hook import messages_for
from iservice.plugin import plugin_path
from iservice.policy.redirect import Facts, Redirect, decode_facts
from iservice.wire import msg as m

# -- locating and loading the plugin ---------------------------------------------------

SOURCE = Path(__file__).resolve().parents[2] / "src" / "iservice" / "plugin" / "iservice_plugin.c"
HEADER = Path("/usr/include/openvpn/openvpn-plugin.h")


def _locate(tmp: Path) -> str:
    """The installed plugin (what openvpn runs); else one built here from the source."""
    installed = plugin_path()
    if installed is not None:
        return installed
    cc = shutil.which("cc") or shutil.which("gcc")
    why = "the plugin is not installed (pip install . needs gcc and openvpn-plugin.h)"
    if cc is not None and HEADER.exists() and SOURCE.exists():
        out = tmp / "iservice_plugin.so"
        subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC",
                        "-shared", "-o", str(out), str(SOURCE)], check=True)
        return str(out)
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


UP, DOWN, ROUTE_UP, ROUTE_PREDOWN = 0, 1, 2, 12
EVENTS = {"up": UP, "route-up": ROUTE_UP, "route-pre-down": ROUTE_PREDOWN, "down": DOWN}
SUCCESS, ERROR = 0, 1

LogFn = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p)
CharPP = ctypes.POINTER(ctypes.c_char_p)


class Callbacks(ctypes.Structure):
    _fields_ = [("plugin_log", LogFn), ("plugin_vlog", ctypes.c_void_p),
                ("plugin_secure_memzero", ctypes.c_void_p),
                ("plugin_base64_encode", ctypes.c_void_p),
                ("plugin_base64_decode", ctypes.c_void_p)]


class OpenIn(ctypes.Structure):
    _fields_ = [("type_mask", ctypes.c_int), ("argv", CharPP), ("envp", CharPP),
                ("callbacks", ctypes.POINTER(Callbacks)), ("ssl_api", ctypes.c_int),
                ("ovpn_version", ctypes.c_char_p), ("ovpn_version_major", ctypes.c_uint),
                ("ovpn_version_minor", ctypes.c_uint), ("ovpn_version_patch", ctypes.c_char_p)]


class OpenReturn(ctypes.Structure):
    _fields_ = [("type_mask", ctypes.c_int), ("handle", ctypes.c_void_p),
                ("return_list", ctypes.c_void_p)]


class FuncIn(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("argv", CharPP), ("envp", CharPP),
                ("handle", ctypes.c_void_p), ("per_client_context", ctypes.c_void_p),
                ("current_cert_depth", ctypes.c_int), ("current_cert", ctypes.c_void_p)]


class FuncReturn(ctypes.Structure):
    _fields_ = [("return_list", ctypes.c_void_p)]


def _strings(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    arr = (ctypes.c_char_p * (len(items) + 1))()
    for i, s in enumerate(items):
        arr[i] = s
    arr[len(items)] = None
    return arr


class Plugin:
    def __init__(self, path: str) -> None:
        self.lib = ctypes.CDLL(path)
        self.lib.openvpn_plugin_open_v3.argtypes = [
            ctypes.c_int, ctypes.POINTER(OpenIn), ctypes.POINTER(OpenReturn)]
        self.lib.openvpn_plugin_func_v3.argtypes = [
            ctypes.c_int, ctypes.POINTER(FuncIn), ctypes.POINTER(FuncReturn)]
        self.lib.openvpn_plugin_close_v1.argtypes = [ctypes.c_void_p]
        self.lib.openvpn_plugin_close_v1.restype = None
        self.logs: list[tuple[int, str]] = []
        self._log = LogFn(self._on_log)  # kept alive as long as the library may call it
        self.callbacks = Callbacks(plugin_log=self._log)

    def _on_log(self, flags: int, name: bytes | None, fmt: bytes | None,
                arg: bytes | None) -> None:
        assert name == b"iservice-plugin" and fmt == b"%s"
        self.logs.append((flags, (arg or b"").decode()))

    def open(self, *args: str) -> tuple[int, int, int | None]:
        argv = _strings([b"iservice_plugin.so", *(a.encode() for a in args)])
        envp = _strings([])
        oin = OpenIn(type_mask=0xFFFF, argv=argv, envp=envp,
                     callbacks=ctypes.pointer(self.callbacks), ssl_api=1,
                     ovpn_version=b"2.6.14", ovpn_version_major=2, ovpn_version_minor=6,
                     ovpn_version_patch=b"14")
        ret = OpenReturn()
        rc = self.lib.openvpn_plugin_open_v3(5, ctypes.byref(oin), ctypes.byref(ret))
        return rc, ret.type_mask, ret.handle

    def call(self, handle: int, event: int, env: Mapping[str, str]) -> int:
        envp = _strings([f"{k}={v}".encode(errors="surrogateescape") for k, v in env.items()])
        argv = _strings([b"iservice_plugin.so"])
        fin = FuncIn(type=event, argv=argv, envp=envp, handle=handle)
        rc: int = self.lib.openvpn_plugin_func_v3(5, ctypes.byref(fin), ctypes.byref(FuncReturn()))
        return rc

    def close(self, handle: int) -> None:
        self.lib.openvpn_plugin_close_v1(handle)


@dataclass
class FakeService:
    """The service's end of the channel: records requests, acks each with ``answer``."""
    sock: socket.socket
    answer: Callable[[int, bytes], int | None] = lambda i, raw: 0  # None: no ack, close
    received: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.02)
        while not self.stop.is_set():
            try:
                raw = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not raw:
                return
            err = self.answer(len(self.received), raw)
            self.received.append(raw)
            if err is None:
                self.sock.close()
                return
            self.sock.send(m.encode_ack(m.Ack(m.peek_message_id(raw), err)))


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    return Plugin(_locate(tmp_path_factory.mktemp("plugin")))


@dataclass
class Result:
    rc: int
    sent: list[bytes]  # ids zeroed
    ids: list[int]
    logs: list[str]


def _zero_id(raw: bytes) -> bytes:
    return raw[:16] + b"\0\0\0\0" + raw[20:]


def run_plugin(plugin: Plugin, event: int, env: Mapping[str, str],
               answer: Callable[[int, bytes], int | None] | None = None) -> Result:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    svc = FakeService(theirs) if answer is None else FakeService(theirs, answer)
    t = threading.Thread(target=svc.run)
    t.start()
    plugin.logs.clear()
    try:
        rc, mask, handle = plugin.open(str(ours.fileno()))
        assert rc == SUCCESS and handle
        assert mask == (1 << UP) | (1 << DOWN) | (1 << ROUTE_UP) | (1 << ROUTE_PREDOWN)
        rc = plugin.call(handle, event, env)
        plugin.close(handle)
    finally:
        svc.stop.set()
        t.join()
        ours.close()
        theirs.close()
    return Result(rc, [_zero_id(r) for r in svc.received],
                  [m.peek_message_id(r) for r in svc.received], [s for _, s in plugin.logs])


def hook_stream(env: Mapping[str, str], script: str) -> list[bytes] | None:
    """What the hook sends for ``env`` (ids zeroed), or None when it fails."""
    try:
        msgs = messages_for({**env, "script_type": script})
    except (ValueError, KeyError):
        return None
    return [m.encode_message(x) for x in msgs]


def assert_same(plugin: Plugin, env: Mapping[str, str], script: str) -> Result:
    want = hook_stream(env, script)
    got = run_plugin(plugin, EVENTS[script], env)
    if want is None:
        assert got.rc == ERROR, got.logs
        assert got.sent == []
        assert any("bad openvpn environment" in line for line in got.logs)
    else:
        assert got.rc == SUCCESS, got.logs
        assert [m.decode_message(r) for r in got.sent] == \
            [m.decode_message(r) for r in want]  # readable diff first
        assert got.sent == want
        if got.ids:  # numbered from one random start, like the hook
            assert got.ids == list(range(got.ids[0], got.ids[0] + len(got.ids)))
    return got


# -- hand-written environments -------------------------------------------------------------

BASE = {"dev": "lo", "tun_mtu": "1500", "ifconfig_local": "10.8.0.2",
        "ifconfig_netmask": "255.255.255.0", "route_vpn_gateway": "10.8.0.1",
        "route_net_gateway": "198.18.0.1", "trusted_ip": "192.0.2.1"}


@pytest.fixture
def facts_fd() -> Iterator[int]:
    fd = os.memfd_create("facts")
    yield fd
    os.close(fd)


def with_facts(fd: int, data: bytes, env: Mapping[str, str]) -> dict[str, str]:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return {**env, "ISERVICE_FACTS_FD": str(fd)}


HAND: list[tuple[str, dict[str, str]]] = [
    ("up", BASE),
    ("up", {"dev": "istun-x", "ifconfig_local": "10.8.0.6", "ifconfig_remote": "10.8.0.5"}),
    ("up", {"dev": "istun-x", "ifconfig_local": "10.8.0.1", "ifconfig_remote": "10.8.0.9"}),
    ("down", {"dev": "istun-x", "ifconfig_local": "10.8.0.1", "ifconfig_remote": "10.8.0.9"}),
    ("up", {"dev": "lo", "ifconfig_local": "10.8.0.1"}),
    ("up", {**BASE, "ifconfig_netmask": "0.0.0.255"}),  # a hostmask: /24 for ipaddress
    ("up", {**BASE, "ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64"}),
    ("up", {**BASE, "ifconfig_ipv6_local": "fd00:8::1000"}),  # /128
    ("up", {**BASE, "tun_mtu": "abc"}),  # the hook fails: nothing sent
    ("up", {**BASE, "tun_mtu": ""}),
    ("up", {**BASE, "tun_mtu": "99999999999"}),
    ("up", {**BASE, "ifconfig_local": "10.8.0.02"}),
    ("up", {**BASE, "dev": "x" * 300}),
    ("route-up", {**BASE, "route_network_1": "10.9.0.0", "route_netmask_1": "255.255.0.0",
                  "route_gateway_1": "10.8.0.1", "route_metric_1": "5",
                  "route_network_2": "192.0.2.1", "route_gateway_2": "198.18.0.1",
                  "route_network_4": "10.99.0.0",
                  "route_ipv6_network_1": "fd00:9::1/64", "route_ipv6_gateway_1": "fd00:8::1",
                  "route_ipv6_network_2": "2001:db8::/32", "route_ipv6_metric_2": "7",
                  "route_ipv6_network_3": "2001:db8:1::5", "net_gateway_ipv6": "fe80::1",
                  "route_ipv6_gateway_3": "fe80::1"}),
    ("route-up", {**BASE, "route_network_1": "10.9.0.0", "route_metric_1": "x"}),
    ("route-up", {**BASE, "route_network_1": "10.9.0.0", "route_netmask_1": ""}),
    ("route-up", {**BASE, "route_ipv6_network_1": "10.0.0.0/8"}),
    ("route-pre-down", {**BASE, "route_network_1": "10.9.0.0", "route_netmask_1": "16"}),
    ("route-pre-down", BASE),  # no route variables: del_tun_routes
    ("route-up", {**BASE, "route_redirect_gateway_ipv4": "1", "route_redirect_gateway_ipv6": "0"}),
    ("route-pre-down", {**BASE, "route_redirect_gateway_ipv4": "2", "route_network_1": "1.2.3.4"}),
    ("route-up", {**BASE, "route_redirect_gateway_ipv6": "1", "trusted_ip6": "2001:db8::1",
                  "net_gateway_ipv6": "fe80::1"}),
    ("up", {**BASE, "dns_server_1_address_1": "10.8.0.53", "dns_server_1_address_2": "fd00::53",
            "dns_server_1_address_3": "127.0.0.1", "dns_server_1_resolve_domain_1": "Corp.Example.",
            "dns_server_1_resolve_domain_2": "bad name", "dns_search_domain_1": "corp.example",
            "dns_server_1_dnssec": "yes"}),
    ("down", {**BASE, "dns_server_2_address_1": "junk", "dns_server_10_address_1": "10.0.0.1",
              "dns_server_03_address_1": "::1", "dns_server_x_address_1": "10.0.0.9"}),
    ("up", {**BASE, "foreign_option_1": "dhcp-option DNS 10.8.0.1",
            "foreign_option_2": "dhcp-option dns6 fd00:8::1",
            "foreign_option_3": "dhcp-option DOMAIN corp.example",
            "foreign_option_4": "dhcp-option DOMAIN-SEARCH a.example b.example",
            "foreign_option_5": "dhcp-option ADAPTER_DOMAIN_SUFFIX x\u212a.example",
            "foreign_option_6": "dhcp-option DNS 0.0.0.0",
            "foreign_option_7": "dhcp-option\u00a0DOMAIN\u2003long.example",
            "foreign_option_8": "dhcp-option DOMAIN-\u017fEARCH s.example",
            "foreign_option_9": "dhcp-option DNS6 2001:db8::53%eth0"}),
    ("down", {**BASE, "foreign_option_1": "dhcp-option DOMAIN only.example"}),
    ("up", {**BASE, "ISERVICE_KILL_SWITCH": " Yes\u2003"}),
    ("up", {**BASE, "ISERVICE_KILL_SWITCH": "0", "ISERVICE_FACTS_FD": "999999"}),
]


@pytest.mark.parametrize(("script", "env"), HAND)
def test_same_stream_as_the_hook(plugin: Plugin, script: str, env: dict[str, str]) -> None:
    assert_same(plugin, env, script)


def test_facts_redirect_and_block(plugin: Plugin, facts_fd: int) -> None:
    for facts in (Facts(), Facts(Redirect(), True), Facts(Redirect(ipv6=True, local=True)),
                  Facts(Redirect(ipv4=False, ipv6=True), False)):
        for script in ("up", "route-up", "route-pre-down"):
            env = with_facts(facts_fd, facts.encode(), {
                **BASE, "trusted_ip6": "2001:db8::1" if facts.redirect
                and facts.redirect.ipv6 else "", "net_gateway_ipv6": "fe80::1",
                "route_network_1": "10.9.0.0"})
            assert_same(plugin, env, script)
    # unreadable facts are "nothing known", on both sides
    for junk in (b"", b"{}", b"iservice-facts/1 redirect=1111 block_outside_dns=1",
                 b"iservice-facts/1 redirect=1111 block_outside_dns=1\n\0\0"):
        env = with_facts(facts_fd, junk, BASE)
        assert_same(plugin, env, "route-up")
        assert_same(plugin, env, "up")


def test_facts_encoding_round_trips() -> None:
    for r in (None, Redirect(), Redirect(False, True, True, True)):
        for block in (False, True):
            f = Facts(r, block)
            assert decode_facts(f.encode()) == f
            assert decode_facts(f.encode() + b"\0" * 10) == f
    assert Facts(Redirect(), True).encode() == \
        b"iservice-facts/1 redirect=1000 block_outside_dns=1\n"
    assert decode_facts(b'{"redirect":null,"block_outside_dns":true}') == Facts()


def test_refusal_fails_with_the_hooks_wording(plugin: Plugin) -> None:
    env = {**BASE, "route_network_1": "10.9.0.0", "route_network_2": "10.10.0.0"}
    got = run_plugin(plugin, ROUTE_UP, env, answer=lambda i, raw: 13 if i == 1 else 0)
    assert got.rc == ERROR
    assert len(got.sent) == 2  # everything is sent; the refusal only fails the call
    assert "add_route refused by the service: error 0x0000000d" in got.logs
    assert any(line.startswith("route-up: 2 messages, 1 refused,") for line in got.logs)


def test_negative_error_numbers_print_as_the_hook_does(plugin: Plugin) -> None:
    got = run_plugin(plugin, UP, BASE, answer=lambda i, raw: -2)
    assert got.rc == ERROR
    assert "set_mtu refused by the service: error 0xfffffffe" in got.logs


def test_a_closed_channel_fails(plugin: Plugin) -> None:
    env = {**BASE, **{f"route_network_{i}": f"10.{i}.0.0" for i in range(1, 200)}}
    got = run_plugin(plugin, ROUTE_UP, env, answer=lambda i, raw: None if i == 3 else 0)
    assert got.rc == ERROR
    assert any("closed" in line or "send" in line for line in got.logs), got.logs


def test_a_bad_ack_fails(plugin: Plugin) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def serve() -> None:
        theirs.recv(4096)
        theirs.send(b"\0" * 31)
    t = threading.Thread(target=serve)
    t.start()
    try:
        rc, _, handle = plugin.open(str(ours.fileno()))
        assert rc == SUCCESS and handle
        assert plugin.call(handle, UP, BASE) == ERROR
        plugin.close(handle)
    finally:
        t.join()
        ours.close()
        theirs.close()


def test_nothing_to_send_needs_no_channel(plugin: Plugin) -> None:
    rc, _, handle = plugin.open("0")  # stdin: never used when there is nothing to send
    assert rc == SUCCESS and handle
    assert plugin.call(handle, DOWN, {"dev": "lo"}) == SUCCESS
    assert plugin.call(handle, 5, BASE) == SUCCESS  # an event it did not ask for
    plugin.close(handle)


def test_open_checks_its_argument(plugin: Plugin) -> None:
    for args in ((), ("x",), ("-1",), ("3", "4")):
        rc, _, _ = plugin.open(*args)
        assert rc == ERROR
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    rc, _, _ = plugin.open(str(r))  # not an open descriptor
    assert rc == ERROR
    assert any("no service channel" in line for _, line in plugin.logs)


def test_timing_line(plugin: Plugin) -> None:
    got = run_plugin(plugin, ROUTE_UP, {**BASE, "route_network_1": "10.9.0.0"})
    assert got.rc == SUCCESS
    line = next(x for x in got.logs if x.startswith("route-up: "))
    assert line.startswith("route-up: 1 messages, 0 refused, ")
    t0, t1 = (float(x) for x in line.split("(monotonic ")[1].rstrip(")").split(" -> "))
    assert 0 <= t1 - t0 < 5


def test_30000_routes_in_one_call(plugin: Plugin) -> None:
    env: dict[str, str] = {**BASE}
    for i in range(30000):
        a = (100 << 24 | 64 << 16) + i * 64
        env[f"route_network_{i + 1}"] = f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
        env[f"route_netmask_{i + 1}"] = "255.255.255.192"
        env[f"route_gateway_{i + 1}"] = "10.8.0.1"
    got = assert_same(plugin, env, "route-up")
    assert len(got.sent) == 30000


# -- generated environments ------------------------------------------------------------------

JUNK_IP = ["", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.04", " 1.2.3.4",
           "1.2.3.4 ", "\uff11.2.3.4", "0.0.0.0", "224.0.0.1", "127.0.0.1", "::", "::1",
           "fe80::1", "fe80::1%eth0", "fe80::%eth0", "2001:db8::1%x", "%", "::%", "::%a%b",
           "::ffff:1.2.3.4", "1::2::3", "1:2:3:4:5:6:7:8:9", ":1::", "1:2:3:4:5:6:7::",
           "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "0000:0000::1",
           "00000::1", "g::1", "fd00::/64", "10.0.0.0/8", "ff02::1", "1:2:3:4:5:6:7:8",
           "::1:2:3:4:5:6:7", "1:2:3:4:5:6:7::", ":::", "1:::2", "1:2", ":", "::1.2.3",
           "2001:db8:0:0:1:0:0:1", "2001:0:0:1:0:0:0:1", "\u00a01.2.3.4\u2003"]
IP_ALPHABET = "0123456789abcdefABCDEFg.:%/ \t\u00a0"
good_ips = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
ips = st.one_of(good_ips, st.sampled_from(JUNK_IP), st.text(IP_ALPHABET, max_size=16))


def mostly(good: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(good, good, good, bad)


V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).map(str)
MASK = st.one_of(st.integers(0, 32).map(str), st.sampled_from(["255.255.0.0", "255.255.255.192"]))
NUMBER = st.integers(-5, 2000).map(str)
MASKS = st.one_of(st.integers(0, 33).map(str), st.sampled_from(
    ["024", "255.255.255.0", "0.0.0.255", "255.0.255.0", "", "255.255.255.255", "0.0.0.0",
     "-1", "255.255.255.192", "0.0.0.63", " 24", "24/", "\uff12"]))
NUMBERS = st.one_of(NUMBER, st.sampled_from(
    ["", "x", "+5", " 5", "1_0", "\u0663", "2147483647", "2147483648", "-2147483648",
     "-2147483649", "0007", "-0", "99999999999999999999"]))
DOMAIN_ALPHABET = "abcXYZ09-_. \t\u212a\u00e9\u0130,"
domains = st.one_of(st.sampled_from(
    ["corp.example", "Corp.Example.", ".x.", ".", "..", "a..b", "-a.b", "a-.b", "a_b.c",
     "x\u212a.example", "\u0130x", "a" * 63 + ".b", "a" * 64 + ".b", ".".join(["abcd"] * 51),
     ".".join(["a"] * 127), " spaced.example ", "two words", "\u2003tab.example"]),
    st.text(DOMAIN_ALPHABET, max_size=24))
OPTS = ["DNS", "dns", "DNS6", "Dns6", "DOMAIN", "domain-search", "DOMAIN-SEARCH",
        "ADAPTER_DOMAIN_SUFFIX", "doma\u0131n", "DN\u017f", "WINS", "\ufb06", "NTP", "DOMAIN\u00df"]
foreign = st.one_of(
    st.builds(lambda o, v, extra: f"dhcp-option {o} {v}{extra}", st.sampled_from(OPTS),
              st.one_of(ips, domains), st.sampled_from(["", " extra", "\u2003more words"])),
    st.sampled_from(["dhcp-option DNS", "dhcp-option", "route 1.2.3.4", "",
                     "dhcp-option\tDNS\t10.0.0.1", "xdhcp-option DNS 10.0.0.1"]),
    st.text("dhcp-otin DNS6.0123: \u00a0", max_size=30))


def numbered(prefix: str, values: list[str]) -> dict[str, str]:
    return {f"{prefix}{i + 1}": v for i, v in enumerate(values)}


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    # One bad variable fails the whole environment: junk everywhere would test little
    # but that path, so one environment in three has junk, the others valid values.
    junky = draw(st.integers(0, 2)) == 0
    v4s = mostly(V4, ips) if junky else V4
    v6s = mostly(V6, ips) if junky else V6
    numbers = mostly(NUMBER, NUMBERS) if junky else NUMBER
    masks = mostly(MASK, MASKS) if junky else MASK
    devs = st.sampled_from(["lo", "istun-nonexistent", "t\u00fcn", "x" * 255])
    env: dict[str, str] = {"dev": draw(mostly(devs, st.sampled_from(["", "x" * 256]))
                                       if junky else devs)}

    def maybe(key: str, values: st.SearchStrategy[str]) -> None:
        if draw(st.booleans()):
            env[key] = draw(values)
    maybe("tun_mtu", numbers)
    maybe("ifconfig_local", v4s)
    maybe("ifconfig_netmask", masks)
    maybe("ifconfig_remote", v4s)
    maybe("ifconfig_ipv6_local", v6s)
    maybe("ifconfig_ipv6_netbits", numbers)
    for n in range(1, draw(st.integers(0, 4)) + 1):
        env[f"route_network_{n}"] = draw(v4s)
        maybe(f"route_netmask_{n}", masks)
        maybe(f"route_gateway_{n}", st.one_of(v4s, st.just("198.18.0.1")))
        maybe(f"route_metric_{n}", numbers)
    for n in range(1, draw(st.integers(0, 4)) + 1):
        env[f"route_ipv6_network_{n}"] = draw(st.one_of(
            v6s, st.builds(lambda a, p: f"{a}/{p}", v6s,
                           mostly(st.integers(0, 128).map(str), NUMBERS) if junky
                           else st.integers(0, 128).map(str))))
        maybe(f"route_ipv6_gateway_{n}", st.one_of(v6s, st.just("fe80::1")))
        maybe(f"route_ipv6_metric_{n}", numbers)
    maybe("route_net_gateway", st.one_of(st.just("198.18.0.1"), v4s))
    maybe("net_gateway_ipv6", st.one_of(st.just("fe80::1"), v6s))
    maybe("route_vpn_gateway", v4s)
    maybe("trusted_ip", v4s)
    maybe("trusted_ip6", v6s)
    maybe("route_redirect_gateway_ipv4", st.sampled_from(["0", "1", "2", "3", ""]))
    maybe("route_redirect_gateway_ipv6", st.sampled_from(["0", "1", "2", ""]))
    for sid in draw(st.lists(st.sampled_from(["1", "2", "01", "10", "x", "\u00b2", ""]),
                             max_size=3)):
        p = f"dns_server_{sid}_"
        env.update(numbered(p + "address_", draw(st.lists(ips, max_size=10))))
        env.update(numbered(p + "resolve_domain_", draw(st.lists(domains, max_size=4))))
        maybe(p + "dnssec", st.sampled_from(["yes", "no", "optional", "YES"]))
    env.update(numbered("dns_search_domain_", draw(st.lists(domains, max_size=4))))
    env.update(numbered("foreign_option_", draw(st.lists(foreign, max_size=8))))
    maybe("ISERVICE_KILL_SWITCH", st.sampled_from(
        ["1", "yes", "TRUE", " on ", "\u00a0on", "0", "", "Yes\u2003", "onn"]))
    return env


FACTS = st.one_of(st.none(), st.builds(
    Facts, st.one_of(st.none(), st.builds(Redirect, st.booleans(), st.booleans(),
                                          st.booleans(), st.booleans())),
    st.booleans()).map(lambda f: f.encode()),
    st.sampled_from([b"", b"garbage", b"iservice-facts/1 redirect=2000 block_outside_dns=0\n"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(env=environments(), script=st.sampled_from(sorted(EVENTS)), facts=FACTS)
def test_generated_environments(plugin: Plugin, env: dict[str, str], script: str,
                                facts: bytes | None) -> None:
    if facts is None:
        assert_same(plugin, env, script)
        return
    fd = os.memfd_create("facts")
    try:
        assert_same(plugin, with_facts(fd, facts, env), script)
    finally:
        os.close(fd)
