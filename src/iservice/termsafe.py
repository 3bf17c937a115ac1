"""Text from elsewhere, made safe for a terminal (issue 13 item 7).

openvpn's output, what a VPN server sends (``CR_TEXT``, challenge texts, web-login
URLs), session details and profile names reach the user's terminal through ``iservice
log``, ``status``, ``sessions`` and ``connect``.  A control character in them could
move the cursor, rewrite earlier lines, set the window title, or (on some terminals)
answer back into the input; bidirectional-text overrides can make text read other
than it is.  ``safe`` escapes them all, and nothing else: printable text, including
non-ASCII letters, passes unchanged.

* C0 controls (U+0000–U+001F) except TAB, DEL (U+007F) and C1 controls (U+0080–U+009F)
  become ``\\xHH``; with ``keep_newlines`` a ``\\n`` stays (multi-line text), otherwise
  it becomes ``\\x0a`` too.
* Bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), the
  line and paragraph separators (U+2028, U+2029) and lone surrogates become ``\\uHHHH``.

Pure, no imports: the client commands load it at once.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

__all__ = ["print_safe", "safe"]

_TABLE: dict[int, str] = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F,
                                                    *range(0x80, 0xA0)) if c != 0x09}
_TABLE.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A),
                                          0x2028, 0x2029)})
_TABLE_LINES = {c: v for c, v in _TABLE.items() if c != 0x0A}


def safe(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character that could act on a terminal escaped (see above)."""
    out = text.translate(_TABLE_LINES if keep_newlines else _TABLE)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in out):  # rare: only from undecodable bytes
        out = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in out)
    return out


def print_safe(*values: object, sep: str = " ", end: str = "\n", file: IO[str] | None = None,
               flush: bool = False) -> None:
    """``print`` for text from elsewhere: each value made ``safe`` (newlines kept)."""
    text = sep.join(safe(str(v), keep_newlines=True) for v in values)
    print(text, end=end, file=file if file is not None else sys.stdout, flush=flush)
