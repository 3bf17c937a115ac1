"""The undo journal: order, batches, durability across a reopen, id uniqueness."""

from __future__ import annotations

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
    j.end_session(s1)
    assert j.count() == 0 and j.sessions() == []
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
