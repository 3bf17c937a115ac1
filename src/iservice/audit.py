"""The audit trail: one structured line per request and per decision.

Every line goes to the ``iservice.audit`` logger (stderr, the journal under
systemd) as ``key=value`` pairs, always in this order::

    event=<what happened> uid=<who> client_pid=<their process> conn=<n>
    [session=<id>] [pid=<openvpn>] [what=<the request>] [verdict=<decision>]
    [reason=<why>] [more=...]

so ``grep 'verdict=applied' | grep 'dst=10.9.0.0/16'`` answers "who changed
this route, and when" (the log's own timestamp says when).  Verdicts:

* startup requests: ``allowed`` (openvpn started) or ``refused`` (the reply's
  code, func and message are in ``code``/``reason``);
* connections over a limit: ``refused`` with ``event=too-many-clients``;
* channel messages: ``applied``, ``failed`` (the kernel refused; ``error``),
  ``denied`` (the request policy refused) or ``malformed`` (the codec refused).

Values are written bare when they are plain tokens and otherwise as JSON
strings with every non-ASCII and control character escaped, so text a user
chose (options, paths, interface names) can never start a new line, fake a
``key=`` or hide behind terminal escapes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = ["LineFormatter", "describe", "format_line", "log", "quote", "record",
           "record_lines", "who"]

log = logging.getLogger("iservice.audit")

_BARE = re.compile(r"[A-Za-z0-9_.,:/@+%-]{1,200}")
_MAX_TEXT = 512  # longest field shown (a domains list is 512 bytes on the wire)


def quote(value: object) -> str:
    """A value as it appears after ``key=``: bare token or escaped JSON string."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text \
            and len(text) <= 4 * _MAX_TEXT:
        return f'"{text}"'  # what json.dumps gives, ~4x faster (a line per route)
    if len(text) > 4 * _MAX_TEXT:
        text = text[: 4 * _MAX_TEXT] + "…"
    return json.dumps(text, ensure_ascii=True)


def format_line(event: str, fields: dict[str, object]) -> str:
    parts = [f"event={quote(event)}"]
    parts += [f"{k}={quote(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def record(level: int, event: str, **fields: object) -> None:
    """Log one audit line (fields with value None are left out)."""
    if log.isEnabledFor(level):
        log.log(level, format_line(event, fields))


def who(**fields: object) -> str:
    """The ``key=value`` pairs that name who asked, for lines built by the caller
    (``format_line(event, {**who_fields, ...})`` = ``f"event={event} {who(...)} ..."``)."""
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items() if v is not None)


def record_lines(level: int, lines: list[str]) -> None:
    """Log many audit lines (each made by ``format_line``) as one record.

    ``LineFormatter`` gives every line the record's own prefix (time, level,
    logger), so the output is the same lines as one ``record`` each would give —
    and journald, which splits its input at newlines, stores one entry per line.
    Profiled at 10,000 routes: one ``logging`` record per line was a third of the
    service's channel time (~12 µs a line); one per batch costs ~1 µs a line.
    No line can contain a newline itself: ``quote`` escapes every control character.
    """
    if lines and log.isEnabledFor(level):
        log.log(level, "\n".join(lines))


class LineFormatter(logging.Formatter):
    """A formatter that repeats the prefix (time, level, logger) on every line of a
    multi-line message, so each audit line stands alone (``record_lines``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if "\n" not in message:
            return super().format(record)
        record.message = ""
        record.asctime = self.formatTime(record, self.datefmt)
        head = self.formatMessage(record)
        text = "\n".join(head + line for line in message.split("\n"))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        return text


def _short(value: object) -> str:
    if isinstance(value, IPv4Address | IPv6Address | IPv4Network | IPv6Network):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if {f.name for f in dataclasses.fields(value)} == {"index", "name"}:
            return f"{value.index}/{value.name}"  # type: ignore[attr-defined]
        return describe(value)
    if isinstance(value, tuple | list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    text = str(value)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def describe(obj: object) -> str:
    """A channel message or a decided operation as ``name field=value ...``.

    Generic over the frozen dataclasses of ``wire.msg`` and ``policy.requests``,
    so a new message type or operation is described without a change here.  A class
    with an ``audit_text()`` method (routes: thousands per session) describes itself
    faster; for routes that text is the generic one (tests/unit/test_audit.py).
    """
    fast = getattr(obj, "audit_text", None)
    if fast is not None:
        return str(fast())
    return generic_describe(obj)


def generic_describe(obj: object) -> str:
    """``describe`` by reflection alone (what an ``audit_text`` method must match)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return _short(obj)
    kind = getattr(obj, "type", None)
    name = kind.name.lower() if kind is not None and hasattr(kind, "name") \
        else _snake(type(obj).__name__)
    return " ".join([name, *_fields(obj)])


@functools.cache
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls)
                      if f.name not in ("type", "message_id") and f.repr)
        _FIELD_NAMES[cls] = names
    return names


def _fields(obj: object) -> list[str]:
    parts = []
    for name in _field_names(type(obj)):
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, str | int | IPv4Address | IPv6Address | IPv4Network | IPv6Network):
            parts.append(f"{name}={_short(value)}")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type) and \
                _field_names(type(value)) != ("index", "name"):
            parts += _fields(value)  # a key: its fields inline
        else:
            parts.append(f"{name}={_short(value)}")
    return parts
