"""openvpn's forwarded environments on one session's channel (sans-IO).

The plugin (and the ``iservice-hook`` script) forward openvpn's environment at
``up``, ``route-up``, ``route-pre-down`` and ``down`` as ``ISERVICE_ENV`` pieces
(``wire.msg``) and wait for one answer.  ``EnvStream`` puts the pieces together, has
the producer (``produce.py``) make the requests, hands them to the session one by one
(``next``), to be decided, journaled and applied exactly like requests read from the
channel, counts how they went (``Reply``) and makes the one answer,
``ISERVICE_ENV_RESULT``, when the last of them has been settled.

The rules (docs/architecture.md, "The channel's extension messages"):

* A piece flagged ``ENV_FIRST`` starts an environment (its message_id and event); one
  still being put together is dropped and answered ``ERROR_MESSAGE_DATA``.
* A piece without it must continue the environment being put together (same id and
  event), else it is answered on its own with an ack ``ERROR_MESSAGE_DATA``.
* More than ``max_bytes`` in all: the environment is dropped and answered
  ``ERROR_NOT_ENOUGH_QUOTA`` at once; its later pieces are dropped without an answer.
* ``ENV_LAST``: the requests are made (with the facts as they are now: the session
  reads openvpn's pending output first), or, for a malformed environment, nothing is
  made and it is answered ``ERROR_MESSAGE_DATA``.

No I/O here: ``context`` (what the session knows, the facts) and ``log`` (the audit
trail) are the session's functions.  Every environment gets exactly one answer;
memory is bounded by ``max_bytes`` plus what the producer makes of it.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable
from typing import Protocol

from iservice import errors
from iservice.policy.requests import RouteRun
from iservice.produce import (
    EXIT_SIGNALS,
    Context,
    EnvError,
    Produced,
    parse_env,
    produce,
    signal_of,
    takes_down,
)
from iservice.wire import msg as m


class Reply(Protocol):
    """The answer to settled requests: their error number in (for ``count`` requests
    settled together, ``refused`` of them refused and ``error`` the first refusal's),
    the bytes to send out (b"" for the requests made from an environment, the result
    for its end)."""

    def __call__(self, error: int, count: int = 1, refused: int | None = None) -> bytes: ...


# What to put in the batch for a request answered at once: (message_id, error, reply)
# with reply None for a plain ack.
Entry = tuple[int, int, Reply | None]
Log = Callable[..., None]


def _result(mid: int, error: int, requests: int = 0, refused: int = 0,
            refused_type: int = 0) -> bytes:
    return m.encode_env_result(m.EnvResultMsg(m.MsgType.ISERVICE_ENV_RESULT, mid, error,
                                              requests, refused, refused_type))


def _failed(mid: int) -> Reply:
    def reply(error: int, count: int = 1, refused: int | None = None) -> bytes:
        return _result(mid, error)
    return reply


class _Request:
    """One complete environment's requests: handed out in order, settled in order."""

    def __init__(self, mid: int, messages: list[m.Message | RouteRun], unmade: int) -> None:
        self.mid = mid
        self.queue = collections.deque(messages)
        self.made = sum(len(x) if isinstance(x, RouteRun) else 1 for x in messages)
        self.unmade = unmade  # routes beyond the bound: refused without being made
        self.settled = 0
        self.refused = 0
        self.first_error = 0
        self.refused_type = 0

    def note(self, error: int, count: int = 1, refused: int | None = None, *,
             kind: int = m.MsgType.ADD_ROUTE) -> bytes:
        """Requests made from this environment (``count`` of type ``kind``: a run's
        routes, else one) have been settled (no ack of their own)."""
        if refused is None:
            refused = count if error else 0
        if refused:
            self.refused += refused
            if not self.first_error:
                self.first_error = error
                self.refused_type = int(kind)
        self.settled += count
        return b""

    def result(self, error: int, count: int = 1, refused: int | None = None) -> bytes:
        """Everything before has been settled: the one answer."""
        if self.unmade and not self.first_error:
            self.first_error = errors.ERROR_NOT_ENOUGH_QUOTA
            self.refused_type = int(m.MsgType.ADD_ROUTE)
        return _result(self.mid, self.first_error, self.made + self.unmade,
                       self.refused + self.unmade, self.refused_type)


class EnvStream:
    def __init__(self, context: Callable[[], Context], log: Log, *,
                 max_bytes: int = m.MAX_ENV_BYTES, runs: bool = True) -> None:
        """``runs``: hand out a run of routes together (``produce``'s ``runs``); False:
        one message each (the same decisions, slower: tests compare the two)."""
        self._runs = runs
        self._context = context
        self._log = log
        self._max = max_bytes
        self._pieces: list[bytes] = []
        self._size = 0
        self._current: tuple[int, int] | None = None  # (message_id, event) being put together
        self._dropped: int | None = None  # message_id whose later pieces are dropped
        self._ready: collections.deque[_Request] = collections.deque()

    def take(self, chunk: m.EnvChunkMsg) -> list[Entry]:
        """A piece from the channel; returns the answers due at once (usually none)."""
        mid = chunk.message_id
        out: list[Entry] = []
        if chunk.flags & m.ENV_FIRST:
            if self._current is not None:
                self._log(logging.WARNING, "bad-environment", mid=self._current[0],
                          verdict="malformed", reason="a new environment began before its end")
                out.append(self._drop(errors.ERROR_MESSAGE_DATA))
            self._current, self._dropped = (mid, chunk.event), None
        elif self._current != (mid, chunk.event):
            if self._dropped == mid:
                if chunk.flags & m.ENV_LAST:
                    self._dropped = None
                return out
            self._log(logging.WARNING, "bad-message", what="iservice_env", mid=mid,
                      verdict="malformed", reason="a piece of no environment begun",
                      error=errors.ERROR_MESSAGE_DATA)
            return [(mid, errors.ERROR_MESSAGE_DATA, None)]
        self._size += len(chunk.data)
        if self._size > self._max:
            self._log(logging.WARNING, "denied", what="iservice_env", mid=mid, verdict="denied",
                      reason=f"the environment is longer than {self._max} bytes",
                      error=errors.ERROR_NOT_ENOUGH_QUOTA)
            out.append(self._drop(errors.ERROR_NOT_ENOUGH_QUOTA))
            if not chunk.flags & m.ENV_LAST:
                self._dropped = mid
            return out
        self._pieces.append(chunk.data)
        if chunk.flags & m.ENV_LAST:
            out += self._complete(mid, chunk.event)
        return out

    def _drop(self, error: int) -> Entry:
        assert self._current is not None
        mid = self._current[0]
        self._current, self._pieces, self._size = None, [], 0
        return (mid, error, _failed(mid))

    def _complete(self, mid: int, event: int) -> list[Entry]:
        data = b"".join(self._pieces)
        self._current, self._pieces, self._size = None, [], 0
        name = m.ENV_EVENTS[event]
        signal = signal_of(data)
        if takes_down(event) and signal in EXIT_SIGNALS:
            # what produce() answers, without parsing ~100 bytes a route (fast disconnect)
            made = Produced([], [], exiting=True)
        else:
            try:
                made = produce(event, parse_env(data), self._context(), mid, runs=self._runs)
            except EnvError as exc:
                self._log(logging.WARNING, "bad-environment", what=name, mid=mid,
                          verdict="malformed", reason=exc.reason,
                          error=errors.ERROR_MESSAGE_DATA)
                return [(mid, errors.ERROR_MESSAGE_DATA, _failed(mid))]
        self._log(logging.INFO, "environment", what=name, mid=mid, bytes=len(data),
                  signal=signal, requests=sum(
                      len(x) if isinstance(x, RouteRun) else 1 for x in made.messages),
                  verdict="exiting" if made.exiting else "produced")
        for note in made.notes:
            self._log(logging.INFO, "ignored", what=name, mid=mid, reason=note)
        if made.unmade:
            self._log(logging.WARNING, "denied", what=name, mid=mid, verdict="denied",
                      reason=f"{made.unmade} routes beyond the session's limit not made",
                      error=errors.ERROR_NOT_ENOUGH_QUOTA)
        self._ready.append(_Request(mid, made.messages, made.unmade))
        return []

    @property
    def pending(self) -> bool:
        """Requests made from an environment wait to be handed out."""
        return bool(self._ready)

    def next(self, limit: int = 1 << 30) -> tuple[int, m.Message | RouteRun | None, Reply] | None:
        """The next request made from an environment, with its reply, or the next
        ``limit`` routes at most of a run; (mid, None, reply) ends the environment
        (answer with ``reply`` once everything before it has been settled); None when
        there is nothing to hand out (read the channel)."""
        if not self._ready:
            return None
        req = self._ready[0]
        if req.queue:
            item = req.queue.popleft()
            if isinstance(item, RouteRun):
                if len(item) > limit:
                    req.queue.appendleft(item.rest(limit))
                    item = item.head(limit)
                return req.mid, item, req.note
            return req.mid, item, functools.partial(req.note, kind=int(item.type))
        self._ready.popleft()
        return req.mid, None, req.result

    def put_back(self, run: RouteRun) -> None:
        """Routes of the run ``next`` just handed out that were not taken: next first."""
        if len(run):
            self._ready[0].queue.appendleft(run)
