"""The openvpn plugin (``iservice_plugin.so``) and the script hook: both forward openvpn's
environment, byte for byte, as ``ISERVICE_ENV`` pieces, and wait for the one answer.

The plugin is loaded with ctypes and driven through openvpn's v3 plugin API
(``openvpn_plugin_open_v3`` / ``func_v3`` / ``close_v1``, structs of
``openvpn-plugin.h``); a thread plays the service on the other end of a
SOCK_SEQPACKET pair, records every piece and answers.  The reference is
``wire.msg.env_chunks`` (what the hook sends): the plugin's pieces must be exactly
those (message id aside), and what the service makes of them (``envstream.py``)
exactly what the producer makes of the environment itself.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iservice import errors
from iservice.envstream import EnvStream
from iservice.plugin import plugin_path
from iservice.policy.redirect import Facts, Redirect
from iservice.produce import Context, EnvError, parse_env, produce
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
        (tmp / "iservice_layout.h").write_text(m.c_header())  # as setup.py makes it
        subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC",
                        "-shared", f"-I{tmp}", "-o", str(out), str(SOURCE)], check=True)
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


def envp_strings(env: Mapping[str, str]) -> list[bytes]:
    return [f"{k}={v}".encode(errors="surrogateescape") for k, v in env.items()]


def envp_bytes(env: Mapping[str, str]) -> bytes:
    """What openvpn's envp is as one environment: each string followed by a NUL."""
    return b"".join(s + b"\0" for s in envp_strings(env))


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
        envp = _strings(envp_strings(env))
        argv = _strings([b"iservice_plugin.so"])
        fin = FuncIn(type=event, argv=argv, envp=envp, handle=handle)
        rc: int = self.lib.openvpn_plugin_func_v3(5, ctypes.byref(fin), ctypes.byref(FuncReturn()))
        return rc

    def close(self, handle: int) -> None:
        self.lib.openvpn_plugin_close_v1(handle)


# -- the service's end ---------------------------------------------------------------------

Answer = Callable[[list[bytes]], bytes | None]  # the pieces so far → an answer, or None


def result(requests: int = 0, refused: int = 0, error: int = 0, refused_type: int = 0,
           mid: int = 0) -> m.EnvResultMsg:
    return m.EnvResultMsg(m.MsgType.ISERVICE_ENV_RESULT, mid, error, requests, refused,
                          refused_type)


def answer_at_last(res: m.EnvResultMsg) -> Answer:
    """Answer ``res`` (with the pieces' message id) once the last piece is in."""
    def answer(pieces: list[bytes]) -> bytes | None:
        chunk = m.decode_message(pieces[-1])
        assert isinstance(chunk, m.EnvChunkMsg)
        if not chunk.flags & m.ENV_LAST:
            return None
        return m.encode_env_result(m.EnvResultMsg(res.type, chunk.message_id, res.error_number,
                                                  res.requests, res.refused, res.refused_type))
    return answer


@dataclass
class FakeService:
    """The service's end of the channel: records the pieces; ``answer`` says when and what
    to answer (``CLOSE``: close the channel instead)."""
    sock: socket.socket
    answer: Answer
    received: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        self.sock.settimeout(0.02)
        while not self.stop.is_set():
            try:
                raw = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not raw:
                return
            self.received.append(raw)
            reply = self.answer(self.received)
            if reply == CLOSE:
                self.sock.close()
                return
            if reply is not None:
                self.sock.send(reply)


CLOSE = b"close"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    return Plugin(_locate(tmp_path_factory.mktemp("plugin")))


@dataclass
class Run:
    rc: int
    pieces: list[bytes]
    logs: list[str]

    def chunks(self) -> list[m.EnvChunkMsg]:
        out = []
        for raw in self.pieces:
            chunk = m.decode_message(raw)
            assert isinstance(chunk, m.EnvChunkMsg)
            out.append(chunk)
        return out


def run_plugin(plugin: Plugin, event: int, env: Mapping[str, str],
               answer: Answer | None = None) -> Run:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    svc = FakeService(theirs, answer or answer_at_last(result()))
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
    return Run(rc, list(svc.received), [s for _, s in plugin.logs])


def without_id(raw: bytes) -> bytes:
    return raw[:16] + b"\0\0\0\0" + raw[20:]


def assert_forwarded(got: Run, event: int, env: Mapping[str, str]) -> None:
    """The pieces are exactly ``env_chunks`` of openvpn's envp, all with one message id."""
    assert got.pieces, got.logs
    mid = m.peek_message_id(got.pieces[0])
    assert 1 <= mid < 1 << 30
    assert got.pieces == m.env_chunks(envp_bytes(env), event, mid)
    chunks = got.chunks()
    assert chunks[0].flags & m.ENV_FIRST and chunks[-1].flags & m.ENV_LAST
    assert {c.message_id for c in chunks} == {mid} and {c.event for c in chunks} == {event}
    assert b"".join(c.data for c in chunks) == envp_bytes(env)


# -- hand-written environments -------------------------------------------------------------

BASE = {"dev": "lo", "tun_mtu": "1500", "ifconfig_local": "10.8.0.2",
        "ifconfig_netmask": "255.255.255.0", "route_vpn_gateway": "10.8.0.1",
        "route_net_gateway": "198.18.0.1", "trusted_ip": "192.0.2.1"}

HAND: list[tuple[str, dict[str, str]]] = [
    ("up", BASE),
    ("up", {}),  # an empty environment: one piece, first and last
    ("down", {"dev": "t\u00fcn", "x": "a=b=c", "": "empty name", "y": ""}),
    ("route-up", {**BASE, "bad": "\udcff\udcfe not UTF-8", "dns_search_domain_1": "x\u212a"}),
    ("route-pre-down", {**BASE, "signal": "sigterm"}),
    ("up", {"v": "x" * (m.ENV_DATA_SIZE - 3)}),  # "v=" + value + NUL: exactly one piece
    ("up", {"v": "x" * (m.ENV_DATA_SIZE - 2)}),  # one byte more: two pieces
    ("up", {"v": "x" * (3 * m.ENV_DATA_SIZE)}),  # one string over four pieces
]


@pytest.mark.parametrize(("script", "env"), HAND)
def test_forwards_the_environment_byte_for_byte(plugin: Plugin, script: str,
                                               env: dict[str, str]) -> None:
    got = run_plugin(plugin, EVENTS[script], env)
    assert got.rc == SUCCESS, got.logs
    assert_forwarded(got, EVENTS[script], env)
    n = len(envp_bytes(env))
    assert len(got.pieces) == max(1, -(-n // m.ENV_DATA_SIZE))


def test_30000_routes_in_one_call(plugin: Plugin) -> None:
    env = {**BASE, **routes(30000)}
    got = run_plugin(plugin, ROUTE_UP, env, answer_at_last(result(requests=30000)))
    assert got.rc == SUCCESS
    assert_forwarded(got, ROUTE_UP, env)
    assert len(got.pieces) > 1500
    assert any(line.startswith("route-up: 30000 messages, 0 refused, ") for line in got.logs)


def routes(n: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in range(n):
        a = (100 << 24 | 64 << 16) + i * 64
        env[f"route_network_{i + 1}"] = f"{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
        env[f"route_netmask_{i + 1}"] = "255.255.255.192"
        env[f"route_gateway_{i + 1}"] = "10.8.0.1"
    return env


def test_an_environment_over_the_bound_is_not_sent(plugin: Plugin) -> None:
    env = {"big": "x" * m.MAX_ENV_BYTES}
    got = run_plugin(plugin, UP, env)
    assert got.rc == ERROR and got.pieces == []
    assert any("the service takes at most 8388608" in line for line in got.logs)


# -- the answer ---------------------------------------------------------------------------------

def test_refusals_fail_the_call_with_the_first_one_named(plugin: Plugin) -> None:
    got = run_plugin(plugin, ROUTE_UP, BASE,
                     answer_at_last(result(requests=3, refused=2, error=13, refused_type=3)))
    assert got.rc == ERROR
    assert "route-up: 2 of 3 requests refused by the service; the first: add_route, " \
           "error 0x0000000d" in got.logs
    assert any(line.startswith("route-up: 3 messages, 2 refused,") and
               line.endswith(", failed") for line in got.logs)


def test_a_refused_environment_fails(plugin: Plugin) -> None:
    got = run_plugin(plugin, UP, BASE, answer_at_last(result(error=-2)))
    assert got.rc == ERROR
    assert "up: the service refused the environment: error 0xfffffffe" in got.logs


def test_an_early_answer_stops_the_sending(plugin: Plugin) -> None:
    # The service refuses after the first piece (the bound, say): the plugin stops.
    def answer(pieces: list[bytes]) -> bytes | None:
        mid = m.peek_message_id(pieces[0])
        return m.encode_env_result(result(error=1816, mid=mid)) if len(pieces) == 1 else None
    got = run_plugin(plugin, ROUTE_UP, {**BASE, **routes(5000)}, answer)
    assert got.rc == ERROR
    assert len(got.pieces) < 350  # of ~340: what the socket took before the answer came
    assert "route-up: the service refused the environment: error 0x00000718" in got.logs


def test_an_ack_refusing_a_piece_ends_it(plugin: Plugin) -> None:
    def answer(pieces: list[bytes]) -> bytes | None:
        return m.encode_ack(m.Ack(m.peek_message_id(pieces[0]), errors.ERROR_MESSAGE_DATA)) \
            if len(pieces) == 1 else None
    got = run_plugin(plugin, UP, BASE, answer)
    assert got.rc == ERROR
    assert "up: the service refused the environment: error 0x20000002" in got.logs


def test_stale_answers_are_ignored(plugin: Plugin) -> None:
    # Answers of an earlier call (other ids) are still queued: the plugin waits for its own.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    svc = FakeService(theirs, answer_at_last(result(requests=1)))
    t = threading.Thread(target=svc.run)
    try:
        theirs.send(m.encode_env_result(result(error=5, mid=1 << 30)))  # never a plugin's id
        theirs.send(m.encode_ack(m.Ack(-1, 5)))
        t.start()
        rc, _, handle = plugin.open(str(ours.fileno()))
        assert rc == SUCCESS
        assert plugin.call(handle, UP, BASE) == SUCCESS
        plugin.close(handle)
    finally:
        svc.stop.set()
        if t.is_alive():
            t.join()
        ours.close()
        theirs.close()


def test_a_closed_channel_fails(plugin: Plugin) -> None:
    got = run_plugin(plugin, ROUTE_UP, {**BASE, **routes(200)},
                     lambda pieces: CLOSE if len(pieces) == 3 else None)
    assert got.rc == ERROR
    assert any(w in line for line in got.logs for w in ("closed", "send", "recv")), got.logs


@pytest.mark.parametrize("bad", [b"\0" * 31, b"\0" * 40, m.encode_ack(m.Ack(0, 0))[:24]])
def test_a_malformed_answer_fails(plugin: Plugin, bad: bytes) -> None:
    def answer(pieces: list[bytes]) -> bytes | None:
        mid = m.peek_message_id(pieces[0]).to_bytes(4, "little", signed=True)
        return bad[:16] + mid + bad[20:] if len(bad) >= 20 else bad
    got = run_plugin(plugin, UP, BASE, answer)
    assert got.rc == ERROR
    assert "malformed answer from the service" in got.logs


def test_every_event_needs_the_channel(plugin: Plugin) -> None:
    rc, _, handle = plugin.open("0")  # stdin: not a socket
    assert rc == SUCCESS and handle
    assert plugin.call(handle, DOWN, {"dev": "lo"}) == ERROR
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
    got = run_plugin(plugin, ROUTE_UP, {**BASE, "route_network_1": "10.9.0.0"},
                     answer_at_last(result(requests=1)))
    assert got.rc == SUCCESS
    line = next(x for x in got.logs if x.startswith("route-up: "))
    assert line.startswith("route-up: 1 messages, 0 refused, ")
    t0, t1 = (float(x) for x in line.split("(monotonic ")[1].rstrip(")").split(" -> "))
    assert 0 <= t1 - t0 < 5


# -- the script hook sends the same -----------------------------------------------------------

HOOK = os.path.join(os.path.dirname(sys.executable), "iservice-hook")


def run_hook(env: dict[str, str], answer: Answer) -> tuple[int, list[bytes], str]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    svc = FakeService(theirs, answer)
    t = threading.Thread(target=svc.run)
    t.start()
    try:
        cp = subprocess.run([HOOK, str(ours.fileno())], pass_fds=(ours.fileno(),),
                            env={k.encode(errors="surrogateescape"): v.encode(
                                errors="surrogateescape") for k, v in env.items()},
                            capture_output=True, text=True, timeout=60, check=False)
    finally:
        svc.stop.set()
        t.join()
        ours.close()
        theirs.close()
    return cp.returncode, list(svc.received), cp.stderr


@pytest.mark.skipif(not os.access(HOOK, os.X_OK), reason="iservice-hook is not installed here")
@pytest.mark.parametrize(("script", "env"), [x for x in HAND if x[1] and "" not in x[1]])
def test_the_hook_sends_what_the_plugin_sends(plugin: Plugin, script: str,
                                              env: dict[str, str]) -> None:
    # LC_CTYPE given: else Python's start-up adds it to the hook's environment (PEP 538
    # locale coercion), a variable the producer ignores but the comparison would see.
    env = {**env, "script_type": script, "LC_CTYPE": "C.UTF-8"}
    rc, pieces, err = run_hook(env, answer_at_last(result(requests=1)))
    assert rc == 0, err
    got = run_plugin(plugin, EVENTS[script], env)
    assert [without_id(p) for p in pieces] == [without_id(p) for p in got.pieces]


@pytest.mark.skipif(not os.access(HOOK, os.X_OK), reason="iservice-hook is not installed here")
def test_the_hook_reports_refusals_and_other_events() -> None:
    env = {**BASE, "script_type": "route-up"}
    rc, _, err = run_hook(env, answer_at_last(result(requests=2, refused=1, error=5,
                                                     refused_type=3)))
    assert rc == 1
    assert "route-up: 1 of 2 requests refused by the service; the first: add_route, " \
           "error 0x00000005" in err
    rc, pieces, _ = run_hook({**BASE, "script_type": "ipchange"}, answer_at_last(result()))
    assert rc == 0 and pieces == []


# -- what the service makes of the pieces ----------------------------------------------------------

JUNK = ["", "01.2.3.4", "1.2.3", "256.1.1.1", "::1", "fe80::1%eth0", "10.0.0.0/8", "x",
        "\udcff", "2147483648", "-1", "0.0.0.255"]
values = st.one_of(st.sampled_from(["10.8.0.2", "255.255.255.0", "24", "1500", "lo",
                                    "198.18.0.1", "fd00::1", "64", "sigterm",
                                    "dhcp-option DNS 10.8.0.1", "1"]),
                   st.sampled_from(JUNK), st.text(max_size=8))
names = st.sampled_from(["dev", "tun_mtu", "ifconfig_local", "ifconfig_netmask",
                         "ifconfig_remote", "ifconfig_ipv6_local", "route_network_1",
                         "route_netmask_1", "route_gateway_1", "route_metric_1",
                         "route_ipv6_network_1", "foreign_option_1", "signal",
                         "route_net_gateway", "trusted_ip"])
FACTS = st.builds(Facts, st.one_of(st.none(), st.builds(Redirect)), st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=st.dictionaries(names, values, max_size=10), script=st.sampled_from(sorted(EVENTS)),
       facts=FACTS)
def test_the_service_makes_of_the_pieces_what_the_producer_makes_of_the_environment(
        plugin: Plugin, env: dict[str, str], script: str, facts: Facts) -> None:
    """The whole way: openvpn's envp → the plugin's pieces → EnvStream → the requests."""
    event = EVENTS[script]
    got = run_plugin(plugin, event, env)
    ctx = Context("lo", socket.if_nametoindex("lo"), facts)
    stream = EnvStream(lambda: ctx, lambda *a, **kw: None)
    answers = [e for c in got.chunks() for e in stream.take(c)]
    made: list[m.Message] = []
    while (item := stream.next()) is not None:
        if item[1] is not None:
            made.append(item[1])
    mid = m.peek_message_id(got.pieces[0])
    try:
        want = produce(event, parse_env(envp_bytes(env)), ctx, mid).messages
    except EnvError:
        assert made == [] and [(a[0], a[1]) for a in answers] == [
            (mid, errors.ERROR_MESSAGE_DATA)]
        return
    assert answers == [] and made == want
