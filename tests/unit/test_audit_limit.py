"""The audit trail's rate limit per user (audit.TokenBucket, RateLimiter and the glue in
record/record_lines): pure logic with the time as a parameter, so no test sleeps except
the one that checks the event loop's reminder timer."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iservice import audit
from iservice.audit import RateLimiter, Summary, TokenBucket

# -- TokenBucket -------------------------------------------------------------------------


def test_bucket_gives_the_burst_then_the_rate() -> None:
    b = TokenBucket(rate=10, burst=100, tokens=100, stamp=0.0)
    assert b.take(60, 0.0) == 60
    assert b.take(60, 0.0) == 40  # partly: the first 40 of 60
    assert b.take(1, 0.0) == 0
    assert b.take(5, 0.25) == 2  # 0.25 s at 10/s: two and a half tokens
    assert b.take(5, 0.3) == 1  # the half plus another half
    assert b.take(1000, 100.0) == 100  # never more than the burst saved up


def test_bucket_ignores_a_clock_that_goes_back() -> None:
    b = TokenBucket(rate=10, burst=5, tokens=0, stamp=10.0)
    assert b.take(1, 5.0) == 0
    assert b.take(1, 10.05) == 0
    assert b.take(1, 10.1) == 1


def test_a_user_at_exactly_the_rate_never_loses_a_line() -> None:
    # 0.1 s at 10/s is 0.9999999999999998 tokens in floating point
    b = TokenBucket(rate=10, burst=1, tokens=0, stamp=0.0)
    now = 0.0
    for _ in range(10000):
        now += 0.1
        assert b.take(1, now) == 1


steps = st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.integers(0, 500)),
                 max_size=60)


@given(st.integers(1, 1000), st.integers(1, 5000), steps)
def test_bucket_never_gives_more_than_burst_plus_rate_times_time(
        rate: int, burst: int, requests: list[tuple[float, int]]) -> None:
    b = TokenBucket(rate=rate, burst=burst, tokens=burst, stamp=0.0)
    now, given_out = 0.0, 0
    for dt, n in requests:
        now += dt
        got = b.take(n, now)
        assert 0 <= got <= n
        given_out += got
        assert given_out <= burst + rate * now + 1e-6


@given(st.integers(1, 1000), st.integers(1, 5000), steps, st.integers(1, 5000))
def test_after_a_pause_the_whole_burst_is_there(
        rate: int, burst: int, requests: list[tuple[float, int]], n: int) -> None:
    b = TokenBucket(rate=rate, burst=burst, tokens=burst, stamp=0.0)
    now = 0.0
    for dt, k in requests:
        now += dt
        b.take(k, now)
    now += burst / rate
    assert b.take(n, now) == min(n, burst)


# -- RateLimiter ---------------------------------------------------------------------------


def test_users_have_their_own_buckets() -> None:
    lim = RateLimiter(rate=1, burst=3)
    assert lim.allow(1000, 5, 0.0) == 3
    assert lim.allow(1001, 3, 0.0) == 3
    assert lim.allow(1000, 1, 0.5) == 0
    assert lim.allow(1000, 1, 1.0) == 1


def test_a_summary_per_uid_and_interval_with_the_events() -> None:
    lim = RateLimiter(rate=1, burst=1, interval=10)
    assert lim.left_out(1000, ["denied", "denied", "applied"], 2.0) is True
    assert lim.left_out(1000, ["refused"], 3.0) is False  # the same window
    assert lim.left_out(1001, ["denied"], 4.0) is True
    assert lim.next_due == 12.0
    assert lim.due(11.9) == []
    assert lim.due(12.0) == [Summary(1000, 4, (("denied", 2), ("applied", 1), ("refused", 1)),
                                     10.0)]
    assert lim.next_due == 14.0
    assert lim.due(13.0) == []  # 1000's window is closed, 1001's is not over
    assert lim.left_out(1000, ["denied"], 13.0) is True  # a new window for 1000
    assert [s.uid for s in lim.due(14.0)] == [1001]
    assert [(s.uid, s.count) for s in lim.due(14.0, every=True)] == [(1000, 1)]
    assert lim.windows == {} and lim.next_due == float("inf")


def test_summary_line_format() -> None:
    s = Summary(1000, 99950, (("denied", 99000), ("refused", 950)), 10.04)
    assert s.line() == ("event=audit-suppressed uid=1000 count=99950 "
                        "events=denied:99000,refused:950 seconds=10.0")


def test_full_buckets_are_forgotten() -> None:
    lim = RateLimiter(rate=10, burst=10, interval=1)
    for uid in range(1000, 1100):
        assert lim.allow(uid, 5, 0.0) == 5
    assert lim.allow(2000, 11, 0.0) == 10
    lim.left_out(2000, ["denied"], 0.0)
    assert lim.due(0.4) == [] and len(lim.buckets) == 101  # none is full again yet
    assert lim.due(0.6) == [] and set(lim.buckets) == {2000}  # 5 + 6 tokens: full
    assert [s.uid for s in lim.due(1.0)] == [2000]
    assert lim.buckets == {}  # 2000's window is summarized and its bucket full again


def test_limiter_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


# -- the glue: record / record_lines / flush_suppressed --------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(audit.LineFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("iservice.audit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield text
    finally:
        audit.set_limits(None)
        logger.removeHandler(handler)


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    audit.set_limits(RateLimiter(rate=1, burst=3, interval=10), clock=c)
    return c


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_users_lines_over_the_limit_are_counted_not_written(out: io.StringIO,
                                                              clock: Clock) -> None:
    for i in range(5):
        audit.record(logging.WARNING, "refused", uid=1000, conn=i)
    audit.record(logging.INFO, "request", uid=1001, conn=9)  # another user: own bucket
    assert lines(out) == [f"WARNING event=refused uid=1000 conn={i}" for i in range(3)] + [
        "INFO event=request uid=1001 conn=9"]
    clock.now += 10  # the window is over: the next line brings the summary first
    audit.record(logging.WARNING, "refused", uid=1000, conn=5)
    assert lines(out)[4:] == [
        "WARNING event=audit-suppressed uid=1000 count=2 events=refused:2 seconds=10.0",
        "WARNING event=refused uid=1000 conn=5"]


def test_root_the_service_and_errors_are_never_limited(out: io.StringIO, clock: Clock) -> None:
    for i in range(10):
        audit.record(logging.WARNING, "refused", uid=0, conn=i)  # root
        audit.record(logging.WARNING, "insecure-config-dir", reason=str(i))  # no uid
        audit.record(logging.ERROR, "session-bug", uid=1000, conn=i)  # the service's error
        audit.record_lines(logging.INFO, [f"event=applied uid=0 mid={i}"], uid=0)
        audit.record_lines(logging.ERROR, [f"event=undone uid=1000 mid={i}"], uid=1000)
        audit.record_lines(logging.INFO, [f"event=ours mid={i}"], uid=None)
    assert len(lines(out)) == 60
    audit.flush_suppressed()
    assert len(lines(out)) == 60  # nothing was left out


def test_record_lines_writes_the_first_ones_and_counts_the_rest(out: io.StringIO,
                                                                clock: Clock) -> None:
    batch = [f"event=applied uid=1000 mid={i}" for i in range(4)] + [
        "event=failed uid=1000 mid=4", "not an audit line"]
    audit.record_lines(logging.INFO, batch, uid=1000)
    audit.record_lines(logging.INFO, batch[:2], uid=1000)  # nothing left: no record at all
    assert lines(out) == [f"INFO {x}" for x in batch[:3]]
    audit.flush_suppressed()  # at the service's stop: every window, over or not
    assert lines(out)[3:] == ["WARNING event=audit-suppressed uid=1000 count=5 "
                              "events=applied:3,failed:1,unknown:1 seconds=0.0"]


def test_every_line_is_written_or_counted(out: io.StringIO) -> None:
    clock = Clock()
    audit.set_limits(RateLimiter(rate=50, burst=200, interval=1), clock=clock)
    sent = 0
    for step in range(300):
        clock.now += 0.01
        n = (step * 7) % 40
        batch = [f"event=applied uid=1000 mid={sent + i}" for i in range(n)]
        sent += n
        audit.record_lines(logging.INFO, batch, uid=1000)
        audit.record(logging.WARNING, "denied", uid=1000, mid=-1)
        sent += 1
    audit.flush_suppressed()
    text = lines(out)
    written = [x for x in text if "event=audit-suppressed" not in x]
    summaries = [x for x in text if "event=audit-suppressed" in x]
    counted = sum(int(x.split("count=")[1].split()[0]) for x in summaries)
    assert written and summaries
    assert len(written) + counted == sent
    assert len(written) <= 200 + 50 * 3.0 + 1
    # one summary per window of 1 s at most (3 s of flood: 3 or 4 windows)
    assert len(summaries) <= 4


def test_without_a_limiter_nothing_is_limited(out: io.StringIO) -> None:
    audit.set_limits(None)
    for i in range(1000):
        audit.record(logging.WARNING, "refused", uid=1000, conn=i)
    assert len(lines(out)) == 1000


def test_changing_the_limiter_summarizes_what_the_old_one_left_out(out: io.StringIO,
                                                                   clock: Clock) -> None:
    for i in range(4):
        audit.record(logging.WARNING, "refused", uid=1000, conn=i)
    audit.set_limits(None)
    assert lines(out)[-1].startswith("WARNING event=audit-suppressed uid=1000 count=1 ")


def test_the_event_loop_writes_a_summary_when_the_flood_stops(out: io.StringIO) -> None:
    """No audit line follows the flood: a timer on the running loop writes the summary."""
    audit.set_limits(RateLimiter(rate=1, burst=1, interval=0.05))

    async def flood() -> None:
        for i in range(3):
            audit.record(logging.WARNING, "refused", uid=1000, conn=i)
        await asyncio.sleep(0.5)

    asyncio.run(flood())
    assert lines(out)[-1].startswith(
        "WARNING event=audit-suppressed uid=1000 count=2 events=refused:2 seconds=")
