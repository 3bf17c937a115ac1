"""Split an options string the way Windows ``CommandLineToArgvW`` does, and quote back.

The original service validates the client's options with ``CommandLineToArgvW``;
SPEC §3 requires the same string to mean the same argv here.  Python's ``shlex``
follows POSIX shell rules and would disagree on backslashes and quotes.

Rules implemented (those of ``CommandLineToArgvW`` for the arguments *after* the
program name):

* Arguments are separated by runs of blanks outside quotes.  Blanks are SPACE
  and TAB only: CR, LF, VT, FF and every other character are ordinary argument
  text (Microsoft: "whitespace characters, which are either spaces or tabs";
  Wine's conformance test ``three\\tfour\\rfour\\nfour`` gives ``three``,
  ``four\\rfour\\nfour`` on real Windows).  Leading and trailing blanks make no
  argument.
* ``2n`` backslashes followed by ``"`` give ``n`` backslashes, and the quote
  is a quoting delimiter (not copied).
* ``2n+1`` backslashes followed by ``"`` give ``n`` backslashes and a literal
  ``"``; the quote does not change the quoting state.
* Backslashes not followed by ``"`` are copied literally.
* A quoting delimiter opens a quoted section (blanks are argument text), and
  closes it.  An argument may mix quoted and unquoted parts (``a"b c"d`` is
  ``ab cd``), and ``""`` is an empty argument.
* Runs of consecutive quotes (the "undocumented" rule): counting the opening
  quote of the current quoted section as the first, every *third* quote is a
  literal ``"``; a run that leaves the count at 2 closes the section.  So,
  inside quotes, ``""`` gives a literal ``"`` **and closes the quoted section**,
  while three quotes give a literal ``"`` and stay quoted.  Outside quotes,
  ``""`` is nothing and three quotes are one literal quote.
* A quoted section left open at the end simply ends the last argument.

Which doubled-quote variant, and why
------------------------------------
Two behaviours exist for ``""`` inside a quoted section:

* the C runtime's ``argv`` parser since msvcr90 (VS 2008) and in the UCRT --
  the table in Microsoft's "Parsing C++ command-line arguments" -- emits a
  literal ``"`` and STAYS in quote mode: ``a"b"" c d`` -> ``ab" c d``;
* ``CommandLineToArgvW`` (shell32) and the pre-2008 CRT emit a literal ``"``
  and LEAVE quote mode: ``a"b"" c d`` -> ``ab"``, ``c``, ``d``.

This module implements the second: ``CommandLineToArgvW`` is what the original
service validates with (reference notes §1-2), and its behaviour is pinned by
Wine's ``shell32`` conformance tests, which run against real Windows (e.g.
``exe "two"" next`` -> ``two"``, ``next``).  The Microsoft table therefore
differs from us on its last row only; tests/unit/test_argv.py records both.

On Windows the original validated one split and openvpn.exe's CRT performed
the other, so a string using ``""`` inside quotes could mean two different argv.
iservice has no such gap: the argv it validates is the argv it passes to
``execve``.  ``quote_argv`` never produces doubled quotes (every literal quote
is backslash-escaped), so its output means the same argv under both variants.

Program name
------------
Windows parses the *first* token with program-name rules (it ends at the next
space, or at the second quote if it begins with one; backslashes are not
special), and returns the executable's own path with argc = 1 for an empty
string.  The service's options string has no program name -- its first token
is already the first option, and nothing is prepended before splitting -- so
every token here is parsed with the argument rules, and an empty or blank
string gives ``[]`` (the validator refuses "no options").
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["quote_argv", "split_command_line"]

_BLANKS = frozenset(" \t")
_MUST_QUOTE = frozenset(' \t"')


def split_command_line(cmdline: str) -> list[str]:
    """Split ``cmdline`` into arguments with ``CommandLineToArgvW`` rules (see module doc).

    Total: any ``str`` gives a list, nothing raises.
    """
    args: list[str] = []
    n = len(cmdline)
    i = 0
    while True:
        while i < n and cmdline[i] in _BLANKS:
            i += 1
        if i >= n:
            return args
        out: list[str] = []
        quotes = 0  # 0 = outside quotes, 1 = inside; 2 only transiently in a run
        while i < n:
            c = cmdline[i]
            if c in _BLANKS and quotes == 0:
                break
            if c == "\\":
                j = i
                while j < n and cmdline[j] == "\\":
                    j += 1
                count = j - i
                if j < n and cmdline[j] == '"':
                    out.append("\\" * (count // 2))
                    if count % 2:
                        out.append('"')  # escaped: literal, quoting state unchanged
                    else:
                        quotes += 1
                    i, quotes = _quote_run(cmdline, j + 1, quotes, out)
                else:
                    out.append("\\" * count)
                    i = j
            elif c == '"':
                i, quotes = _quote_run(cmdline, i + 1, quotes + 1, out)
            else:
                out.append(c)
                i += 1
        args.append("".join(out))


def _quote_run(cmdline: str, i: int, quotes: int, out: list[str]) -> tuple[int, int]:
    """Consume the quotes that directly follow the one just handled.

    ``quotes`` already counts the opening quote (if inside a quoted section)
    and the quote just handled.  Every third quote is a literal one; a count of
    2 at the end of the run closes the quoted section.
    """
    n = len(cmdline)
    while i < n and cmdline[i] == '"':
        quotes += 1
        if quotes == 3:
            out.append('"')
            quotes = 0
        i += 1
    if quotes == 2:
        quotes = 0
    return i, quotes


def _quote_one(arg: str) -> str:
    if arg and not any(c in _MUST_QUOTE for c in arg):
        # Backslashes here are never followed by a quote, so they stay literal.
        return arg
    parts = ['"']
    backslashes = 0
    for c in arg:
        if c == "\\":
            backslashes += 1
            continue
        if c == '"':
            # Double the backslashes and escape the quote: never a doubled quote,
            # so both doubled-quote variants read it the same way.
            parts.append("\\" * (2 * backslashes + 1) + '"')
        else:
            parts.append("\\" * backslashes + c)
        backslashes = 0
    # Trailing backslashes precede the closing quote: double them.
    parts.append("\\" * (2 * backslashes) + '"')
    return "".join(parts)


def quote_argv(argv: Sequence[str]) -> str:
    """Join ``argv`` into one string that ``split_command_line`` turns back into ``argv``.

    An argument is left bare when it is non-empty and has no blank or quote;
    otherwise it is wrapped in quotes with literal quotes backslash-escaped.
    Raises ``ValueError`` for an argument containing NUL (it could not travel in
    the NUL-separated startup message).
    """
    for arg in argv:
        if "\x00" in arg:
            raise ValueError("an argument contains NUL")
    return " ".join(_quote_one(arg) for arg in argv)
