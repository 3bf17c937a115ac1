"""Fuzz targets: the eight parsers that read hostile input, each with an oracle.

Each target takes raw bytes and either returns normally or raises ``Crash`` /
lets a foreign exception escape.  The rule (style anchors §1, h11): the only
exception a parser may raise on bad input is its module's own error type;
anything else is a bug.  Where a parser *accepts* input, the target also checks
what it accepted (round trips, and the security oracle of the option
validator: a non-admin never gets a non-whitelisted option, ``--setenv opt``,
two configs or a config outside ``config_dir`` past it).

The same functions serve three drivers:

* ``fuzz/run.py`` -- coverage-guided with atheris (libFuzzer), 1,000,000+ inputs;
* ``tests/security/test_fuzz.py`` -- a short pass in the normal test run;
* ad hoc: ``python -c 'from fuzz.targets import TARGETS; TARGETS["msg"](b"...")'``.

Bytes become text with UTF-8 ``surrogateescape`` (invalid bytes become lone
surrogates), so the text targets also see what a UTF-16 startup message with
unpaired surrogates would carry.
"""

from __future__ import annotations

import dataclasses
import posixpath
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_network

from iservice import errors
from iservice.envstream import EnvStream
from iservice.errors import ChannelError, SettingsError, StartupDataError
from iservice.policy import profile as pp
from iservice.policy import requests as rq
from iservice.policy.argv import quote_argv, split_command_line
from iservice.policy.options import WHITELIST, validate_options
from iservice.policy.ownership import MACHINE, Owners
from iservice.policy.redirect import Facts, Redirect
from iservice.produce import Context, EnvError, parse_env, produce
from iservice.settings import parse_settings
from iservice.wire import control as wc
from iservice.wire import msg as m
from iservice.wire import startup as w

__all__ = ["TARGETS", "Crash"]


class Crash(AssertionError):
    """An oracle failed: the parser accepted or produced something it must not."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# -- startup message -----------------------------------------------------------

def fuzz_startup(data: bytes) -> None:
    try:
        sd = w.decode_startup(data)
    except StartupDataError as exc:
        if exc.code != errors.ERROR_STARTUP_DATA or exc.message:
            raise Crash(f"unexpected reply fields {exc.code:#x} {exc.message!r}") from None
        w.encode_reply(w.error_reply(exc))  # the reply must always be encodable
        return
    again = w.decode_startup(w.encode_startup(sd))
    if again != sd:
        raise Crash(f"round trip changed {sd!r} into {again!r}")
    if len(data) > 2 * w.MAX_STARTUP_UNITS:
        raise Crash("accepted more than 4096 units")


# -- openvpn-msg channel message, then the request policy ----------------------

TUN_INDEX, TUN_NAME, GW_INDEX = 7, "istun1", 2
_GW4, _GW6 = IPv4Address("198.18.0.1"), IPv6Address("2001:db8:18::1")


def _policy() -> rq.RequestPolicy:
    records = rq.SessionRecords(
        routes={rq.RouteKey(ip_network("10.9.0.0/16"), False, -1): 1,
                rq.RouteKey(ip_network("192.0.2.1/32"), True, -1): 2},
        addresses={rq.AddressKey(IPv4Address("10.8.0.2"), 24): 3})

    def default_route(family: int) -> rq.DefaultRoute | None:
        return rq.DefaultRoute(_GW4 if family == socket.AF_INET else _GW6, GW_INDEX)

    return rq.RequestPolicy(tun_ifindex=TUN_INDEX, tun_name=TUN_NAME,
                            limits=rq.Limits(8, 4, 2), records=records,
                            default_route=default_route, owners=_OTHERS, session_id=1,
                            uid=1000)


# Another session holds 10.99.0.0/16: a route inside it is refused (ownership).
_OTHERS = Owners()
_OTHER_TABLE = rq.RouteTable()
_OTHERS.register(MACHINE, 2, 1001, _OTHER_TABLE)
_OTHER_TABLE[rq.RouteKey(ip_network("10.99.0.0/16"), False, -1)] = 1


def _own(iface: m.Interface) -> bool:
    if iface.index == m.IFACE_INDEX_INVALID:
        return iface.name == TUN_NAME
    return iface.index == TUN_INDEX


def fuzz_msg(data: bytes) -> None:
    try:
        msg = m.decode_message(data)
    except ChannelError as exc:
        if exc.error_number not in (errors.ERROR_MESSAGE_DATA, errors.ERROR_MESSAGE_TYPE):
            raise Crash(f"unexpected ack error {exc.error_number}") from None
        if len(data) > m.MAX_MESSAGE_SIZE and not isinstance(exc, errors.MessageTooLargeError):
            raise Crash("an oversize message did not end the session") from None
        m.encode_ack(m.Ack(exc.message_id, exc.error_number))
        return
    if m.decode_message(m.encode_message(msg)) != msg:
        raise Crash(f"round trip changed {msg!r}")
    _decide(msg)


def _decide(msg: m.Message) -> None:
    """The request policy's oracles: what it allows stays on the session's tun or is a
    host route via the default gateway."""
    try:
        op = _policy().decide(msg)
    except rq.Refused as exc:
        if not isinstance(exc.error_number, int) or exc.error_number <= 0:
            raise Crash(f"refusal with error {exc.error_number!r}") from None
        return
    iface = getattr(msg, "iface", None)
    if isinstance(op, rq.AddAddress | rq.SetMtu | rq.FlushNeighbors | rq.DelAddress) and \
            (iface is None or not _own(iface)):
        raise Crash(f"{op!r} allowed on a foreign interface {iface!r}")
    if isinstance(op, rq.AddRoute):
        if op.key.bypass:
            if op.key.dst.prefixlen != op.key.dst.max_prefixlen or op.gateway not in (_GW4, _GW6):
                raise Crash(f"bypass route {op!r} is not a host route via the gateway")
            if op.oif != GW_INDEX:
                raise Crash(f"bypass route {op!r} not on the gateway's interface")
        elif op.oif != TUN_INDEX or op.gateway is not None:
            raise Crash(f"tun route {op!r} not on the session's tun")
    if isinstance(op, rq.SetMtu) and not 576 <= op.mtu <= 65535:
        raise Crash(f"MTU {op.mtu} accepted")


# -- openvpn's environment, forwarded (envstream.py), then the producer --------------

_EVENTS = sorted(m.ENV_EVENTS)
_ENV_CONTEXTS = (Context(TUN_NAME, TUN_INDEX),
                 Context(TUN_NAME, TUN_INDEX, Facts(Redirect(), True)))


def fuzz_env(data: bytes) -> None:
    """The first byte picks the event and the facts, the rest is openvpn's environment
    (``name=value`` strings ended by NULs).  It goes the service's way: cut into
    ``ISERVICE_ENV`` pieces, put together (``EnvStream``), made into requests
    (``produce``), each decided with ``fuzz_msg``'s oracles.  Only ``EnvError`` may leave
    the producer; what it makes must pass the messages' own checks and round-trip the
    codec; every environment gets exactly one answer."""
    selector, env = (data[0], data[1:]) if data else (0, b"")
    event = _EVENTS[selector % len(_EVENTS)]
    ctx = _ENV_CONTEXTS[(selector >> 2) & 1]
    try:
        direct = produce(event, parse_env(env), ctx, 7).messages
    except EnvError as exc:
        if not exc.reason:
            raise Crash("EnvError without a reason") from None
        direct = None
    stream = EnvStream(lambda: ctx, lambda *a, **kw: None)
    answers: list[bytes] = []
    made: list[m.Message] = []
    for raw in m.env_chunks(env, event, 7):
        chunk = m.decode_message(raw)
        if not isinstance(chunk, m.EnvChunkMsg):
            raise Crash(f"env_chunks made {chunk!r}")
        answers += [reply(error) for _, error, reply in stream.take(chunk) if reply]
    while (item := stream.next(1)) is not None:  # a run's routes one at a time
        _, got, reply = item
        if got is None:
            answers.append(reply(0))
            continue
        msg = got.message(0) if isinstance(got, rq.RouteRun) else got
        made.append(msg)
        if dataclasses.replace(msg) != msg or m.decode_message(m.encode_message(msg)) != msg:
            raise Crash(f"made an invalid message {msg!r}")
        _decide(msg)
        reply(0)
    if len(answers) != 1 or m.decode_env_result(answers[0]).message_id != 7:
        raise Crash(f"{len(answers)} answers to one environment")
    if direct is not None and made != direct:
        raise Crash("the pieces made other requests than the environment itself")


# -- argv splitter -------------------------------------------------------------

def fuzz_argv(data: bytes) -> None:
    text = _text(data)
    argv = split_command_line(text)
    if any(a == "" and " " not in text and "\t" not in text and '"' not in text for a in argv):
        raise Crash(f"empty argument from {text!r}")
    if "\0" in text:
        return
    again = split_command_line(quote_argv(argv))
    if again != argv:
        raise Crash(f"quote_argv does not round trip: {argv!r} -> {again!r}")


# -- option validator (with an in-memory file system) ---------------------------

CONFIG_DIR = "/etc/openvpn/client"
_FILES = {f"{CONFIG_DIR}/a.ovpn", f"{CONFIG_DIR}/client.ovpn", f"{CONFIG_DIR}/sub/b.ovpn",
          "/tmp/evil.ovpn", "/etc/openvpn/client2/x.ovpn", f"{CONFIG_DIR}/secret.ovpn"}
_DIRS = {"/", "/etc", "/etc/openvpn", CONFIG_DIR, f"{CONFIG_DIR}/sub", "/tmp", "/home",
         "/home/u", "/etc/openvpn/client2"}
_LINKS = {f"{CONFIG_DIR}/out.ovpn": "/tmp/evil.ovpn", "/home/u/in.ovpn": f"{CONFIG_DIR}/a.ovpn",
          f"{CONFIG_DIR}/loop": f"{CONFIG_DIR}/loop", "/home/u/cd": CONFIG_DIR,
          f"{CONFIG_DIR}/up": ".."}
_UNREADABLE = {f"{CONFIG_DIR}/secret.ovpn"}


class FakeResolver:
    """A small file system with symlinks (one of them a loop) and an unreadable file."""

    def realpath(self, path: str) -> str:
        if "\0" in path:
            raise FileNotFoundError(path)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise FileNotFoundError(path) from None
        parts = [p for p in path.split("/") if p]
        cur = "/"
        hops = 0
        while parts:
            p = parts.pop(0)
            if p == ".":
                continue
            if p == "..":
                cur = posixpath.dirname(cur)
                continue
            nxt = posixpath.join(cur, p)
            if nxt in _LINKS:
                hops += 1
                if hops > 40:
                    raise OSError(40, "Too many levels of symbolic links")
                target = _LINKS[nxt]
                base = "/" if target.startswith("/") else cur
                parts = [q for q in posixpath.join(base, target).split("/") if q] + parts
                cur = "/"
                continue
            if nxt in _DIRS or (nxt in _FILES and not parts):
                cur = nxt
            else:
                raise FileNotFoundError(2, "No such file or directory")
        return cur

    def is_dir(self, path: str) -> bool:
        try:
            return self.realpath(path) in _DIRS
        except OSError:
            return False

    def can_read(self, path: str) -> bool:
        try:
            return self.realpath(path) not in _UNREADABLE
        except OSError:
            return False


_WORKDIRS = ("/home/u", CONFIG_DIR, "/tmp", "/home/u/cd", "relative", "/nonexistent")


def fuzz_options(data: bytes) -> None:
    # A leading control byte chooses admin (bit 0) and the working directory;
    # plain text (the seeds) is a non-admin's request from inside config_dir.
    if data and data[0] < 0x20:
        selector, data = data[0], data[1:]
    else:
        selector = 2
    admin = bool(selector & 1)
    workdir = _WORKDIRS[(selector >> 1) % len(_WORKDIRS)]
    options = _text(data)
    try:
        approved = validate_options(options, workdir, config_dir=CONFIG_DIR,
                                    admin_group="openvpn-admin", is_admin=admin,
                                    resolver=FakeResolver())
    except StartupDataError as exc:
        if exc.code != errors.ERROR_STARTUP_DATA:
            raise Crash(f"code {exc.code:#x}") from None
        w.encode_reply(w.error_reply(exc))
        return
    argv = approved.argv
    if admin:
        return
    configs = [i for i, a in enumerate(argv) if a == "--config"]
    if len(configs) > 1:
        raise Crash(f"two configs approved for a non-admin: {argv!r}")
    for i, a in enumerate(argv):
        if a.startswith("--"):
            name = a[2:]
            if name not in WHITELIST:
                raise Crash(f"non-whitelisted option {a!r} approved: {argv!r}")
            if name == "setenv" and i + 1 < len(argv) and argv[i + 1] == "opt":
                raise Crash(f"--setenv opt approved: {argv!r}")
    for i in configs:
        cfg = argv[i + 1]
        if not cfg.startswith(CONFIG_DIR + "/") or cfg != approved.config:
            raise Crash(f"config {cfg!r} outside {CONFIG_DIR} approved")
        if cfg in _UNREADABLE or FakeResolver().realpath(cfg) != cfg:
            raise Crash(f"unreadable or unresolved config {cfg!r} approved")


# -- settings file -------------------------------------------------------------

def fuzz_settings(data: bytes) -> None:
    try:
        s = parse_settings(_text(data), path="/fuzz.conf")
    except SettingsError as exc:
        str(exc)
        return
    for path in (s.exe_path, s.config_dir, s.state_dir, s.socket_path):
        if not path.startswith("/") or "\0" in path:
            raise Crash(f"accepted a non-absolute path {path!r}")
    if s.socket_mode & 0o111 or not 1 <= s.max_clients <= 2**31 - 1:
        raise Crash(f"accepted {s!r}")


# -- an imported profile (policy/profile.py) ----------------------------------------

def fuzz_profile(data: bytes) -> None:
    """Whatever is accepted renders to a profile that names no file, holds no refused
    directive and parses back to the same directives."""
    try:
        plan = pp.examine(pp.parse(_text(data)))
        rendered = pp.render(plan, {f.path: data[:64] for f in plan.files})
    except pp.ProfileError as exc:
        if not exc.problems:
            raise Crash("a ProfileError without problems") from None
        str(exc)
        return
    try:
        again = pp.examine(pp.parse(rendered))
    except pp.ProfileError as exc:
        raise Crash(f"the rendered profile is refused: {exc}") from None
    if again.files:
        raise Crash(f"the rendered profile still names files: {again.files}")
    for d in (*again.directives, *(x for y in again.directives for x in y.block)):
        if d.name in pp.REFUSED or d.name not in pp.OPENVPN_OPTIONS:
            raise Crash(f"{d.name!r} passed")
    kept = [(d.name, d.args) for d in plan.directives if d.name not in pp.FILE_OPTIONS]
    back = [(d.name, d.args) for d in again.directives
            if d.name not in pp.FILE_OPTIONS and d.name != "key-direction"]
    if kept != back:
        raise Crash(f"rendering changed the directives: {kept} -> {back}")


# -- the control socket's codec (wire/control.py) ---------------------------------------

def fuzz_control(data: bytes) -> None:
    """A request decodes or is a bad-request; what decodes round-trips.  Any reply bytes
    decode or raise ReplyError, for every op."""
    try:
        req = wc.decode_request(data)
    except wc.ControlError as exc:
        if exc.code != "bad-request" or not exc.message:
            raise Crash(f"unexpected refusal {exc.code!r} {exc.message!r}") from None
    else:
        if wc.decode_request(wc.encode_request(req)) != req:
            raise Crash(f"{req!r} does not round-trip")
    for op in wc.OPS:
        for first in (True, False):
            try:
                reply = wc.decode_reply(data, op, first=first)
            except wc.ReplyError:
                continue
            wc.encode_reply(reply)  # what decodes can be sent again


TARGETS: dict[str, Callable[[bytes], None]] = {
    "startup": fuzz_startup,
    "msg": fuzz_msg,
    "env": fuzz_env,
    "argv": fuzz_argv,
    "options": fuzz_options,
    "settings": fuzz_settings,
    "profile": fuzz_profile,
    "control": fuzz_control,
}
