"""Client channel codec (SPEC §2): the startup message and the service's replies.

Pure functions over frozen dataclasses: no sockets, no clocks.  The 2 s wait for
the startup message belongs to the session; this module only defines its func
text (``FUNC_TIMEOUT``).

Startup message (client → service), one datagram::

    UTF-16LE  workdir NUL options NUL stdin NUL        (at most 4096 code units)

* ``stdin`` is the text after the second NUL up to the *next* NUL, as in the
  original (``GetStartupData`` hands the remainder to a ``wcs`` function).  Any
  units after that NUL and before the final NUL are ignored and not validated.
* The shortest valid message is three NULs (all parts empty).
* The codec does not judge the parts (absolute workdir, allowed options):
  that is policy.

``decode_startup`` raises :class:`~iservice.errors.StartupDataError` (code
``ERROR_STARTUP_DATA``, empty message line) for every malformed input, and
nothing else.  The ``func`` texts are part of the contract; checks run in
this order and the first failing one is reported:

1. no bytes at all                    → ``GetStartupData (empty)``  (FUNC_EMPTY)
2. odd byte length                    → ``GetStartupData (odd byte length)``  (FUNC_ODD_LENGTH;
   the original silently drops the odd byte)
3. more than 4096 UTF-16 code units   → ``GetStartupData (longer than 4096 characters)``
   (FUNC_TOO_LONG)
4. last code unit is not NUL          → ``Startup data is not NULL terminated``
   (FUNC_NOT_TERMINATED)
5. the only NUL is the final one      → ``Startup data ends at working directory``
   (FUNC_ENDS_AT_WORKDIR)
6. the second NUL is the final one    → ``Startup data ends at command line options``
   (FUNC_ENDS_AT_OPTIONS)
7. a part has an unpaired surrogate   → ``Startup data is not valid UTF-16``
   (FUNC_NOT_UTF16; judged after the structure)

The session uses ``GetStartupData (timeout)`` (FUNC_TIMEOUT) when nothing
arrives within 2 s.

Replies (service → client), UTF-16LE with **no** terminating NUL::

    success:  0x00000000\\n0x%08x\\nProcess ID          (openvpn's pid)
    error:    0x%08x\\n<func>\\n<message>               (message may be empty)

``decode_reply`` (for clients and tests) splits on the first two ``\\n`` only,
so the message may contain newlines; one trailing ``\\r\\n`` (the Windows
``FormatMessage`` habit) is stripped from the message.  It raises only
:class:`~iservice.errors.ReplyFormatError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from iservice.errors import (
    ERROR_CANT_WAIT,
    ERROR_OPENVPN_STARTUP,
    ERROR_STARTUP_DATA,
    ReplyFormatError,
    StartupDataError,
)

__all__ = [
    "FUNC_EMPTY",
    "FUNC_ENDS_AT_OPTIONS",
    "FUNC_ENDS_AT_WORKDIR",
    "FUNC_NOT_TERMINATED",
    "FUNC_NOT_UTF16",
    "FUNC_ODD_LENGTH",
    "FUNC_TIMEOUT",
    "FUNC_TOO_LONG",
    "FUNC_TOO_MANY_CLIENTS",
    "MAX_STARTUP_UNITS",
    "ErrorReply",
    "PidReply",
    "Reply",
    "StartupData",
    "decode_reply",
    "decode_startup",
    "encode_reply",
    "encode_startup",
    "error_reply",
    "exit_error_reply",
    "too_many_clients_reply",
]

MAX_STARTUP_UNITS = 4096  # UTF-16 code units, including the three NULs (2.7.0's cap)
_MAX_STARTUP_BYTES = 2 * MAX_STARTUP_UNITS

FUNC_TIMEOUT = "GetStartupData (timeout)"
FUNC_EMPTY = "GetStartupData (empty)"
FUNC_ODD_LENGTH = "GetStartupData (odd byte length)"
FUNC_TOO_LONG = "GetStartupData (longer than 4096 characters)"
FUNC_NOT_TERMINATED = "Startup data is not NULL terminated"
FUNC_ENDS_AT_WORKDIR = "Startup data ends at working directory"
FUNC_ENDS_AT_OPTIONS = "Startup data ends at command line options"
FUNC_NOT_UTF16 = "Startup data is not valid UTF-16"

FUNC_TOO_MANY_CLIENTS = "Too many concurrent clients"
_TOO_MANY_CLIENTS_MESSAGE = (
    "The service is already serving as many clients as it allows; try again later."
)
_PID_MESSAGE = "Process ID"

_SURROGATE = re.compile("[\ud800-\udfff]")
# ASCII only on purpose: int(x, 16) alone would accept "+1", "1_0", " 1" and Unicode digits.
_HEX8 = re.compile("0x[0-9A-Fa-f]{8}")
_U32_MAX = 0xFFFFFFFF


def _units(text: str) -> int:
    """UTF-16 code units of ``text`` (astral characters take two); no lone surrogates."""
    return len(text.encode("utf-16-le")) // 2


def _check_wire_text(value: object, what: str, *, newline_ok: bool) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} contains NUL")
    if not newline_ok and "\n" in value:
        raise ValueError(f"{what} contains a newline")
    if _SURROGATE.search(value):
        raise ValueError(f"{what} contains an unpaired surrogate (not encodable as UTF-16)")


@dataclass(frozen=True, slots=True)
class StartupData:
    """The three parts of a startup message; always encodable within the cap."""

    workdir: str
    options: str
    stdin: str

    def __post_init__(self) -> None:
        for what in ("workdir", "options", "stdin"):
            _check_wire_text(getattr(self, what), what, newline_ok=True)
        units = _units(self.workdir) + _units(self.options) + _units(self.stdin) + 3
        if units > MAX_STARTUP_UNITS:
            raise ValueError(
                f"startup data is {units} UTF-16 units, more than {MAX_STARTUP_UNITS}"
            )


def encode_startup(data: StartupData) -> bytes:
    """``workdir NUL options NUL stdin NUL`` in UTF-16LE.

    Every check (NUL in a part, unpaired surrogate, the 4096-unit cap) is made
    when the ``StartupData`` is built, which raises ``ValueError``/``TypeError``.
    """
    return f"{data.workdir}\0{data.options}\0{data.stdin}\0".encode("utf-16-le")


def decode_startup(raw: bytes) -> StartupData:
    """Parse a startup message; any malformation raises ``StartupDataError``."""
    n = len(raw)
    if n == 0:
        raise StartupDataError(FUNC_EMPTY)
    if n % 2:
        raise StartupDataError(FUNC_ODD_LENGTH)
    if n > _MAX_STARTUP_BYTES:
        raise StartupDataError(FUNC_TOO_LONG)
    if raw[-2:] != b"\0\0":
        raise StartupDataError(FUNC_NOT_TERMINATED)
    # surrogatepass never fails on an even length, so the structure is judged
    # before validity (as the original, which splits before converting).
    # NUL (0x0000) is never half of a surrogate pair, so splitting here is
    # splitting on code units.
    text = raw.decode("utf-16-le", "surrogatepass")
    last = len(text) - 1
    first = text.index("\0")
    if first == last:
        raise StartupDataError(FUNC_ENDS_AT_WORKDIR)
    second = text.index("\0", first + 1)
    if second == last:
        raise StartupDataError(FUNC_ENDS_AT_OPTIONS)
    third = text.index("\0", second + 1)  # exists: the final unit is NUL
    workdir, options, stdin = text[:first], text[first + 1 : second], text[second + 1 : third]
    for part in (workdir, options, stdin):
        if _SURROGATE.search(part):
            raise StartupDataError(FUNC_NOT_UTF16)
    # Cannot raise: no NUL, no surrogate, and fewer units than the message.
    return StartupData(workdir, options, stdin)


@dataclass(frozen=True, slots=True)
class PidReply:
    """Success: openvpn was started with this pid."""

    pid: int

    def __post_init__(self) -> None:
        if not isinstance(self.pid, int) or isinstance(self.pid, bool):
            raise TypeError("pid must be int")
        if not 0 <= self.pid <= _U32_MAX:
            raise ValueError(f"pid {self.pid} does not fit in 32 bits")


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """Failure: error number, what failed (one line), human text (may span lines)."""

    code: int
    func: str
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.code, int) or isinstance(self.code, bool):
            raise TypeError("code must be int")
        # code 0 on the first line means success; an error reply must not say that.
        if not 0 < self.code <= _U32_MAX:
            raise ValueError(f"error code {self.code} is not in 1..0xffffffff")
        _check_wire_text(self.func, "func", newline_ok=False)
        _check_wire_text(self.message, "message", newline_ok=True)


Reply: TypeAlias = PidReply | ErrorReply


def encode_reply(reply: Reply) -> bytes:
    """UTF-16LE reply text, without a terminating NUL."""
    if isinstance(reply, PidReply):
        text = f"0x00000000\n0x{reply.pid:08x}\n{_PID_MESSAGE}"
    else:
        message = reply.message
        if message.endswith("\r\n"):
            # decode_reply drops one trailing CRLF (FormatMessage's line end): add one
            # so that such a message reads back as itself.
            message += "\r\n"
        text = f"0x{reply.code:08x}\n{reply.func}\n{message}"
    return text.encode("utf-16-le")


def decode_reply(raw: bytes) -> Reply:
    """Parse a reply; anything malformed raises ``ReplyFormatError``."""
    if len(raw) % 2:
        raise ReplyFormatError("reply has an odd byte length")
    try:
        text = raw.decode("utf-16-le")
    except UnicodeDecodeError:
        raise ReplyFormatError("reply is not valid UTF-16") from None
    if "\0" in text:
        raise ReplyFormatError("reply contains NUL")
    parts = text.split("\n", 2)
    if len(parts) != 3:
        raise ReplyFormatError("reply has fewer than three lines")
    first, func, message = parts
    if not _HEX8.fullmatch(first):
        raise ReplyFormatError(f"first line {first!r} is not 0x followed by 8 hex digits")
    code = int(first[2:], 16)
    if message.endswith("\r\n"):
        message = message[:-2]
    if code == 0:
        if message != _PID_MESSAGE or not _HEX8.fullmatch(func):
            raise ReplyFormatError("code 0 but not a 'Process ID' reply")
        return PidReply(int(func[2:], 16))
    # Cannot raise: code in range, no NUL, no newline in func, valid UTF-16.
    return ErrorReply(code, func, message)


def _sanitize(text: str, *, newline_ok: bool) -> str:
    text = _SURROGATE.sub("\ufffd", text.replace("\0", "\ufffd"))
    return text if newline_ok else text.replace("\r\n", " ").replace("\n", " ")


def error_reply(err: StartupDataError) -> ErrorReply:
    """The reply a ``StartupDataError`` implies; never raises.

    ``func`` may quote client text (an option), so it is made sendable rather
    than trusted: newlines become spaces, NULs and unpaired surrogates become
    U+FFFD.  A code outside 1..0xffffffff (a bug where the error was raised)
    is sent as ``ERROR_STARTUP_DATA`` rather than as a false success.
    """
    code = err.code
    if not isinstance(code, int) or not 0 < code <= _U32_MAX:
        code = ERROR_STARTUP_DATA
    return ErrorReply(
        code,
        _sanitize(str(err.func), newline_ok=False),
        _sanitize(str(err.message), newline_ok=True),
    )


def exit_error_reply(exit_code: int) -> ErrorReply:
    """``0x20000000\\nOpenVPN exited with error: exit code = N\\n``.

    A signal death is reported by the caller as 128 + the signal number; a
    negative value (asyncio's ``-signum``) is refused so that it gets converted.
    """
    if not isinstance(exit_code, int) or isinstance(exit_code, bool):
        raise TypeError("exit_code must be int")
    if not 0 <= exit_code <= _U32_MAX:
        raise ValueError(f"exit code {exit_code} is not in 0..0xffffffff")
    return ErrorReply(ERROR_OPENVPN_STARTUP, f"OpenVPN exited with error: exit code = {exit_code}")


def too_many_clients_reply() -> ErrorReply:
    """``0x0000022a\\nToo many concurrent clients\\n<sentence>``."""
    return ErrorReply(ERROR_CANT_WAIT, FUNC_TOO_MANY_CLIENTS, _TOO_MANY_CLIENTS_MESSAGE)
