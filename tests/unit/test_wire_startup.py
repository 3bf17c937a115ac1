"""Client channel codec (SPEC §2): hand vectors, every malformation, round trips."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from iservice.errors import (
    ERROR_CANT_WAIT,
    ERROR_OPENVPN_STARTUP,
    ERROR_STARTUP_DATA,
    ReplyFormatError,
    StartupDataError,
)
from iservice.wire import startup
from iservice.wire.startup import (
    FUNC_EMPTY,
    FUNC_ENDS_AT_OPTIONS,
    FUNC_ENDS_AT_WORKDIR,
    FUNC_NOT_TERMINATED,
    FUNC_NOT_UTF16,
    FUNC_ODD_LENGTH,
    FUNC_TIMEOUT,
    FUNC_TOO_LONG,
    MAX_STARTUP_UNITS,
    ErrorReply,
    PidReply,
    StartupData,
    decode_reply,
    decode_startup,
    encode_reply,
    encode_startup,
    error_reply,
    exit_error_reply,
    too_many_clients_reply,
)

ALL_FUNCS = {
    FUNC_EMPTY,
    FUNC_ODD_LENGTH,
    FUNC_TOO_LONG,
    FUNC_NOT_TERMINATED,
    FUNC_ENDS_AT_WORKDIR,
    FUNC_ENDS_AT_OPTIONS,
    FUNC_NOT_UTF16,
}


def u16(text: str) -> bytes:
    """UTF-16LE, lone surrogates allowed (to build invalid messages by hand)."""
    return text.encode("utf-16-le", "surrogatepass")


# --------------------------------------------------------------------------- contract texts


def test_func_texts_are_the_contract() -> None:
    assert FUNC_TIMEOUT == "GetStartupData (timeout)"
    assert FUNC_EMPTY == "GetStartupData (empty)"
    assert FUNC_ODD_LENGTH == "GetStartupData (odd byte length)"
    assert FUNC_TOO_LONG == "GetStartupData (longer than 4096 characters)"
    assert FUNC_NOT_TERMINATED == "Startup data is not NULL terminated"
    assert FUNC_ENDS_AT_WORKDIR == "Startup data ends at working directory"
    assert FUNC_ENDS_AT_OPTIONS == "Startup data ends at command line options"
    assert FUNC_NOT_UTF16 == "Startup data is not valid UTF-16"
    assert MAX_STARTUP_UNITS == 4096
    for name in ALL_FUNCS | {FUNC_TIMEOUT}:
        assert name in (startup.__doc__ or "")


# --------------------------------------------------------------------------- startup message


def test_encode_startup_hand_vector() -> None:
    data = StartupData("/home/u/vpn", "--config x.ovpn --verb 3", "secret\n")
    expected = (
        b"/\x00h\x00o\x00m\x00e\x00/\x00u\x00/\x00v\x00p\x00n\x00\x00\x00"
        + "--config x.ovpn --verb 3".encode("utf-16-le")
        + b"\x00\x00"
        + b"s\x00e\x00c\x00r\x00e\x00t\x00\n\x00\x00\x00"
    )
    assert encode_startup(data) == expected
    assert decode_startup(expected) == data


def test_shortest_valid_message_is_three_nuls() -> None:
    assert decode_startup(b"\x00\x00" * 3) == StartupData("", "", "")
    assert encode_startup(StartupData("", "", "")) == b"\x00" * 6


def test_astral_characters_are_surrogate_pairs() -> None:
    data = StartupData("/d\U0001f600", "--verb 3", "")
    raw = encode_startup(data)
    assert b"\x3d\xd8\x00\xde" in raw  # U+1F600 = D83D DE00
    assert decode_startup(raw) == data


def test_stdin_is_read_up_to_its_first_nul_rest_ignored() -> None:
    # The tail after stdin's NUL is ignored, even an unpaired surrogate in it.
    raw = u16("/w\0--verb 3\0pw\0junk\ud800\0")
    assert decode_startup(raw) == StartupData("/w", "--verb 3", "pw")


def test_newlines_and_relative_workdir_are_carried_not_judged() -> None:
    raw = u16("relative\0a\nb\0line1\nline2\n\0")
    assert decode_startup(raw) == StartupData("relative", "a\nb", "line1\nline2\n")


def test_exactly_4096_units_is_accepted() -> None:
    raw = u16("a" * (MAX_STARTUP_UNITS - 3) + "\0\0\0")
    assert len(raw) == 2 * MAX_STARTUP_UNITS
    assert decode_startup(raw).workdir == "a" * (MAX_STARTUP_UNITS - 3)


MALFORMED = [
    (b"", FUNC_EMPTY),
    (b"\x00", FUNC_ODD_LENGTH),
    (b"\x00\x00\x00", FUNC_ODD_LENGTH),
    (u16("/w\0o\0s\0") + b"\x00", FUNC_ODD_LENGTH),
    (b"\x00" * (2 * MAX_STARTUP_UNITS + 1), FUNC_ODD_LENGTH),  # odd is checked first
    (b"\x00" * (2 * MAX_STARTUP_UNITS + 2), FUNC_TOO_LONG),
    (u16("a" * (MAX_STARTUP_UNITS - 2) + "\0\0\0"), FUNC_TOO_LONG),
    (u16("abc"), FUNC_NOT_TERMINATED),
    (u16("/w\0o\0s"), FUNC_NOT_TERMINATED),
    (b"\x00\x01", FUNC_NOT_TERMINATED),  # U+0100: a zero byte is not a NUL unit
    (u16("/w\0o\0s\0") + b"\x00\x01", FUNC_NOT_TERMINATED),
    (u16("\0"), FUNC_ENDS_AT_WORKDIR),
    (u16("/home/u\0"), FUNC_ENDS_AT_WORKDIR),
    (u16("\0\0"), FUNC_ENDS_AT_OPTIONS),
    (u16("/w\0--verb 3\0"), FUNC_ENDS_AT_OPTIONS),
    (u16("/w\ud800\0o\0s\0"), FUNC_NOT_UTF16),
    (u16("/w\0o\udc00\0s\0"), FUNC_NOT_UTF16),
    (u16("/w\0o\0s\udbff\0"), FUNC_NOT_UTF16),
    (u16("/w\udc00\ud800\0o\0s\0"), FUNC_NOT_UTF16),  # pair in the wrong order
    (u16("\ud800\0"), FUNC_ENDS_AT_WORKDIR),  # structure is judged before validity
]


@pytest.mark.parametrize(("raw", "func"), MALFORMED)
def test_each_malformation_has_its_func_text(raw: bytes, func: str) -> None:
    with pytest.raises(StartupDataError) as exc:
        decode_startup(raw)
    assert exc.value.func == func
    assert exc.value.code == ERROR_STARTUP_DATA
    assert exc.value.message == ""


def test_startup_data_validates_when_built() -> None:
    with pytest.raises(ValueError):
        StartupData("/a\0b", "", "")
    with pytest.raises(ValueError):
        StartupData("", "--x\0", "")
    with pytest.raises(ValueError):
        StartupData("", "", "\ud800")
    with pytest.raises(TypeError):
        StartupData(b"/w", "", "")  # type: ignore[arg-type]
    StartupData("a" * (MAX_STARTUP_UNITS - 3), "", "")
    with pytest.raises(ValueError):
        StartupData("a" * (MAX_STARTUP_UNITS - 2), "", "")
    # An astral character is two units.
    StartupData("\U0001f600" * ((MAX_STARTUP_UNITS - 4) // 2), "", "")
    with pytest.raises(ValueError):
        StartupData("\U0001f600" * ((MAX_STARTUP_UNITS - 2) // 2), "", "")


# --------------------------------------------------------------------------- replies


def test_pid_reply_hand_vector() -> None:
    raw = "0x00000000\n0x00001a2c\nProcess ID".encode("utf-16-le")
    assert encode_reply(PidReply(0x1A2C)) == raw
    assert decode_reply(raw) == PidReply(0x1A2C)
    assert not raw.endswith(b"\x00\x00")
    assert encode_reply(PidReply(0xFFFFFFFF)) == u16("0x00000000\n0xffffffff\nProcess ID")


def test_error_reply_hand_vectors() -> None:
    timeout = ErrorReply(ERROR_STARTUP_DATA, FUNC_TIMEOUT)
    assert encode_reply(timeout) == u16("0x20000001\nGetStartupData (timeout)\n")
    denied = ErrorReply(5, "CreateProcessAsUser", "Permission denied")
    assert encode_reply(denied) == u16("0x00000005\nCreateProcessAsUser\nPermission denied")


def test_exit_error_reply() -> None:
    reply = exit_error_reply(1)
    assert reply == ErrorReply(ERROR_OPENVPN_STARTUP, "OpenVPN exited with error: exit code = 1")
    assert encode_reply(reply) == u16("0x20000000\nOpenVPN exited with error: exit code = 1\n")
    assert encode_reply(exit_error_reply(143)).decode("utf-16-le").endswith("= 143\n")
    with pytest.raises(ValueError):
        exit_error_reply(-15)


def test_too_many_clients_reply() -> None:
    reply = too_many_clients_reply()
    assert reply.code == ERROR_CANT_WAIT == 0x22A
    assert reply.func == "Too many concurrent clients"
    assert reply.message
    text = encode_reply(reply).decode("utf-16-le")
    assert text.startswith("0x0000022a\nToo many concurrent clients\n")


def test_error_reply_from_startup_data_error() -> None:
    assert error_reply(StartupDataError(FUNC_EMPTY)) == ErrorReply(ERROR_STARTUP_DATA, FUNC_EMPTY)
    err = StartupDataError("You have specified an option (--up) that ...", "", ERROR_STARTUP_DATA)
    assert error_reply(err).func == err.func
    enoent = StartupDataError("f", "No such file or directory", 2)
    assert error_reply(enoent) == ErrorReply(2, "f", "No such file or directory")


def test_error_reply_never_raises_on_hostile_text() -> None:
    # func may quote client text: newlines, NULs and lone surrogates are made sendable.
    reply = error_reply(StartupDataError("option (--a\nb\r\nc\0d\ud800)", "m\nn\0"))
    assert reply.func == "option (--a b c\ufffdd\ufffd)"
    assert reply.message == "m\nn\ufffd"
    assert decode_reply(encode_reply(reply)) == reply
    # A code that is not a valid error number is not sent as "success".
    assert error_reply(StartupDataError("f", code=0)).code == ERROR_STARTUP_DATA
    assert error_reply(StartupDataError("f", code=2**32)).code == ERROR_STARTUP_DATA


def test_decode_reply_tolerates_windows_crlf() -> None:
    raw = u16("0x00000005\nCreateProcessAsUser\nAccess is denied.\r\n")
    assert decode_reply(raw) == ErrorReply(5, "CreateProcessAsUser", "Access is denied.")
    assert decode_reply(u16("0x00000000\n0x00000010\nProcess ID\r\n")) == PidReply(16)


def test_decode_reply_message_keeps_later_newlines() -> None:
    raw = u16("0x00000057\nfunc\nline one\nline two")
    assert decode_reply(raw) == ErrorReply(87, "func", "line one\nline two")


def test_decode_reply_accepts_uppercase_hex() -> None:
    assert decode_reply(u16("0x0000022A\nf\n")) == ErrorReply(0x22A, "f", "")
    assert decode_reply(u16("0x00000000\n0x00001A2C\nProcess ID")) == PidReply(0x1A2C)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00",  # odd
        b"\x00\xd8",  # lone surrogate
        u16("0x00000000\n0x00001a2c\nProcess ID\0"),  # terminating NUL
        u16("0x00000001\nonly two lines"),
        u16("0x00000001"),
        b"",
        u16("0x1\nf\nm"),
        u16("0X00000001\nf\nm"),
        u16(" 0x00000001\nf\nm"),
        u16("0x0000000g\nf\nm"),
        u16("0x+0000001\nf\nm"),
        u16("0x0000_001\nf\nm"),
        u16("0x000000001\nf\nm"),
        u16("0x\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff11\nf\nm"),  # fullwidth digits
        u16("0x00000000\n0x00001a2c\nprocess id"),  # code 0 but not a PID reply
        u16("0x00000000\n1a2c\nProcess ID"),
        u16("0x00000000\n0x1a2c\nProcess ID"),
        u16("0x00000000\nGetStartupData\n"),
    ],
)
def test_decode_reply_rejects(raw: bytes) -> None:
    with pytest.raises(ReplyFormatError):
        decode_reply(raw)


def test_reply_dataclasses_validate() -> None:
    with pytest.raises(ValueError):
        PidReply(-1)
    with pytest.raises(ValueError):
        PidReply(2**32)
    with pytest.raises(TypeError):
        PidReply(True)
    with pytest.raises(ValueError):
        ErrorReply(0, "f")  # 0 means success
    with pytest.raises(ValueError):
        ErrorReply(2**32, "f")
    with pytest.raises(ValueError):
        ErrorReply(1, "a\nb")
    with pytest.raises(ValueError):
        ErrorReply(1, "f", "a\0b")
    with pytest.raises(ValueError):
        ErrorReply(1, "f", "\udc00")


# --------------------------------------------------------------------------- properties

_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
_PART = st.text(_CHARS, max_size=300)


@st.composite
def startup_data(draw: st.DrawFn) -> StartupData:
    parts = (draw(_PART), draw(_PART), draw(_PART))
    units = sum(len(p.encode("utf-16-le")) // 2 for p in parts) + 3
    assume(units <= MAX_STARTUP_UNITS)
    return StartupData(*parts)


_FUNC = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0\n"), max_size=80)
_MESSAGE = st.text(_CHARS, max_size=200).filter(lambda m: not m.endswith("\r\n"))
replies = st.one_of(
    st.builds(PidReply, st.integers(0, 2**32 - 1)),
    st.builds(ErrorReply, st.integers(1, 2**32 - 1), _FUNC, _MESSAGE),
)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few bit flips, truncations, insertions or deletions."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "append"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@given(startup_data())
def test_startup_round_trip(data: StartupData) -> None:
    raw = encode_startup(data)
    assert len(raw) <= 2 * MAX_STARTUP_UNITS
    assert decode_startup(raw) == data


@given(replies)
def test_reply_round_trip(reply: PidReply | ErrorReply) -> None:
    assert decode_reply(encode_reply(reply)) == reply


@given(st.builds(ErrorReply, st.integers(1, 2**32 - 1), _FUNC, st.text(_CHARS, max_size=50)))
def test_reply_round_trip_modulo_one_trailing_crlf(reply: ErrorReply) -> None:
    expected = reply.message[:-2] if reply.message.endswith("\r\n") else reply.message
    assert decode_reply(encode_reply(reply)) == ErrorReply(reply.code, reply.func, expected)


@settings(max_examples=300)
@given(mutated(startup_data().map(encode_startup)))
def test_mutated_startup_raises_only_startup_data_error(raw: bytes) -> None:
    try:
        data = decode_startup(raw)
    except StartupDataError as e:
        assert e.func in ALL_FUNCS
        assert e.code == ERROR_STARTUP_DATA
    else:
        # Whatever is accepted re-encodes within the cap and decodes the same.
        assert decode_startup(encode_startup(data)) == data


@settings(max_examples=300)
@given(mutated(replies.map(encode_reply)))
def test_mutated_reply_raises_only_reply_format_error(raw: bytes) -> None:
    try:
        reply = decode_reply(raw)
    except ReplyFormatError:
        return
    assert decode_reply(encode_reply(reply)) == reply


@given(st.text(max_size=100), st.text(max_size=100), st.integers(-(2**40), 2**40))
def test_error_reply_is_total(func: str, message: str, code: int) -> None:
    reply = error_reply(StartupDataError(func, message, code))
    decoded = decode_reply(encode_reply(reply))
    assert isinstance(decoded, ErrorReply)
    assert decoded.code == reply.code


def test_a_message_ending_in_crlf_reads_back_as_itself() -> None:
    """decode_reply drops one trailing CRLF; encode_reply keeps such a message whole
    (found by the fuzz test: "\\r\\n" came back as "")."""
    from iservice.wire.startup import ErrorReply, decode_reply, encode_reply
    for message in ("\r\n", "text\r\n", "a\r\n\r\n", "", "plain"):
        reply = ErrorReply(1, "func", message)
        assert decode_reply(encode_reply(reply)) == reply
