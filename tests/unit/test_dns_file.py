"""The managed resolv.conf (``dns_backend = file``): several sessions, exact restore."""

from __future__ import annotations

import itertools
import os
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iservice.linux import dns
from iservice.linux.dns import MARKER, FileDns, render, torn_between
from iservice.policy.dns import LinkDns

ORIGINAL = (b"# admin\nnameserver 192.168.1.1\nnameserver 192.168.1.2\n"
            b"domain old.example\nsearch example.com corp.example.com ex.com\n"
            b"options ndots:2 rotate\n")


def link(*servers: str, search: tuple[str, ...] = ()) -> LinkDns:
    return LinkDns(tuple(ip_address(s) for s in servers), search, (), True, None)


A = link("10.8.0.1", search=("corp.example",))
B = link("10.9.0.1", "fd00::1", search=("example.com", "ex.com", "com"))
C = link(search=("sub.example.com",))


class Journal:
    """Stands in for the monitor's journal: records by change id."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}
        self.changes: dict[int, int] = {}  # session → its record's id
        self.ids = itertools.count(1)

    def update(self, change: int, data: dict[str, Any]) -> None:
        self.records[change] = data


def start(f: FileDns, j: Journal, session: int, cfg: LinkDns) -> None:
    """What the monitor does: the record first, then the change."""
    change = next(j.ids)
    j.records[change] = f.undo_data(session, 100 + session, f"istun{session}")
    j.changes[session] = change
    f.apply(session, 100 + session, f"istun{session}", cfg, change)


def end(f: FileDns, j: Journal, session: int) -> None:
    """What the monitor does: revert with the record as the journal holds it now."""
    f.revert(session, j.records[j.changes[session]])


def lines(path: Path, key: str) -> list[str]:
    return [line.split(None, 1)[1] for line in path.read_text().splitlines()
            if line.startswith(key + " ")]


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    p = tmp_path / "resolv.conf"
    p.write_bytes(ORIGINAL)
    p.chmod(0o644)
    return p


def test_render_newest_first_and_the_admins_tokens_after() -> None:
    text = render(ORIGINAL, [("istun2", B), ("istun1", A)]).decode()
    assert text.startswith(MARKER.decode())
    assert [x for x in text.splitlines() if x.startswith("nameserver")] == [
        "nameserver 10.9.0.1", "nameserver fd00::1", "nameserver 10.8.0.1"]
    # one search line (the last one counts): ours first, then the admin's exact tokens
    assert [x for x in text.splitlines() if x.startswith(("search", "domain"))] == [
        "search example.com ex.com com corp.example corp.example.com"]
    assert "options ndots:2 rotate" in text and "# admin" in text


def test_domains_only_keep_the_admins_servers() -> None:
    text = render(ORIGINAL, [("istun3", C)]).decode()
    assert "nameserver 192.168.1.1" in text
    assert "search sub.example.com example.com corp.example.com ex.com" in text


@pytest.mark.parametrize("order", list(itertools.permutations([1, 2, 3])))
def test_three_sessions_end_in_any_order(conf: Path, order: tuple[int, ...]) -> None:
    j = Journal()
    f = FileDns(str(conf), j.update)
    for session, cfg in ((1, A), (2, B), (3, C)):
        start(f, j, session, cfg)
    assert lines(conf, "nameserver")[0] == "10.9.0.1"  # 3 has no servers: 2 is newest
    live = {1, 2, 3}
    for session in order:
        end(f, j, session)
        live.discard(session)
        if live:
            newest = max(s for s in live if s != 3) if live - {3} else None
            first = {1: "10.8.0.1", 2: "10.9.0.1", None: "192.168.1.1"}[newest]
            assert lines(conf, "nameserver")[0] == first
            cfgs = {1: A, 2: B, 3: C}
            want = list(dict.fromkeys(
                [d for n in sorted(live, reverse=True) for d in cfgs[n].search]
                + ["example.com", "corp.example.com", "ex.com"]))
            assert lines(conf, "search") == [" ".join(want)]
    assert conf.read_bytes() == ORIGINAL


def test_a_session_whose_domain_equals_the_admins_removes_nothing_of_his(conf: Path) -> None:
    # CVE-2026-13379: the original removed search domains by substring.
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, link("10.8.0.1", search=("example.com", "ex.com", "e", "corp")))
    assert lines(conf, "search") == ["example.com ex.com e corp corp.example.com"]
    end(f, j, 1)
    assert conf.read_bytes() == ORIGINAL


def test_after_a_crash_the_records_give_the_original_back(conf: Path) -> None:
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    start(f, j, 2, B)
    # the service dies; the next one knows nothing but the journal
    g = FileDns(str(conf), j.update)
    end(g, j, 1)
    assert conf.read_bytes() == ORIGINAL
    end(g, j, 2)
    assert conf.read_bytes() == ORIGINAL


def test_a_file_replaced_meanwhile_becomes_the_original(conf: Path) -> None:
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    replaced = b"nameserver 192.168.7.7\n"
    conf.write_bytes(replaced)  # a DHCP client wrote a new file
    start(f, j, 2, B)
    assert lines(conf, "nameserver") == ["10.9.0.1", "fd00::1", "10.8.0.1"]
    end(f, j, 2)
    end(f, j, 1)
    assert conf.read_bytes() == replaced
    assert all(r["original"] for r in j.records.values())


def test_a_file_replaced_at_the_end_is_left_alone(conf: Path) -> None:
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    conf.write_bytes(b"nameserver 192.168.7.7\n")
    end(f, j, 1)
    assert conf.read_bytes() == b"nameserver 192.168.7.7\n"


def test_rename_keeps_mode_and_owner(conf: Path) -> None:
    conf.chmod(0o640)
    inode = conf.stat().st_ino
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    assert conf.stat().st_ino != inode  # replaced atomically
    assert conf.stat().st_mode & 0o777 == 0o640
    assert not list(conf.parent.glob("*.iservice-new"))


def test_a_mount_point_is_written_in_place(conf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns, "_is_mount_point", lambda path: path == str(conf))
    inode = conf.stat().st_ino
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    assert conf.stat().st_ino == inode and lines(conf, "nameserver") == ["10.8.0.1"]
    end(f, j, 1)
    assert conf.stat().st_ino == inode and conf.read_bytes() == ORIGINAL


def test_rename_refused_falls_back_to_writing_in_place(conf: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(src: str, dst: str) -> None:
        raise OSError(16, "Device or resource busy")
    monkeypatch.setattr(os, "rename", busy)
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    assert lines(conf, "nameserver") == ["10.8.0.1"]
    assert not list(conf.parent.glob("*.iservice-new"))
    end(f, j, 1)
    assert conf.read_bytes() == ORIGINAL


def test_our_own_leftover_without_a_record_is_refused(conf: Path) -> None:
    conf.write_bytes(render(ORIGINAL, [("istun9", A)]))
    f = FileDns(str(conf), Journal().update)
    with pytest.raises(OSError):
        f.undo_data(1, 101, "istun1")


# -- torn files (issue 17 item 3) -------------------------------------------------------

def _all_torn(old: bytes, new: bytes) -> set[bytes]:
    """Every content an in-place write of new over old can leave when killed: k bytes of
    new written (0..len(new)), then the truncation, or not yet."""
    return {new[:k] + old[k:] for k in range(len(new) + 1)} | {new}


@settings(max_examples=300)
@given(st.binary(max_size=40), st.binary(max_size=40), st.data())
def test_every_torn_write_is_recognised(old: bytes, new: bytes, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(new)))
    assert torn_between(new[:k] + old[k:], old, new)
    assert torn_between(new, old, new) and torn_between(old, old, new)


@settings(max_examples=300)
@given(st.binary(max_size=12), st.binary(max_size=12), st.binary(max_size=14))
def test_nothing_else_is_recognised(old: bytes, new: bytes, other: bytes) -> None:
    assert torn_between(other, old, new) == (other in _all_torn(old, new))


def test_issue_17_torn_revert_is_ours_and_an_admins_edit_is_not() -> None:
    ours = render(ORIGINAL, [("istun1", A)])
    torn = ORIGINAL + ours[len(ORIGINAL):]  # the original written back, not truncated
    assert torn != ORIGINAL and MARKER not in torn  # no marker: the old undo left it
    assert torn_between(torn, ours, ORIGINAL)
    assert not torn_between(ORIGINAL.replace(b"rotate", b"rotatE"), ours, ORIGINAL)
    assert not torn_between(b"nameserver 192.168.7.7\n", ours, ORIGINAL)


def _crash_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``os.<name>`` raise (a stand-in for the kill) once it has run for our file."""
    real = getattr(os, name)

    def dying(*args: Any, **kw: Any) -> Any:
        real(*args, **kw)
        raise KeyboardInterrupt(f"killed after {name}")
    monkeypatch.setattr(os, name, dying)


@pytest.mark.parametrize("step", ["write", "ftruncate"])
def test_a_torn_revert_in_place_is_restored_by_the_next_undo(
        conf: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """The unit-level twin of tests/security/test_dns_file_crash.py (which kills a real
    process): an in-place revert stopped after its write, then a new FileDns."""
    monkeypatch.setattr(dns, "_is_mount_point", lambda path: path == str(conf))
    j = Journal()
    f = FileDns(str(conf), j.update)
    start(f, j, 1, A)
    with monkeypatch.context() as m:
        _crash_at(m, step)
        with pytest.raises(KeyboardInterrupt):
            end(f, j, 1)
    if step == "write":
        assert conf.read_bytes() != ORIGINAL and not conf.read_bytes().startswith(MARKER)
    record = j.records[j.changes[1]]
    assert record["change"] == j.changes[1] and "write" in record
    g = FileDns(str(conf), j.update)  # the next start
    g.revert(1, record)
    assert conf.read_bytes() == ORIGINAL


def test_a_temporary_file_left_by_a_kill_is_removed(conf: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal()
    f = FileDns(str(conf), j.update)
    with monkeypatch.context() as m:
        _crash_at(m, "fsync")
        with pytest.raises(KeyboardInterrupt):
            start(f, j, 1, A)
    tmp = Path(str(conf) + dns.TEMP_SUFFIX)
    assert tmp.exists() and conf.read_bytes() == ORIGINAL
    record = j.records[j.changes[1]]
    assert record["write"]["tmp"] == str(tmp)
    FileDns(str(conf), j.update).revert(1, record)
    assert not tmp.exists() and conf.read_bytes() == ORIGINAL
    # and a later session is not pushed onto the in-place path by a stale one
    tmp.write_bytes(b"stale")
    g = FileDns(str(conf), j.update)
    inode = conf.stat().st_ino
    start(g, j, 2, A)
    assert conf.stat().st_ino != inode and not tmp.exists()
