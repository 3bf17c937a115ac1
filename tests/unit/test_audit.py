"""The audit trail's fast paths give exactly the lines of the generic ones."""

from __future__ import annotations

import io
import logging
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

from hypothesis import given
from hypothesis import strategies as st

from iservice import audit
from iservice.policy.requests import AddRoute, DelRoute, DelTunRoutes, RouteKey

v4_nets = st.builds(lambda a, p: IPv4Network((a, p), strict=False),
                    st.integers(0, 2**32 - 1), st.integers(0, 32))
v6_nets = st.builds(lambda a, p: IPv6Network((a, p), strict=False),
                    st.integers(0, 2**128 - 1), st.integers(0, 128))
keys = st.builds(RouteKey, st.one_of(v4_nets, v6_nets), st.booleans(), st.integers(-1, 2**31 - 1))
ids = st.one_of(st.none(), st.integers(-1, 2**62))
gateways = st.one_of(st.none(), st.ip_addresses())


@given(keys, st.integers(0, 2**32 - 1), gateways, ids, st.one_of(st.none(),
                                                                  st.integers(1, 2**32 - 1)))
def test_add_route_text_is_the_generic_text(key: RouteKey, oif: int, gw: object,
                                            existing: int | None, table: int | None) -> None:
    op = AddRoute(key, oif, gw, existing, table)  # type: ignore[arg-type]
    assert audit.describe(op) == audit.generic_describe(op)


@given(keys, st.integers(-1, 2**62))
def test_del_route_text_is_the_generic_text(key: RouteKey, change_id: int) -> None:
    op = DelRoute(key, change_id)
    assert audit.describe(op) == audit.generic_describe(op)


def test_del_tun_routes_is_summarised_not_listed() -> None:
    key = RouteKey(ip_network("100.64.0.0/26"), False, -1)
    op = DelTunRoutes(tuple(DelRoute(key, i) for i in range(1000)))
    assert audit.describe(op) == "del_tun_routes count=1000"


def test_examples() -> None:
    dst = ip_network("100.64.0.64/26")
    assert audit.describe(AddRoute(RouteKey(dst, False, -1), 7, None)) == \
        "add_route dst=100.64.0.64/26 bypass=False metric=-1 oif=7"
    assert audit.describe(AddRoute(RouteKey(ip_network("fd10::/56"), True, 5), 3,
                                   ip_address("fe80::1"), existing=12)) == \
        "add_route dst=fd10::/56 bypass=True metric=5 oif=3 gateway=fe80::1 existing=12"


def test_who_plus_fields_is_format_line() -> None:
    who = {"uid": 1000, "client_pid": 42, "conn": 3, "session": None, "pid": 77}
    what = audit.quote("add_route dst=10.0.0.0/8 bypass=no")
    assert f"event=applied {audit.who(**who)} what={what} verdict=applied mid=5" == \
        audit.format_line("applied", {**who, "what": "add_route dst=10.0.0.0/8 bypass=no",
                                      "verdict": "applied", "mid": 5})


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(audit.LineFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("iservice.audit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, out


def test_many_lines_in_one_record_each_get_the_prefix() -> None:
    logger, out = _logger()
    try:
        lines = [audit.format_line("applied", {"uid": 1, "mid": i}) for i in range(3)]
        audit.record_lines(logging.INFO, lines, uid=1)
        audit.record_lines(logging.INFO, [], uid=1)  # nothing at all, not an empty line
        audit.record(logging.WARNING, "denied", uid=1, reason="a\nb")
    finally:
        logger.handlers.clear()
    assert out.getvalue().splitlines() == [
        "INFO iservice.audit: event=applied uid=1 mid=0",
        "INFO iservice.audit: event=applied uid=1 mid=1",
        "INFO iservice.audit: event=applied uid=1 mid=2",
        'WARNING iservice.audit: event=denied uid=1 reason="a\\nb"',
    ]


def test_a_traceback_follows_the_lines() -> None:
    logger, out = _logger()
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("one\ntwo")
    finally:
        logger.handlers.clear()
    text = out.getvalue().splitlines()
    assert text[:2] == ["ERROR iservice.audit: one", "ERROR iservice.audit: two"]
    assert text[-1] == "ValueError: boom"


@given(st.text())
def test_quote_is_bare_or_the_json_string(text: str) -> None:
    import json
    import re
    got = audit.quote(text)
    if re.fullmatch(r"[A-Za-z0-9_.,:/@+%-]{1,200}", text):
        assert got == text
    elif len(text) <= 4 * 512:
        assert got == json.dumps(text, ensure_ascii=True)
    assert "\n" not in got and "\r" not in got


@given(st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
def test_ack_bytes_is_the_encoded_ack(mid: int, err: int) -> None:
    from iservice.wire import msg as m
    assert m.ack_bytes(mid, err) == m.encode_ack(m.Ack(mid, err))
