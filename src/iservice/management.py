"""openvpn's management interface, client side: a sans-IO codec and a small socket client.

``Parser`` turns the bytes openvpn writes into events and never does I/O (the h11
habit): feed it what the socket gave, take the events out.  Two kinds of lines
arrive on one stream:

* real-time notifications, which start with ``>`` and may come at any time, even
  in the middle of a multi-line response: ``>STATE:``, ``>PASSWORD:``, ``>HOLD:``,
  ``>INFO:``, ``>INFOMSG:``, ``>BYTECOUNT:``, ``>LOG:``, ``>ECHO:``, ``>FATAL:``,
  ``>NEED-OK:``, ``>NEED-STR:`` …;
* responses to our commands, in the order the commands were sent: one line
  (``SUCCESS: …`` / ``ERROR: …``) or several lines closed by ``END`` (``state``,
  ``status``, ``log N`` …).  Which one a command gets is known only to whoever
  sent it, so ``Parser.expect`` is told for every command sent.

The commands we send are built by the ``*_command`` functions; every value is
quoted the way openvpn's parser reads it, and a value that contains a line break
(which would inject a second command) is refused with ``ValueError``.

Secrets: ``password_commands`` returns ``bytearray``s so the caller can overwrite
them after sending; Python's ``str`` cannot be wiped, so the client keeps secrets
in ``str`` no longer than needed.  The parser never keeps ``>PASSWORD:Auth-Token``
values (they are credentials) — it reports that one arrived, nothing more.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_LINE = 65536  # a longer line is cut (openvpn's own lines are far shorter)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Info:
    """``>INFO:`` — the banner when a client connects (and other general information)."""
    text: str


@dataclass(frozen=True)
class Hold:
    """``>HOLD:Waiting for hold release:N`` — openvpn waits for ``hold release``."""
    text: str
    wait_seconds: int


@dataclass(frozen=True)
class State:
    """``>STATE:time,NAME,detail,local_ip,remote_ip,remote_port,local_addr,local_port,ipv6``.

    Also produced for each line of a ``state`` command's response.
    """
    timestamp: int
    name: str
    detail: str = ""
    local_ip: str = ""
    remote_ip: str = ""
    remote_port: str = ""
    local_addr: str = ""
    local_port: str = ""
    local_ipv6: str = ""


@dataclass(frozen=True)
class StaticChallenge:
    """``SC:flags,text`` of a password request: bit 0 echo, bit 1 concatenate."""
    text: str
    echo: bool
    concat: bool = False


@dataclass(frozen=True)
class PasswordRequest:
    """``>PASSWORD:Need 'KIND' username/password|password|username [SC:…]``."""
    kind: str  # 'Auth', 'Private Key', 'HTTP Proxy', 'SOCKS Proxy', a PIN name …
    need_username: bool
    need_password: bool
    static_challenge: StaticChallenge | None = None


@dataclass(frozen=True)
class DynamicChallenge:
    """``CRV1:flags:state_id:username_b64:text`` (the server's challenge after a first auth)."""
    flags: str
    state_id: str
    username: str
    text: str

    @property
    def echo(self) -> bool:
        return "E" in self.flags.split(",")

    @property
    def response_required(self) -> bool:
        return "R" in self.flags.split(",")


@dataclass(frozen=True)
class VerificationFailed:
    """``>PASSWORD:Verification Failed: 'KIND' ['CRV1:…']``."""
    kind: str
    challenge: DynamicChallenge | None = None


@dataclass(frozen=True)
class AuthToken:
    """``>PASSWORD:Auth-Token:…`` — the token itself is a credential and is not kept."""


@dataclass(frozen=True)
class WebAuth:
    """``>INFOMSG:WEB_AUTH:flags:url`` or ``>INFOMSG:OPEN_URL:url``: open this URL."""
    url: str
    flags: str = ""


@dataclass(frozen=True)
class CrText:
    """``>INFOMSG:CR_TEXT:flags:text`` — a challenge answered with ``cr-response``."""
    flags: str
    text: str

    @property
    def echo(self) -> bool:
        return "E" in self.flags.split(",")


@dataclass(frozen=True)
class InfoMsg:
    """Any other ``>INFOMSG:``."""
    text: str


@dataclass(frozen=True)
class ByteCount:
    """``>BYTECOUNT:in,out`` (bytes received from / sent to the tunnel, since start)."""
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class Log:
    """``>LOG:time,flags,text`` (also each line of a ``log N`` response)."""
    timestamp: int
    flags: str
    text: str


@dataclass(frozen=True)
class Echo:
    """``>ECHO:time,text``."""
    timestamp: int
    text: str


@dataclass(frozen=True)
class Fatal:
    """``>FATAL:text`` — openvpn is about to exit."""
    text: str


@dataclass(frozen=True)
class NeedOk:
    """``>NEED-OK:Need 'NAME' confirmation MSG:text`` (answer ``needok NAME ok|cancel``)."""
    name: str
    text: str


@dataclass(frozen=True)
class NeedStr:
    """``>NEED-STR:Need 'NAME' input MSG:text`` (answer ``needstr NAME "…"``)."""
    name: str
    text: str


@dataclass(frozen=True)
class Notification:
    """A real-time line this parser does not know (``>CLIENT:`` on a server, newer types)."""
    kind: str
    text: str


@dataclass(frozen=True)
class Response:
    """The reply to one command: ``ok`` and the text of ``SUCCESS:``/``ERROR:``, or the
    lines of a multi-line reply (``ok`` True, ``text`` empty)."""
    ok: bool
    text: str = ""
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unexpected:
    """A line that is neither a notification nor the reply to a command we sent."""
    line: str


Event = (Info | Hold | State | PasswordRequest | VerificationFailed | AuthToken | WebAuth
         | CrText | InfoMsg | ByteCount | Log | Echo | Fatal | NeedOk | NeedStr | Notification
         | Response | Unexpected)


# --------------------------------------------------------------------------- parsing lines


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def parse_state(text: str) -> State:
    f = text.split(",")
    f += [""] * (9 - len(f))
    return State(_int(f[0]), f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8])


def parse_crv1(text: str) -> DynamicChallenge | None:
    """``CRV1:flags:state_id:username_b64:text`` → challenge, None if malformed."""
    if not text.startswith("CRV1:"):
        return None
    parts = text[5:].split(":", 3)
    if len(parts) != 4:
        return None
    flags, state_id, user_b64, challenge = parts
    try:
        username = base64.b64decode(user_b64, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return DynamicChallenge(flags, state_id, username, challenge)


_NEED_RE = re.compile(r"Need '([^']*)' (username/password|password|username)(?: SC:(\d+),(.*))?")
_FAILED_RE = re.compile(r"Verification Failed: '([^']*)'(?: \['(.*)'\])?")
_NEED_OK_RE = re.compile(r"Need '([^']*)' (?:confirmation|input)(?: MSG:(.*))?")


def parse_password(text: str) -> Event:
    if m := _NEED_RE.fullmatch(text):
        kind, what, sc_flags, sc_text = m.groups()
        sc = None
        if sc_flags is not None:
            flags = _int(sc_flags)
            sc = StaticChallenge(sc_text, echo=bool(flags & 1), concat=bool(flags & 2))
        return PasswordRequest(kind, need_username=what != "password",
                               need_password=what != "username", static_challenge=sc)
    if m := _FAILED_RE.fullmatch(text):
        kind, crv1 = m.groups()
        return VerificationFailed(kind, parse_crv1(crv1) if crv1 else None)
    if text.startswith("Auth-Token:"):
        return AuthToken()
    return Notification("PASSWORD", text)


def parse_infomsg(text: str) -> Event:
    if text.startswith("OPEN_URL:"):
        return WebAuth(text[len("OPEN_URL:"):])
    if text.startswith("WEB_AUTH:"):
        flags, _, url = text[len("WEB_AUTH:"):].partition(":")
        return WebAuth(url, flags)
    if text.startswith("CR_TEXT:"):
        flags, _, challenge = text[len("CR_TEXT:"):].partition(":")
        return CrText(flags, challenge)
    return InfoMsg(text)


def parse_notification(line: str) -> Event:
    """One line that starts with ``>``."""
    kind, sep, text = line[1:].partition(":")
    if not sep:
        return Notification(kind, "")
    if kind == "STATE":
        return parse_state(text)
    if kind == "PASSWORD":
        return parse_password(text)
    if kind == "HOLD":
        return Hold(text, _int(text.rpartition(":")[2]))
    if kind == "INFO":
        return Info(text)
    if kind == "INFOMSG":
        return parse_infomsg(text)
    if kind == "BYTECOUNT":
        a, _, b = text.partition(",")
        return ByteCount(_int(a), _int(b))
    if kind == "LOG":
        ts, _, rest = text.partition(",")
        flags, _, msg = rest.partition(",")
        return Log(_int(ts), flags, msg)
    if kind == "ECHO":
        ts, _, msg = text.partition(",")
        return Echo(_int(ts), msg)
    if kind == "FATAL":
        return Fatal(text)
    if kind in ("NEED-OK", "NEED-STR") and (m := _NEED_OK_RE.fullmatch(text)):
        name, msg = m.groups()
        return (NeedOk if kind == "NEED-OK" else NeedStr)(name, msg or "")
    return Notification(kind, text)


# --------------------------------------------------------------------------- the parser


class Parser:
    """Bytes from openvpn in, events out.  ``expect(multi)`` once per command sent."""

    def __init__(self) -> None:
        self._buf = b""
        self._pending: deque[bool] = deque()  # per command sent: multi-line reply?
        self._lines: list[str] = []  # the multi-line reply being collected
        self._events: deque[Event] = deque()

    def expect(self, multi: bool = False) -> None:
        self._pending.append(multi)

    def feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:  # no newline for far too long: cut
            lines.append(self._buf[:MAX_LINE])
            self._buf = b""
        for raw in lines:
            self._line(raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"))

    def _line(self, line: str) -> None:
        if line.startswith(">"):
            self._events.append(parse_notification(line))
            return
        if not self._pending:
            if line:
                self._events.append(Unexpected(line))
            return
        if self._pending[0]:  # a multi-line reply: lines until END (or an ERROR)
            if line == "END":
                self._pending.popleft()
                self._events.append(Response(True, "", tuple(self._lines)))
                self._lines = []
            elif line.startswith("ERROR:") and not self._lines:
                self._pending.popleft()
                self._events.append(Response(False, line[6:].strip()))
            else:
                self._lines.append(line)
            return
        if line.startswith("SUCCESS:"):
            self._pending.popleft()
            self._events.append(Response(True, line[8:].strip()))
        elif line.startswith("ERROR:"):
            self._pending.popleft()
            self._events.append(Response(False, line[6:].strip()))
        elif line:
            self._events.append(Unexpected(line))

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        while self._events:
            yield self._events.popleft()


# --------------------------------------------------------------------------- commands


def quote(value: str) -> str:
    """A value as openvpn's command parser reads it: in double quotes, ``\\`` and ``"``
    escaped.  A line break would end the command early: refused."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError("a management command value may not contain a line break or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command(*words: str) -> bytes:
    """A command line; the first word is the command itself (not quoted)."""
    head, *rest = words
    if not re.fullmatch(r"[a-z][a-z0-9-]*", head):
        raise ValueError(f"not a management command: {head!r}")
    args = [w if re.fullmatch(r"[A-Za-z0-9_.:-]+", w) else quote(w) for w in rest]
    return (" ".join([head, *args]) + "\n").encode("utf-8")




def is_multi_line(cmd: bytes) -> bool:
    words = cmd.decode("utf-8", "replace").split()
    if not words:
        return False
    # "state on", "log on" … answer SUCCESS; "state", "state 3", "log all" answer lines.
    if words[0] in ("state", "log", "echo"):
        return len(words) == 1 or words[1] not in ("on", "off")
    return words[0] in ("status", "help", "version")


def static_challenge_password(password: str, response: str, sc: StaticChallenge) -> str:
    """The password field for a static challenge: ``SCRV1:b64(pass):b64(response)``, or the
    two concatenated when the server asked for that (flag bit 1)."""
    if sc.concat:
        return password + response
    b64 = base64.b64encode
    return f"SCRV1:{b64(password.encode()).decode()}:{b64(response.encode()).decode()}"


def dynamic_challenge_password(challenge: DynamicChallenge, response: str) -> str:
    return f"CRV1::{challenge.state_id}::{response}"


def password_commands(kind: str, *, username: str | None, password: str | None
                      ) -> list[bytearray]:
    """``username "KIND" …`` and/or ``password "KIND" …``, as wipeable buffers."""
    out: list[bytearray] = []
    if username is not None:
        out.append(bytearray(command("username", kind, username)))
    if password is not None:
        out.append(bytearray(command("password", kind, password)))
    return out


def cr_response_command(response: str) -> bytearray:
    return bytearray(b"cr-response " + base64.b64encode(response.encode("utf-8")) + b"\n")


def wipe(buf: bytearray) -> None:
    """Overwrite a buffer that held a secret."""
    buf[:] = b"\0" * len(buf)


# --------------------------------------------------------------------------- I/O client


class ManagementError(Exception):
    """The management interface cannot be reached or broke."""


def peer_pid(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", raw)[0]
    return pid


class Client:
    """A blocking client of one management unix socket (with a poll-friendly ``fileno``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = Parser()
        self.closed = False

    @classmethod
    def connect(cls, path: str, *, timeout: float, expected_pid: int | None = None,
                alive: Callable[[], bool] | None = None) -> Client:
        """Connect, retrying while openvpn has not created the socket yet.

        ``expected_pid``: the peer must be exactly that process (openvpn-gui's
        ``ValidateManagementDaemon``): nobody else may answer our prompts' questions.
        """
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() > deadline or (alive is not None and not alive()):
                    raise ManagementError(f"cannot reach openvpn's management interface "
                                          f"at {path}: {exc.strerror}") from None
                time.sleep(0.05)
        if expected_pid is not None and peer_pid(sock) != expected_pid:
            sock.close()
            raise ManagementError(f"{path} is not served by openvpn pid {expected_pid}")
        return cls(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, cmd: bytes | bytearray, *, multi: bool | None = None) -> None:
        self.parser.expect(is_multi_line(bytes(cmd)) if multi is None else multi)
        self.sock.sendall(cmd)

    def read(self) -> list[Event]:
        """What is readable now (blocks for one recv); [] and ``closed`` at EOF."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        self.parser.feed(data)
        return list(self.parser.events())

    def wait(self, timeout: float | None) -> list[Event]:
        """Events arriving within ``timeout`` seconds ([] on timeout)."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        return self.read() if ready else []

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True

