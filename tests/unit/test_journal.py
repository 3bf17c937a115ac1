"""The undo journal: order, batches, durability across a reopen, id uniqueness."""

from __future__ import annotations

import json
from pathlib import Path

from iservice.journal import Journal


def test_changes_come_back_newest_first(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.sqlite3"))
    s = j.new_session(1000, 42, {"user": "u"})
    a = j.record(s, "tun", {"name": "istun1"})
    ids = j.record_many(s, "route", [{"dst": f"10.{i}.0.0/16"} for i in range(3)])
    assert ids == [a + 1, a + 2, a + 3]
    assert [c.id for c in j.changes(s)] == [*reversed(ids), a]
    assert j.changes(s)[0].data == {"dst": "10.2.0.0/16"}


def test_a_batch_keeps_every_value_exactly(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.sqlite3"))
    s = j.new_session(1000, 42, {"user": "u"})
    items = [{"s": 'a"b\\c\n\u00e9\u2028', "n": -1, "f": 1.5, "none": None, "t": True,
              "list": [1, "x", {"k": []}]}, {}, {"dst": "fd10::/56"}]
    ids = j.record_many(s, "x", items)
    assert [j.get(i).data for i in ids] == items  # type: ignore[union-attr]


def test_survives_reopen_and_ids_are_never_reused(tmp_path: Path) -> None:
    path = str(tmp_path / "j.sqlite3")
    j = Journal(path)
    s1 = j.new_session(1000, 1)
    j.record_many(s1, "route", [{"n": i} for i in range(5000)])
    j.close()  # the service "dies" here
    j = Journal(path)
    assert [r.id for r in j.sessions()] == [s1]
    assert j.count(s1) == 5000
    last = max(c.id for c in j.changes(s1))
    assert j.has_session(s1) and not j.has_session(s1 + 1)
    j.end_session(s1)
    assert j.count() == 0 and j.sessions() == []
    assert not j.has_session(s1)  # Undo's "complete" answer
    s2 = j.new_session(1000, 2)
    assert s2 > s1  # tun names (istun<id>) stay unique
    assert j.record(s2, "x", {}) > last


def test_forget_and_update(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.sqlite3"))
    s = j.new_session(0, 1)
    c = j.record(s, "tun", {"name": "istun1", "ifindex": None})
    j.update(c, {"name": "istun1", "ifindex": 9})
    got = j.get(c)
    assert got is not None and got.data["ifindex"] == 9
    j.forget([c])
    assert j.get(c) is None and j.count(s) == 0


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(str(path))
    assert path.stat().st_mode & 0o077 == 0


# -- the route record's fast JSON (effects.route.record_json) -------------------------

from ipaddress import IPv4Network, IPv6Network, ip_address  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from iservice.effects.route import RouteRecord, record_json, spec_of  # noqa: E402
from iservice.monitor import GOES_WITH_TUN_SQL, TUN_ROUTES6_SQL  # noqa: E402
from iservice.policy.requests import AddRoute, RouteKey  # noqa: E402

_nets = st.one_of(
    st.builds(lambda a, p: IPv4Network((a, p), strict=False),
              st.integers(0, 2**32 - 1), st.integers(0, 32)),
    st.builds(lambda a, p: IPv6Network((a, p), strict=False),
              st.integers(0, 2**128 - 1), st.integers(0, 128)))


@given(_nets, st.booleans(), st.integers(-1, 2**31 - 1), st.integers(1, 2**31 - 1),
       st.data())
def test_route_record_is_the_json_of_its_values(dst: IPv4Network | IPv6Network, bypass: bool,
                                                metric: int, oif: int, data_: st.DataObject,
                                                ) -> None:
    gw = data_.draw(st.one_of(st.none(), st.ip_addresses(v=dst.version)))
    op = AddRoute(RouteKey(dst, bypass, metric), oif, gw)  # type: ignore[arg-type]
    data = json.loads(record_json(op))
    assert data == {"dst": str(dst), "oif": oif, "metric": metric,
                    "gw": None if gw is None else str(gw), "bypass": bypass}
    rec = RouteRecord.from_data(data)
    assert rec.to_data() == data
    assert rec.spec().route() == spec_of(op).route()  # undo deletes the route added


def test_route_record_example() -> None:
    op = AddRoute(RouteKey(IPv4Network("100.64.0.0/26"), True, -1), 3, ip_address("192.0.2.1"))
    assert record_json(op) == ('{"dst":"100.64.0.0/26","oif":3,"metric":-1,'
                               '"gw":"192.0.2.1","bypass":true}')


def test_undo_changes_leave_out_what_goes_with_the_tun(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.sqlite3"))
    s = j.new_session(1000, 42)
    other = j.new_session(1001, 43)
    tun = j.record(s, "tun", {"name": "istun1", "ifindex": 7})
    j.record(other, "tun", {"name": "istun2", "ifindex": 9})
    j.record(s, "addr", {"address": "10.8.0.2", "prefix_len": 24, "ifindex": 7})
    j.record_many(s, "route", [{"dst": f"10.{i}.0.0/16", "oif": 7, "metric": -1, "gw": None,
                                "bypass": False} for i in range(100)])
    bypass = j.record(s, "route", {"dst": "192.0.2.1/32", "oif": 3, "metric": -1,
                                   "gw": "198.18.0.1", "bypass": True})
    foreign = j.record(s, "route", {"dst": "10.200.0.0/16", "oif": 9, "metric": -1,
                                    "gw": None, "bypass": False})
    dns = j.record(s, "dns", {"backend": "none"})
    assert [c.id for c in j.changes_except(s, GOES_WITH_TUN_SQL)] == [dns, foreign, bypass, tun]
    assert j.count(s) == 105  # nothing was removed by asking


def test_tun_routes6_are_the_ipv6_routes_through_the_tun(tmp_path: Path) -> None:
    j = Journal(str(tmp_path / "j.sqlite3"))
    s = j.new_session(1000, 42)
    j.record(s, "tun", {"name": "istun1", "ifindex": 7})
    route = {"oif": 7, "metric": -1, "gw": None, "bypass": False}
    j.record_many(s, "route", [{**route, "dst": "10.1.0.0/16"},
                               {**route, "dst": "fd10::/56"},
                               {**route, "dst": "fd11::/56", "oif": 9},
                               {**route, "dst": "2001:db8::1/128", "oif": 3, "bypass": True,
                                "gw": "fe80::1"}])
    assert [d["dst"] for d in j.data_where(s, TUN_ROUTES6_SQL)] == ["fd10::/56"]
