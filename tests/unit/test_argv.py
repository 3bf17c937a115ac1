"""CommandLineToArgvW splitting (iservice.policy.argv).

Expected values come from Microsoft's "Parsing C++ command-line arguments" table
and from Wine's shell32 conformance table for CommandLineToArgvW (which runs
against real Windows), with the program name removed: our options string has none.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.policy.argv import quote_argv, split_command_line

BS = "\\"
Q = '"'

CASES: list[tuple[str, list[str]]] = [
    # --- Microsoft's table (rows 1-4 agree with every parser variant) ---
    ('"abc" d e', ["abc", "d", "e"]),
    (r'a\\b d"e f"g h', [r"a\\b", "de fg", "h"]),
    (r'a\\\"b c d', [r"a\"b", "c", "d"]),
    (r'a\\\\"b c" d e', [r"a\\b c", "d", "e"]),
    # Row 5: the CRT (msvcr90+/UCRT) gives ['ab" c d']; CommandLineToArgvW leaves
    # quote mode after "" inside quotes (module doc), so:
    ('a"b"" c d', ['ab"', "c", "d"]),
    # --- basics ---
    ("", []),
    ("   \t  ", []),
    ("a", ["a"]),
    ("  a  b  ", ["a", "b"]),
    ("a\tb", ["a", "b"]),
    ("--config client.ovpn", ["--config", "client.ovpn"]),
    ('--config "my client.ovpn" --verb 3', ["--config", "my client.ovpn", "--verb", "3"]),
    # Only space and tab separate: CR, LF, VT, FF are argument text.
    ("three\tfour\rfour\nfour", ["three", "four\rfour\nfour"]),
    ("a\x0bb\x0cc", ["a\x0bb\x0cc"]),
    ("a\u00a0b", ["a\u00a0b"]),
    # cmd metacharacters and variables mean nothing
    ('"one^" "arg"&two three|four', ["one^", "arg&two", "three|four"]),
    ("%TMPDIR% %2 $HOME 'x y'", ["%TMPDIR%", "%2", "$HOME", "'x", "y'"]),
    ('arg"one" "second"arg thirdarg ', ["argone", "secondarg", "thirdarg"]),
    # unclosed quotes keep what was read
    ('arg1 "unclosed', ["arg1", "unclosed"]),
    ('arg1 "', ["arg1", ""]),
    ('""', [""]),
    ('"" ""', ["", ""]),
    ('a "" b', ["a", "", "b"]),
    # backslashes not followed by a quote are literal
    (r"o\ne t\\wo t\\\ree f\\\\our ", [r"o\ne", r"t\\wo", r"t\\\ree", r"f\\\\our"]),
    (r'"o\ne" "t\\wo" "t\\\ree" "f\\\\our" ', [r"o\ne", r"t\\wo", r"t\\\ree", r"f\\\\our"]),
    (r"C:\Program Files\OpenVPN\config", [r"C:\Program", r"Files\OpenVPN\config"]),
    (r'"C:\Program Files\OpenVPN\config\\"', [r"C:\Program Files\OpenVPN\config" + BS]),
    ("trailing" + BS, ["trailing" + BS]),
    # before a quote: halved, remainder escapes
    (r'\"one \\"two" \\\"three \\\\"four" end', ['"one', r"\two", r"\"three", r"\\four", "end"]),
    (
        r'"one\" still" "two\\" "three\\\" still" "four\\\\" end',
        ['one" still', "two" + BS, r'three\" still', "four" + BS * 2, "end"],
    ),
    # consecutive quotes outside quotes: 3n -> n, 3n+1 -> n and open, 3n+2 -> n
    ('two""quotes next', ["twoquotes", "next"]),
    ('three"""quotes next', ['three"quotes', "next"]),
    ('four"""" quotes" next 4%3=1', ['four" quotes', "next", "4%3=1"]),
    ('five"""""quotes next', ['five"quotes', "next"]),
    ('six""""""quotes next', ['six""quotes', "next"]),
    ('seven""""""" quotes" next 7%3=1', ['seven"" quotes', "next", "7%3=1"]),
    ('twelve""""""""""""quotes next', ['twelve""""quotes', "next"]),
    # inside quotes the opening quote counts: "" -> literal and close
    ('"two""quotes next', ['two"quotes', "next"]),
    ('"two"" next', ['two"', "next"]),
    ('"three""" quotes" next 4%3=1', ['three" quotes', "next", "4%3=1"]),
    ('"four""""quotes next', ['four"quotes', "next"]),
    ('"five"""""quotes next', ['five""quotes', "next"]),
    ('"six"""""" quotes" next 7%3=1', ['six"" quotes', "next", "7%3=1"]),
    ('"eleven"""""""""""quotes next', ['eleven""""quotes', "next"]),
    # escaped consecutive quotes
    (r'"the crazy \\"""\\" quotes', [r'the crazy \"' + BS, "quotes"]),
    # an escaped quote inside quotes does not close them
    (r'"a\"b c"', ['a"b c']),
    # tokens that try to look like options
    ('"--co""nfig" x', ['--co"nfig x']),  # the last quote reopens
    ('--co""nfig x', ["--config", "x"]),
    ('--setenv "opt" up', ["--setenv", "opt", "up"]),
    # program-name rules are NOT applied to the first token
    (r'\"exe "arg one"', ['"exe', "arg one"]),
    ('"spaced exe" "next arg"', ["spaced exe", "next arg"]),
    ('"exe"arg" one" argtwo', ["exearg one", "argtwo"]),
    ('exe"file"path arg1', ["exefilepath", "arg1"]),
]


@pytest.mark.parametrize(("cmdline", "expected"), CASES, ids=[repr(c) for c, _ in CASES])
def test_split_table(cmdline: str, expected: list[str]) -> None:
    assert split_command_line(cmdline) == expected


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize(("cmdline", "expected"), CASES, ids=[repr(c) for c, _ in CASES])
def test_quote_inverts_table(cmdline: str, expected: list[str]) -> None:
    assert split_command_line(quote_argv(expected)) == expected


@pytest.mark.parametrize(
    ("argv", "quoted"),
    [
        ([], ""),
        (["a", "b"], "a b"),
        ([""], '""'),
        (["a b"], '"a b"'),
        (['a"b'], r'"a\"b"'),
        ([r"a\b"], r"a\b"),
        ([r"a b\\"], r'"a b\\\\"'),
        ([r'\"'], r'"\\\""'),
        (["--config", r"C:\Program Files\x.ovpn"], r'--config "C:\Program Files\x.ovpn"'),
    ],
)
def test_quote_exact(argv: list[str], quoted: str) -> None:
    assert quote_argv(argv) == quoted
    assert split_command_line(quoted) == argv


def _crt_split(cmdline: str) -> list[str]:
    """The CRT's documented variant (msvcr90+/UCRT): "" inside quotes stays quoted.

    A test oracle only: quote_argv output must mean the same argv to it.
    """
    args: list[str] = []
    i, n = 0, len(cmdline)
    while True:
        while i < n and cmdline[i] in " \t":
            i += 1
        if i >= n:
            return args
        out: list[str] = []
        quoted = False
        while i < n and (quoted or cmdline[i] not in " \t"):
            if cmdline[i] == BS:
                j = i
                while j < n and cmdline[j] == BS:
                    j += 1
                if j < n and cmdline[j] == Q:
                    out.append(BS * ((j - i) // 2))
                    if (j - i) % 2:
                        out.append(Q)
                    else:
                        quoted = not quoted
                    i = j + 1
                else:
                    out.append(BS * (j - i))
                    i = j
            elif cmdline[i] == Q:
                if quoted and i + 1 < n and cmdline[i + 1] == Q:
                    out.append(Q)
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            else:
                out.append(cmdline[i])
                i += 1
        args.append("".join(out))


def test_crt_oracle_matches_microsoft_table() -> None:
    assert _crt_split('a"b"" c d') == ['ab" c d']
    for cmdline, expected in CASES[:4]:
        assert _crt_split(cmdline) == expected


def test_variants_differ_only_on_doubled_quotes() -> None:
    assert split_command_line('"two"" next') == ['two"', "next"]
    assert _crt_split('"two"" next') == ['two" next']


def test_quote_refuses_nul() -> None:
    with pytest.raises(ValueError):
        quote_argv(["a\x00b"])


_TEXT = st.text(alphabet=st.sampled_from(' \t"\\ab\n-'), max_size=40)
_ANY = st.text(max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_TEXT, _ANY).filter(lambda s: "\x00" not in s), max_size=8))
def test_split_inverts_quote(argv: list[str]) -> None:
    quoted = quote_argv(argv)
    assert split_command_line(quoted) == argv
    # quote_argv output means the same argv to the CRT variant as well
    assert _crt_split(quoted) == argv


@settings(max_examples=400, deadline=None)
@given(st.one_of(_TEXT, _ANY))
def test_split_is_total(cmdline: str) -> None:
    result = split_command_line(cmdline)
    assert isinstance(result, list)
    assert all(isinstance(arg, str) for arg in result)
    # Arguments never contain more characters than the input had.
    assert sum(map(len, result)) <= len(cmdline)


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_split_is_stable_under_requoting(cmdline: str) -> None:
    argv = split_command_line(cmdline)
    assert split_command_line(quote_argv(argv)) == argv
