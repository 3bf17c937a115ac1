"""Failure injection in the privileged part (the original's double free when adding
the block filters failed, b761cb9b / GH #232).

The monitor runs with its real journal (SQLite in a temporary directory) while the
effects fail on purpose: the firewall (``nft``), the DNS backend, a netlink batch.
Each failure must give an error ack, leave no journal record of the failed change,
and the session's undo must remove exactly what was made -- once, never what was
not made.  (The same with the real kernel: test_service_hardening.py's
test_kernel_refusal_half_way_leaves_nothing.)
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iservice import platform
from iservice.linux import dns as dnsmod
from iservice.linux import firewall
from iservice.monitor import Apply, Monitor, Undo
from iservice.policy import requests as rq

T = TypeVar("T")
TUN = 7


class FakeRtnl:
    """Stands in for rtnetlink: records route operations, fails where told."""

    def __init__(self) -> None:
        self.routes: list[tuple[bool, str]] = []
        self.fail_dst: set[str] = set()

    def routes_apply(self, ops: Sequence[tuple[bool, Any]]) -> list[int]:
        out = []
        for add, route in ops:
            dst = str(route.dst)
            if add and dst in self.fail_dst:
                out.append(errno.EEXIST)
                continue
            self.routes.append((add, dst))
            out.append(0)
        return out

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # link_set, addr_add, ... unused here
        raise AssertionError(f"unexpected netlink call {name}")


class FailingDns:
    """A DNS backend whose apply fails after it has changed something."""

    name = "fake"

    def __init__(self) -> None:
        self.applied = 0
        self.reverted: list[dict[str, Any]] = []

    def undo_data(self, session_id: int, ifindex: int, ifname: str) -> dict[str, Any]:
        return {"backend": self.name, "ifname": ifname}

    def apply(self, *args: Any) -> None:
        self.applied += 1
        raise dnsmod.DnsError("backend failed half-way")

    def revert(self, session_id: int, data: dict[str, Any]) -> None:
        self.reverted.append(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def monitor(tmp_path: Path) -> Any:
    rtnl = FakeRtnl()
    dns = FailingDns()
    mon = Monitor(str(tmp_path / "journal.sqlite3"), platform=platform.linux(), cgroups=None,
                  rtnl_factory=lambda: rtnl,  # type: ignore[arg-type,return-value]
                  dns_factory=lambda update: dns)  # type: ignore[arg-type,return-value]
    mon.test_rtnl, mon.test_dns = rtnl, dns  # type: ignore[attr-defined]
    yield mon
    mon.close()


LANE = ("test", 0)


def begin(mon: Monitor) -> int:
    # The monitor thread is idle between the jobs these tests wait for: the journal may
    # be read and written from the test's thread meanwhile.
    return mon.journal.new_session(1000, 1, {})


def apply(mon: Monitor, sid: int, tun: int, ops: Sequence[rq.Operation]) -> list[Any]:
    result: list[Any] = mon.submit_sync(LANE, Apply(sid, tun, tuple(ops))).result()
    return result


def undo(mon: Monitor, sid: int) -> list[str]:
    return list(mon.submit_sync(LANE, Undo(sid)).result().problems)


def leftovers(mon: Monitor) -> list[Any]:
    return mon.journal.sessions()


def kinds(mon: Monitor, session: int) -> list[str]:
    return [c.kind for c in mon.journal.changes(session)]


def test_firewall_create_failure_leaves_nothing_and_is_not_undone_twice(
        monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    scripts: list[str] = []

    def nft(script: str) -> None:
        scripts.append(script)
        if script.startswith("create table"):
            raise firewall.NftError(errno.EIO, "nft: injected failure")

    monkeypatch.setattr(firewall, "run_nft", nft)
    sid = begin(monitor)
    [res] = apply(monitor, sid, TUN, [rq.SetBlock(flags=1, previous=0)])
    assert res.error != 0 and res.change_id is None
    assert "nft" not in kinds(monitor, sid)
    assert undo(monitor, sid) == []
    assert not any(s.startswith("delete table") for s in scripts)  # nothing to free twice
    assert leftovers(monitor) == []


def test_firewall_replace_failure_keeps_the_record_and_undo_deletes_once(
        monitor: Monitor, monkeypatch: pytest.MonkeyPatch) -> None:
    scripts: list[str] = []

    def nft(script: str) -> None:
        scripts.append(script)
        if script.startswith("delete table") and "\ntable inet" in script:
            raise firewall.NftError(errno.EIO, "nft: injected failure on replace")

    monkeypatch.setattr(firewall, "run_nft", nft)
    sid = begin(monitor)
    [ok] = apply(monitor, sid, TUN, [rq.SetBlock(flags=1, previous=0)])
    assert ok.error == 0
    [bad] = apply(monitor, sid, TUN, [rq.SetBlock(flags=3, previous=1)])
    assert bad.error != 0
    assert kinds(monitor, sid).count("nft") == 1
    scripts.clear()
    assert undo(monitor, sid) == []
    assert scripts == [f"delete table inet {firewall.table_name(sid)}\n"]


def test_dns_backend_failure_half_way_is_reverted_once(monitor: Monitor) -> None:
    from iservice.policy.dns import DnsState

    dns: FailingDns = monitor.test_dns  # type: ignore[attr-defined]
    sid = begin(monitor)
    state = DnsState(servers4=(IPv4Address("10.8.0.1"),), domains=("corp.example",))
    [res] = apply(monitor, sid, 1, [rq.SetDns(state=state, previous=DnsState())])
    assert res.error != 0
    assert dns.applied == 1 and len(dns.reverted) == 1  # what it half did is reverted
    assert "dns" not in kinds(monitor, sid)
    assert undo(monitor, sid) == []
    assert len(dns.reverted) == 1  # and not a second time


def test_netlink_batch_failing_half_way_journals_only_what_was_made(monitor: Monitor) -> None:
    rtnl: FakeRtnl = monitor.test_rtnl  # type: ignore[attr-defined]
    rtnl.fail_dst = {"192.0.2.2/32"}
    sid = begin(monitor)
    gw = IPv4Address("198.18.0.1")
    ops = [rq.AddRoute(rq.RouteKey(ip_network(f"192.0.2.{i}/32"), True, -1), 3, gw)
           for i in (1, 2, 3)]
    results = apply(monitor, sid, TUN, ops)
    assert [r.error for r in results] == [0, 5010, 0]
    assert kinds(monitor, sid) == ["route", "route"]
    rtnl.routes.clear()
    assert undo(monitor, sid) == []
    assert sorted(rtnl.routes) == [(False, "192.0.2.1/32"), (False, "192.0.2.3/32")]


def test_an_undo_that_fails_is_kept_for_the_next_start(monitor: Monitor) -> None:
    """A change whose undo fails stays journaled (with its session) and is retried."""
    sid = begin(monitor)
    monitor.journal.record(sid, "nft", {"table": "iservice_99"})
    calls: list[str] = []
    real = firewall.delete_table

    def failing(name: str) -> None:
        calls.append(name)
        raise firewall.NftError(errno.EIO, "nft: injected failure")

    firewall.delete_table = failing  # type: ignore[assignment]
    try:
        problems = undo(monitor, sid)
    finally:
        firewall.delete_table = real  # type: ignore[assignment]
    assert calls == ["iservice_99"] and any("kept" in p for p in problems)
    assert kinds(monitor, sid) == ["nft"]
    assert [s.id for s in leftovers(monitor)] == [sid]
    # the next start: the retry works, and the session is gone
    retried: list[str] = []
    firewall.delete_table = retried.append  # type: ignore[assignment]
    try:
        assert undo(monitor, sid) == []
    finally:
        firewall.delete_table = real  # type: ignore[assignment]
    assert retried == ["iservice_99"] and leftovers(monitor) == []
