"""Terminal safety (termsafe.safe): nothing that can act on a terminal survives, printable
text passes unchanged, and the escapes say what was there."""

from __future__ import annotations

import io
import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iservice import cli
from iservice.termsafe import print_safe, safe

DANGEROUS = {*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F),
             *range(0x2066, 0x206A), 0x2028, 0x2029}


def acts_on_terminal(ch: str) -> bool:
    return (ord(ch) in DANGEROUS and ch != "\t") or unicodedata.category(ch) == "Cs"


@given(st.text())
def test_nothing_dangerous_survives(text: str) -> None:
    out = safe(text)
    assert not any(acts_on_terminal(c) for c in out)
    lines = safe(text, keep_newlines=True)
    assert not any(acts_on_terminal(c) for c in lines if c != "\n")
    assert lines.count("\n") == text.count("\n")


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs"),
                             blacklist_characters="".join(map(chr, DANGEROUS)))))
def test_printable_text_is_unchanged(text: str) -> None:
    assert safe(text) == text


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
    ("a\rb", "a\\x0db"), ("tab\tok", "tab\tok"), ("\u202eevil", "\\u202eevil"),
    ("\x9b31m", "\\x9b31m"), ("caf\u00e9 \u6771\u4eac", "caf\u00e9 \u6771\u4eac"),
    ("lone \udcff", "lone \\udcff"), ("x\ny", "x\\x0ay"),
])
def test_examples(raw: str, shown: str) -> None:
    assert safe(raw) == shown


def test_print_safe_keeps_lines() -> None:
    buf = io.StringIO()
    print_safe("one\x1b[1m", "two\nthree", file=buf)
    assert buf.getvalue() == "one\\x1b[1m two\nthree\n"


def test_session_table_is_escaped() -> None:
    from iservice.wire.control import SessionInfo
    s = SessionInfo(name="w-1", id=1, user="u", uid=1, profile="w\x1b]0;x\x07", config=None,
                    state="CONNECTED", detail="\x1b[2J")
    buf = io.StringIO()
    print_safe(cli.format_sessions([s], show_user=False), file=buf)
    print_safe(cli.format_status(s), file=buf)
    assert "\x1b" not in buf.getvalue() and "\\x1b]0;x\\x07" in buf.getvalue()


# -- --json errors -----------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(("argv", "status", "code"), [
    (("sessions", "--json"), 3, "unavailable"),
    (("profiles", "--json"), 3, "unavailable"),
    (("status", "x" * 300, "--json"), 2, "bad-request"),
    (("import", "/x.ovpn", "--json"), 3, "unavailable"),
    (("remove", "x", "--json"), 3, "unavailable"),
    (("sessions", "--json", "--no-such-flag"), 2, "usage"),
])
def test_json_errors(capsys: pytest.CaptureFixture[str], tmp_path: object,
                     argv: tuple[str, ...], status: int, code: str) -> None:
    got, out, err = run_cli(capsys, *argv, "--socket", f"{tmp_path}/service")
    assert got == status
    obj = json.loads(out)
    assert obj["code"] == code and obj["message"] and set(obj) == {"code", "message"}
    assert err == ""


def test_without_json_errors_go_to_stderr(capsys: pytest.CaptureFixture[str],
                                          tmp_path: object) -> None:
    got, out, err = run_cli(capsys, "sessions", "--socket", f"{tmp_path}/service")
    assert got == 3 and out == "" and "iservice sessions: cannot connect" in err
