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

Rate limit per user
-------------------
A user can make the service write a line per request and per channel message
(100,000 refused messages cost the user nothing).  Each uid other than root's has
a token bucket (``set_limits``; the settings ``audit_rate`` lines per second, at most
``audit_burst`` saved up); a line of that uid with no token left is not written
but counted, and once per uid and ``SUMMARY_INTERVAL`` one line says what was left
out::

    event=audit-suppressed uid=<who> count=<lines> events=<event>:<n>,... seconds=<window>

Never limited: lines without a uid (the service's own: start, stop, recovery),
root's (uid 0), and lines at ``ERROR`` or above (the service's errors).  The
bucket logic (``TokenBucket``, ``RateLimiter``) is pure: the time is a parameter.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

__all__ = ["SUMMARY_INTERVAL", "LineFormatter", "RateLimiter", "Summary", "TokenBucket",
           "describe", "flush_suppressed", "format_line", "log", "quote", "record",
           "record_lines", "set_limits", "who"]

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
    """Log one audit line (fields with value None are left out).

    A line whose ``uid`` field is a user's counts against that user's rate limit.
    """
    if not log.isEnabledFor(level):
        return
    uid = fields.get("uid")
    if type(uid) is int and not _admit(level, uid, (event,)):
        return
    log.log(level, format_line(event, fields))


def who(**fields: object) -> str:
    """The ``key=value`` pairs that name who asked, for lines built by the caller
    (``format_line(event, {**who_fields, ...})`` = ``f"event={event} {who(...)} ..."``)."""
    return " ".join(f"{k}={quote(v)}" for k, v in fields.items() if v is not None)


def record_lines(level: int, lines: list[str], *, uid: int | None) -> None:
    """Log many audit lines (each made by ``format_line``) of one ``uid`` as one record.

    ``uid`` is whose lines they are (None: the service's own): they count against
    that user's rate limit, and lines over it (the last ones) are left out and counted.

    ``LineFormatter`` gives every line the record's own prefix (time, level,
    logger), so the output is the same lines as one ``record`` each would give —
    and journald, which splits its input at newlines, stores one entry per line.
    Profiled at 10,000 routes: one ``logging`` record per line was a third of the
    service's channel time (~12 µs a line); one per batch costs ~1 µs a line.
    No line can contain a newline itself: ``quote`` escapes every control character.
    """
    if not lines or not log.isEnabledFor(level):
        return
    if uid:
        allowed = _admit_many(level, uid, lines)
        if allowed < len(lines):
            lines = lines[:allowed]
            if not lines:
                return
    log.log(level, "\n".join(lines))


# -- the rate limit per user (pure parts first) ---------------------------------------

SUMMARY_INTERVAL = 10.0  # seconds: at most one audit-suppressed line per uid in this time


@dataclasses.dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; ``stamp`` = time of ``tokens``."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, n: int, now: float) -> int:
        """Take up to ``n`` whole tokens at time ``now``; how many were taken."""
        if now > self.stamp:  # a clock that goes back adds nothing
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        # (the epsilon: a user who keeps to the rate exactly must never lose a line to
        # rounding, e.g. 0.1 s * 10/s = 0.9999999999999998 tokens)
        taken = min(n, int(self.tokens + 1e-9))
        self.tokens -= taken
        return taken

    def full(self, now: float) -> bool:
        return self.tokens + max(0.0, now - self.stamp) * self.rate >= self.burst


@dataclasses.dataclass(frozen=True)
class Summary:
    """What was left out of one uid's lines in one window."""

    uid: int
    count: int
    events: tuple[tuple[str, int], ...]  # (event, lines), most first
    seconds: float  # from the first line left out to the summary

    def line(self) -> str:
        events = ",".join(f"{name}:{n}" for name, n in self.events)
        return format_line("audit-suppressed", {"uid": self.uid, "count": self.count,
                                                 "events": events,
                                                 "seconds": round(self.seconds, 1)})


@dataclasses.dataclass
class _Window:
    since: float
    events: collections.Counter[str]


class RateLimiter:
    """Token buckets per uid and the count of what each left out (no I/O, no clock)."""

    def __init__(self, rate: float, burst: int, interval: float = SUMMARY_INTERVAL) -> None:
        if not (rate > 0 and burst >= 1 and interval > 0):
            raise ValueError("rate, burst and interval must be positive")
        self.rate, self.burst, self.interval = rate, burst, interval
        self.buckets: dict[int, TokenBucket] = {}
        self.windows: dict[int, _Window] = {}
        self.next_due = float("inf")  # earliest time a summary is due

    def allow(self, uid: int, n: int, now: float) -> int:
        """How many of ``n`` lines of ``uid`` may be written now (the first ones)."""
        bucket = self.buckets.get(uid)
        if bucket is None:
            bucket = self.buckets[uid] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(n, now)

    def left_out(self, uid: int, events: Iterable[str] | collections.Counter[str],
                 now: float) -> bool:
        """Count lines of ``uid`` that were not written (their events, or a Counter of
        them); True if this opened a window."""
        window = self.windows.get(uid)
        opened = window is None
        if window is None:
            window = self.windows[uid] = _Window(now, collections.Counter())
            self.next_due = min(self.next_due, now + self.interval)
        window.events.update(events)
        return opened

    def due(self, now: float, *, every: bool = False) -> list[Summary]:
        """The summaries whose window is over (``every``: all of them), oldest first;
        forgets the buckets that are full again (nothing to remember for them)."""
        out: list[Summary] = []
        if every or now >= self.next_due:
            for uid, window in sorted(self.windows.items(), key=lambda kv: kv[1].since):
                if every or now >= window.since + self.interval:
                    events = tuple(sorted(window.events.items(), key=lambda kv: (-kv[1], kv[0])))
                    out.append(Summary(uid, sum(window.events.values()), events,
                                       max(0.0, now - window.since)))
            for s in out:
                del self.windows[s.uid]
            self.next_due = min((w.since + self.interval for w in self.windows.values()),
                                default=float("inf"))
        # Called at most once per window and at stop, so this walk costs nothing on the
        # hot path; without it a bucket would stay for every uid that ever logged.
        for uid in [u for u, b in self.buckets.items() if u not in self.windows and b.full(now)]:
            del self.buckets[uid]
        return out


# -- the limiter of this process ---------------------------------------------------------

_limiter: RateLimiter | None = None  # None: no limit (set by the service at start)
_clock: Callable[[], float] = time.monotonic
_lock = threading.Lock()  # record() may be called from more than one thread


def set_limits(limiter: RateLimiter | None, *,
               clock: Callable[[], float] = time.monotonic) -> None:
    """Limit every user's audit lines with ``limiter`` (None: no limit), reading the
    time from ``clock``.  What the previous limiter left out is summarized first."""
    global _limiter, _clock
    flush_suppressed()
    with _lock:
        _limiter, _clock = limiter, clock


def flush_suppressed(*, every: bool = True) -> None:
    """Write the summary lines that are due (``every``: all, as at the service's stop)."""
    with _lock:
        if _limiter is None:
            return
        summaries = _limiter.due(_clock(), every=every)
    for s in summaries:
        log.warning(s.line())


def _event_of(line: str) -> str:
    if line.startswith("event="):
        end = line.find(" ")
        return line[6:] if end < 0 else line[6:end]
    return "unknown"


def _events(lines: list[str]) -> collections.Counter[str]:
    """The events of ``lines``, counted.  A batch is mostly of one event (a session's
    applied or failed lines): that is checked in C (``str.startswith`` by ``map``),
    ~4x faster than taking each line's event apart."""
    first = _event_of(lines[0])
    prefix = f"event={first} "
    if all(map(str.startswith, lines, itertools.repeat(prefix))):
        return collections.Counter({first: len(lines)})
    return collections.Counter(map(_event_of, lines))


def _admit(level: int, uid: int, events: tuple[str]) -> bool:
    """One line of ``uid``: may it be written?  (Counted when it may not.)"""
    limiter = _limiter
    if limiter is None or uid == 0 or level >= logging.ERROR:
        return True
    with _lock:
        now = _clock()
        allowed = limiter.allow(uid, 1, now)
        opened = not allowed and limiter.left_out(uid, events, now)
        due = now >= limiter.next_due
    if opened:
        _remind(limiter.interval)
    if due:
        flush_suppressed(every=False)
    return allowed == 1


def _admit_many(level: int, uid: int, lines: list[str]) -> int:
    """How many of ``lines`` (the first ones) may be written; the rest are counted."""
    limiter = _limiter
    if limiter is None or level >= logging.ERROR:
        return len(lines)
    with _lock:
        now = _clock()
        allowed = limiter.allow(uid, len(lines), now)
        opened = allowed < len(lines) and limiter.left_out(uid, _events(lines[allowed:]), now)
        due = now >= limiter.next_due
    if opened:
        _remind(limiter.interval)
    if due:
        flush_suppressed(every=False)
    return allowed


def _remind(interval: float) -> None:
    """Make sure the summary of a window just opened is written even if no audit line
    follows: a timer on the running event loop (without one, the next line writes it)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    # A little late on purpose: the loop may run a timer a clock tick early, and the
    # window must be over when it runs.
    loop.call_later(interval + 0.1, functools.partial(flush_suppressed, every=False))


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
