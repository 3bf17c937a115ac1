"""No input escapes a wire decoder as anything but that decoder's own error.

The h11 rule (style anchors §1): any other exception out of a codec is a bug.
Arbitrary bytes alone rarely get past the first checks, so each decoder is also
fed near-valid input built from its format's pieces (NUL units and surrogates
for UTF-16; a consistent header, known offsets and family values for openvpn-msg).
fuzz/corpus/ holds seeds for the same targets under atheris.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iservice.errors import (
    ERROR_MESSAGE_DATA,
    ERROR_MESSAGE_TYPE,
    ERROR_STARTUP_DATA,
    MessageDataError,
    MessageTooLargeError,
    MessageTypeError,
    ReplyFormatError,
    StartupDataError,
)
from iservice.wire.msg import (
    MAX_MESSAGE_SIZE,
    MESSAGE_SIZES,
    decode_ack,
    decode_message,
    encode_ack,
    encode_message,
    peek_message_id,
)
from iservice.wire.startup import (
    FUNC_EMPTY,
    FUNC_ENDS_AT_OPTIONS,
    FUNC_ENDS_AT_WORKDIR,
    FUNC_NOT_TERMINATED,
    FUNC_NOT_UTF16,
    FUNC_ODD_LENGTH,
    FUNC_TOO_LONG,
    MAX_STARTUP_UNITS,
    decode_reply,
    decode_startup,
    encode_reply,
    encode_startup,
)

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STARTUP_FUNCS = {
    FUNC_EMPTY,
    FUNC_ODD_LENGTH,
    FUNC_TOO_LONG,
    FUNC_NOT_TERMINATED,
    FUNC_ENDS_AT_WORKDIR,
    FUNC_ENDS_AT_OPTIONS,
    FUNC_NOT_UTF16,
}


def odd_tail(raw: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Sometimes one stray byte at the end."""
    return st.tuples(raw, st.sampled_from([b"", b"", b"", b"\x00", b"\xd8"])).map(
        lambda p: p[0] + p[1]
    )


# --------------------------------------------------------------------------- startup

_UNITS = [0x0000, 0x0000, 0x0041, 0x002F, 0x00E9, 0xD83D, 0xDE00, 0xD800, 0xDFFF, 0xFFFF, 0x0100]
utf16_soup = odd_tail(
    st.one_of(
        st.lists(st.sampled_from(_UNITS), max_size=40),
        # Around the 4096-unit cap.
        st.integers(MAX_STARTUP_UNITS - 4, MAX_STARTUP_UNITS + 2).flatmap(
            lambda n: st.lists(st.sampled_from(_UNITS), min_size=3, max_size=3).map(
                lambda tail: [0x41] * (n - 3) + tail
            )
        ),
    ).map(lambda units: struct.pack(f"<{len(units)}H", *units))
)


@FUZZ
@given(st.one_of(st.binary(max_size=2 * MAX_STARTUP_UNITS + 4), utf16_soup))
def test_decode_startup_raises_only_startup_data_error(raw: bytes) -> None:
    try:
        data = decode_startup(raw)
    except StartupDataError as e:
        assert e.func in STARTUP_FUNCS
        assert e.code == ERROR_STARTUP_DATA and e.message == ""
        return
    assert len(raw) % 2 == 0 and len(raw) <= 2 * MAX_STARTUP_UNITS
    assert decode_startup(encode_startup(data)) == data


# --------------------------------------------------------------------------- replies

_TOKENS = ["0x00000000", "0x20000001", "0x0000022A", "0x1a2c", "0x0000zz00", "\n", "\n", "\r\n",
           "Process ID", "func", "\0", "\ud800", "\udc00", "é", "\U0001f600", " "]  # fmt: skip
reply_soup = odd_tail(
    st.lists(st.sampled_from(_TOKENS), max_size=12).map(
        lambda ts: "".join(ts).encode("utf-16-le", "surrogatepass")
    )
)


@FUZZ
@given(st.one_of(st.binary(max_size=300), reply_soup))
def test_decode_reply_raises_only_reply_format_error(raw: bytes) -> None:
    try:
        reply = decode_reply(raw)
    except ReplyFormatError:
        return
    assert decode_reply(encode_reply(reply)) == reply


# --------------------------------------------------------------------------- openvpn-msg

int32 = st.integers(-(2**31), 2**31 - 1)
_LENGTHS = sorted({*MESSAGE_SIZES.values(), 0, 16, 23, 24, 32, MAX_MESSAGE_SIZE + 1, 4096})
# Offsets where a field starts in some message type (families, counts, names, flags).
_OFFSETS = [24, 28, 44, 48, 52, 64, 68, 284, 288, 324, 332, 668, 796, 800, 804, 1180, 1692]
_VALUES = [0, 1, 2, 4, 5, 23, 0x2F, 0x41, 0x80, 0xC3, 0xED, 0xFF]
_KNOWN = st.sampled_from(sorted(MESSAGE_SIZES))
_FAMILY_AT = {1: 24, 2: 24, 3: 24, 4: 24, 5: 796, 6: 796, 11: 24, 17: 284}


@st.composite
def near_messages(draw: st.DrawFn) -> bytes:
    """A consistent-looking header over a sparse body with pokes at field offsets."""
    # Mostly a known type at its own size, so that decoding reaches the fields.
    mtype = draw(st.one_of(_KNOWN, _KNOWN, _KNOWN, st.integers(0, 21), st.integers(0, 2**32 - 1)))
    own = st.just(MESSAGE_SIZES.get(mtype, 288))  # type: ignore[call-overload]
    length = draw(st.one_of(own, own, own, st.sampled_from(_LENGTHS), st.integers(0, 1704)))
    size = draw(st.one_of(st.just(length), st.just(length), st.integers(0, 2**64 - 1)))
    buf = bytearray(max(length, 24))
    struct.pack_into("<IxxxxQi", buf, 0, mtype, size, draw(int32))
    del buf[length:]
    family_at = _FAMILY_AT.get(mtype)
    if family_at is not None and family_at + 2 <= length and draw(st.booleans()):
        struct.pack_into("<h", buf, family_at, draw(st.sampled_from([2, 23])))
    if length > 24:
        offsets = st.one_of(st.sampled_from(_OFFSETS), st.integers(24, length - 1))
        for off, value in draw(st.lists(st.tuples(offsets, st.sampled_from(_VALUES)), max_size=8)):
            if off < length:
                buf[off] = value
        for start, n, value in draw(
            st.lists(st.tuples(offsets, st.integers(1, 600), st.sampled_from(_VALUES)), max_size=2)
        ):
            buf[start : start + n] = bytes([value]) * len(buf[start : start + n])
    return bytes(buf)


@FUZZ
@given(st.one_of(st.binary(max_size=MAX_MESSAGE_SIZE + 8), near_messages()))
def test_decode_message_raises_only_channel_errors(raw: bytes) -> None:
    mid = peek_message_id(raw)
    try:
        message = decode_message(raw)
    except MessageTooLargeError as e:
        assert len(raw) > MAX_MESSAGE_SIZE
        assert e.message_id == -1 and e.error_number == ERROR_MESSAGE_DATA
        return
    except MessageTypeError as e:
        assert e.message_id == mid and e.error_number == ERROR_MESSAGE_TYPE
        return
    except MessageDataError as e:
        assert e.message_id == mid and e.error_number == ERROR_MESSAGE_DATA
        return
    assert len(raw) == MESSAGE_SIZES[message.type]
    assert decode_message(encode_message(message)) == message


@st.composite
def near_acks(draw: st.DrawFn) -> bytes:
    """An ack header with a plausible or random type, size and length."""
    buf = bytearray(40)
    mtype = draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1)))
    size = draw(st.one_of(st.just(32), st.integers(0, 2**64 - 1)))
    struct.pack_into("<IxxxxQi", buf, 0, mtype, size, draw(int32))
    struct.pack_into("<i", buf, 24, draw(int32))
    return bytes(buf[: draw(st.one_of(st.just(32), st.integers(0, 40)))])


@FUZZ
@given(st.one_of(st.binary(max_size=64), near_acks()))
def test_decode_ack_raises_only_message_data_error(raw: bytes) -> None:
    try:
        ack = decode_ack(raw)
    except MessageDataError:
        return
    assert decode_ack(encode_ack(ack)) == ack


@given(st.binary(max_size=64))
def test_peek_message_id_never_raises(raw: bytes) -> None:
    mid = peek_message_id(raw)
    assert mid == -1 if len(raw) < 24 else -(2**31) <= mid < 2**31
