"""Runs of routes (``RouteRun``, ``AddTunRoutes``): a forwarded environment's routes through
the session's tun made, decided, reserved and settled together must give exactly what
the same routes one message at a time give — the requests, every decision and refusal,
the records, the owners, the audit lines and the environment's one answer.

Each property runs the same input both ways (``produce(..., runs=False)`` /
``EnvStream(runs=False)`` is the one-at-a-time path) and compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iservice import errors
from iservice.envstream import EnvStream
from iservice.pipeline import CHANNEL_BATCH, Pipeline
from iservice.policy.ownership import MACHINE, Owners, RouteKey, RouteTable
from iservice.policy.requests import (
    RUN_ROUTES,
    AddRoute,
    AddTunRoutes,
    Limits,
    Operation,
    RequestPolicy,
    RouteRun,
    SessionRecords,
)
from iservice.produce import Context, EnvError, _v6_network, _v6_text, produce
from iservice.wire import msg as m

TUN = m.Interface(7, "istun7")
CTX = Context(TUN.name, TUN.index)


def expand(msgs: list[m.Message | RouteRun]) -> list[m.Message]:
    out: list[m.Message] = []
    for x in msgs:
        if isinstance(x, RouteRun):
            out += [x.message(i) for i in range(len(x))]
        else:
            out.append(x)
    return out


# -- the producer ------------------------------------------------------------------------

V4 = st.sampled_from(["10.1.0.0", "10.1.0.7", "100.64.1.64", "0.0.0.0", "255.255.255.255",
                      "01.2.3.4", "1.2.3", "x"])
MASKS = st.sampled_from(["255.255.255.0", "255.255.255.192", "255.0.0.0", "0.0.0.0",
                         "255.255.255.255", "24", "0.0.0.255", "255.0.255.0"])
V6 = st.sampled_from(["fd10::/56", "fd10::1/56", "fd10::/056", "fd10::", "::/0", "2001:db8::/129",
                      "::ffff:1.2.3.4/128", "::1.2.3.4/120", "fe80::1%eth0/64", "FD10:0::/48",
                      "fd10:0:0:1::/64", "1:0:0:2:0:0:0:3/128", "zz::/8", "fd10::/ 56"])
GW6 = st.sampled_from(["", "fd00::1", "10.8.0.1", "fe80::1%2", "bad"])
METRIC = st.sampled_from([None, "", "-1", "0", "5", "-2", "x"])


@st.composite
def route_envs(draw: Any) -> dict[str, str]:
    env = {"dev": draw(st.sampled_from([TUN.name, "other"]))}
    if draw(st.booleans()):
        env["route_net_gateway"] = "192.0.2.1"
    if draw(st.booleans()):
        env["net_gateway_ipv6"] = draw(st.sampled_from(["fd00::1", "bad", "10.8.0.1", ""]))
    for n in range(1, draw(st.integers(0, 8)) + 1):
        env[f"route_network_{n}"] = draw(V4)
        if draw(st.booleans()):
            env[f"route_netmask_{n}"] = draw(MASKS)
        env[f"route_gateway_{n}"] = draw(st.sampled_from(["10.8.0.1", "192.0.2.1", "", "1.2"]))
        metric = draw(METRIC)
        if metric is not None:
            env[f"route_metric_{n}"] = metric
    for n in range(1, draw(st.integers(0, 8)) + 1):
        env[f"route_ipv6_network_{n}"] = draw(V6)
        gw = draw(GW6)
        if gw:
            env[f"route_ipv6_gateway_{n}"] = gw
        metric = draw(METRIC)
        if metric is not None:
            env[f"route_ipv6_metric_{n}"] = metric
    return env


def outcome(env: dict[str, str], runs: bool, ctx: Context = CTX) -> object:
    try:
        made = produce(m.EVENT_ROUTE_UP, env, ctx, 9, runs=runs)
    except EnvError as exc:
        return ("error", exc.reason)
    return (expand(made.messages), made.unmade, made.notes)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(env=route_envs(), max_routes=st.integers(1, 20))
def test_runs_expand_to_exactly_the_messages(env: dict[str, str], max_routes: int) -> None:
    ctx = Context(TUN.name, TUN.index, max_routes=max_routes)
    assert outcome(env, True, ctx) == outcome(env, False, ctx)


def test_a_run_holds_the_tun_routes_and_is_cut_by_the_others() -> None:
    env = {"dev": TUN.name, "route_net_gateway": "192.0.2.1",
           "route_network_1": "10.1.0.0", "route_netmask_1": "255.255.0.0",
           "route_network_2": "10.2.0.9", "route_netmask_2": "255.255.255.0",
           "route_network_3": "198.51.100.7", "route_gateway_3": "192.0.2.1",  # bypass
           "route_network_4": "10.4.0.0", "route_netmask_4": "255.255.0.0",
           "route_metric_4": "5",  # a metric: a message of its own
           "route_network_5": "10.5.0.0", "route_netmask_5": "255.255.0.0",
           "route_ipv6_network_1": "fd10::/56", "route_ipv6_network_2": "fd10:0:0:100::1/56"}
    made = produce(m.EVENT_ROUTE_UP, env, CTX, 3, runs=True).messages
    kinds = [len(x) if isinstance(x, RouteRun) else type(x).__name__ for x in made]
    assert kinds == [2, "RouteMsg", "RouteMsg", 1, 2]
    first, v6 = made[0], made[-1]
    assert isinstance(first, RouteRun) and isinstance(v6, RouteRun)
    assert first.texts == ["10.1.0.0/16", "10.2.0.0/24"]  # host bits cleared
    assert v6.texts == ["fd10::/56", "fd10:0:0:100::/56"] and v6.version == 6


@settings(max_examples=2000, deadline=None)
@given(value=st.one_of(st.integers(0, 2**128 - 1), st.integers(0, 2**48 - 1).map(lambda x: x << 80),
                       st.lists(st.sampled_from([0, 1, 0xFFFF]), min_size=8, max_size=8).map(
                           lambda ws: sum(w << (16 * i) for i, w in enumerate(ws)))),
       plen=st.integers(0, 128))
def test_ipv6_text_and_parsing_are_ipaddress_s(value: int, plen: int) -> None:
    net = IPv6Network((value & ~((1 << (128 - plen)) - 1), plen))
    assert _v6_text(int(net.network_address), plen) == str(net)
    for text in (str(net), f"{IPv6Address(value)}/{plen}", net.exploded,
                 f"{IPv6Address(value)}/{plen}".upper()):
        got = _v6_network(text)
        assert got is None or got == (int(net.network_address), plen)
    assert _v6_network(str(net)) == (int(net.network_address), plen)


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet="0123456789abcdefABCDEF:./%x ", max_size=24))
def test_ipv6_parsing_answers_only_what_ipaddress_answers_the_same(text: str) -> None:
    got = _v6_network(text)
    if got is None:
        return
    net = IPv6Network(text, strict=False)  # must not raise: the fast parse took it
    assert got == (int(net.network_address), net.prefixlen)


# -- deciding and settling ----------------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    """The monitor's answer (``monitor.Applied``'s shape)."""
    error: int = 0
    change_id: int | None = None
    errors: tuple[int, ...] | None = None


class Monitor:
    """Stands in for the monitor thread (a test double: no journal, no kernel): numbers
    the fresh adds in order as the journal would and fails the adds of ``failing``."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.next_id = 100
        self.applied: list[Operation] = []

    def add(self, text: str) -> int:
        return errors.ERROR_OBJECT_ALREADY_EXISTS if text in self.failing else 0

    def results(self, ops: list[Operation]) -> list[Done]:
        out = []
        for op in ops:
            if isinstance(op, AddTunRoutes):
                first = self.next_id
                self.next_id += len(op.run)
                errs = tuple(self.add(t) for t in op.run.texts)
                out.append(Done(next((e for e in errs if e), 0), first,
                                errs if any(errs) else None))
                self.applied += expand_op(op)
            elif isinstance(op, AddRoute) and op.existing is None:
                out.append(Done(self.add(op.key.dst_text), self.next_id))
                self.next_id += 1
                self.applied.append(op)
            else:
                out.append(Done(0))
                self.applied.append(op)
        return out


def expand_op(op: AddTunRoutes) -> list[Operation]:
    run = op.run
    net = IPv4Network if run.version == 4 else IPv6Network
    return [AddRoute(RouteKey(net((v, p)), False, -1), op.oif, None, table=op.table)
            for v, p in zip(run.values, run.plens, strict=True)]


def env_chunks(env: dict[str, str], mid: int) -> list[tuple[int, bytes]]:
    data = b"".join(f"{k}={v}\0".encode() for k, v in env.items())
    size = m.ENV_DATA_SIZE
    parts = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    out = []
    for k, part in enumerate(parts):
        flags = (m.ENV_FIRST if k == 0 else 0) | (m.ENV_LAST if k == len(parts) - 1 else 0)
        raw = m.encode_message(m.EnvChunkMsg(m.MsgType.ISERVICE_ENV, mid, m.EVENT_ROUTE_UP,
                                             flags, part))
        out.append((len(raw), raw))
    return out


def session(owners: Owners, sid: int, uid: int, limits: Limits, runs: bool,
            admin: bool = False) -> Pipeline:
    policy = RequestPolicy(tun_ifindex=TUN.index + sid, tun_name=f"istun{sid}", limits=limits,
                           records=SessionRecords(RouteTable(), {}), owners=owners,
                           scope=MACHINE, session_id=sid, uid=uid, admin=admin)
    ctx = Context(f"istun{sid}", TUN.index + sid, max_routes=limits.max_routes + 64)
    envs = EnvStream(lambda: ctx, lambda *a, **k: None, runs=runs)
    return Pipeline(policy, owners=owners, scope=MACHINE, session_id=sid, uid=uid, envs=envs)


def serve(p: Pipeline, msgs: list[tuple[int, bytes]], mon: Monitor) -> dict[str, Any]:
    """Everything a session gives for ``msgs``: answers, acks, audit lines, denials."""
    p.feed(msgs)
    out: dict[str, Any] = {"acks": b"", "answers": [], "applied": [], "failed": [],
                           "denied": [], "steps": 0}
    while p.queued:
        step = p.next_batch(0.0)
        assert step.abort is None and step.need_default_route is None
        out["steps"] += 1
        settled = p.settle(step.batch, mon.results(step.batch.ops), "uid=1")
        out["acks"] += settled.acks
        out["answers"] += settled.answers
        out["applied"] += settled.applied
        out["failed"] += settled.failed
    out["denied"] = [(e, {k: v for k, v in f.items()}) for e, f in p.denials]
    del out["steps"]  # a held request (a duplicate) settles what came before: not compared
    return out


NETS = [f"10.{a}.{b}.0" for a in range(3) for b in (0, 1, 128)]


@st.composite
def scenario(draw: Any) -> dict[str, Any]:
    routes = draw(st.lists(st.tuples(st.sampled_from(NETS),
                                     st.sampled_from(["255.255.255.0", "255.255.0.0",
                                                      "255.255.255.128"])),
                           max_size=40))
    other = draw(st.lists(st.sampled_from([f"10.{a}.0.0/16" for a in range(3)]
                                          + [f"10.{a}.1.0/24" for a in range(3)]), max_size=3))
    return {"routes": routes, "other": other,
            "failing": draw(st.sets(st.sampled_from([f"10.{a}.{b}.0/24" for a in range(3)
                                                     for b in (0, 1, 128)]), max_size=3)),
            "max_routes": draw(st.integers(1, 45)),
            "per_user": draw(st.integers(1, 60)),
            "same_user": draw(st.booleans()),
            "admin": draw(st.booleans()),
            "v6": draw(st.booleans())}


def play(sc: dict[str, Any], runs: bool) -> tuple[Any, ...]:
    owners = Owners()
    limits = Limits(sc["max_routes"], 4, 2, max_routes_per_user=sc["per_user"])
    other_uid = 1000 if sc["same_user"] else 2000
    other = session(owners, 2, other_uid, Limits(100, 4, 2), runs)
    for net in sc["other"]:
        key = RouteKey(IPv4Network(net), False, -1)
        other.records.routes[key] = 5
    p = session(owners, 1, 1000, limits, runs, admin=sc["admin"])
    env = {"dev": "istun1"}
    for n, (net, mask) in enumerate(sc["routes"], 1):
        env[f"route_network_{n}"] = net
        env[f"route_netmask_{n}"] = mask
    if sc["v6"]:
        for n, (net, _) in enumerate(sc["routes"][:5], 1):
            env[f"route_ipv6_network_{n}"] = f"fd{net.split('.')[1]}::/64"
    mon = Monitor(sc["failing"])
    got = serve(p, env_chunks(env, 4), mon)
    table = dict(p.records.routes.items())
    return (got, mon.applied, table, dict(owners.routes_of_user), owners.count())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=scenario())
def test_a_run_gives_exactly_what_one_at_a_time_gives(sc: dict[str, Any]) -> None:
    """Refused routes in the middle (taking another session's, twice, over a limit) and
    kernel refusals: the same answer, ops, records, owners and audit lines."""
    assert play(sc, True) == play(sc, False)


def test_a_refused_route_in_the_middle_of_a_run() -> None:
    sc = {"routes": [("10.0.0.0", "255.255.255.0"), ("10.1.1.0", "255.255.255.0"),
                     ("10.0.1.0", "255.255.255.0"), ("10.0.0.0", "255.255.255.0"),
                     ("10.2.0.0", "255.255.255.0")],
          "other": ["10.1.0.0/16"], "failing": {"10.2.0.0/24"}, "max_routes": 10,
          "per_user": 10, "same_user": False, "admin": False, "v6": False}
    got, applied, table, per_user, count = play(sc, True)
    assert play(sc, False) == (got, applied, table, per_user, count)
    res = m.decode_env_result(got["answers"][0])
    # 5 routes: 10.1.1.0/24 takes part of the other session's, the second 10.0.0.0/24 is
    # a re-add (applied again), 10.2.0.0/24 the kernel refused
    assert (res.requests, res.refused, res.error_number) == (5, 2, errors.ERROR_ACCESS_DENIED)
    assert [k.dst_text for k in table] == ["10.0.0.0/24", "10.0.1.0/24"]
    assert len(got["applied"]) == 3 and len(got["failed"]) == 1
    assert 'what="add_route dst=10.0.0.0/24 bypass=False metric=-1 oif=8"' in got["applied"][0]
    assert [e for e, _ in got["denied"]] == ["denied"]


def test_a_large_run_is_cut_into_monitor_turns() -> None:
    owners = Owners()
    p = session(owners, 1, 1000, Limits(20_000, 4, 2), True)
    env = {"dev": "istun1"}
    for n in range(1, 10_001):
        env[f"route_network_{n}"] = f"100.{64 + (n >> 16)}.{n >> 8 & 255}.{n & 255}"
    p.feed(env_chunks(env, 4))
    sizes: list[list[int]] = []
    mon = Monitor(set())
    answers: list[bytes] = []
    while p.queued:
        step = p.next_batch(0.0)
        ops = step.batch.ops
        assert all(isinstance(op, AddTunRoutes) for op in ops)
        sizes.append([len(op.run) for op in ops if isinstance(op, AddTunRoutes)])
        answers += p.settle(step.batch, mon.results(ops), "uid=1").answers
    assert all(sum(s) <= CHANNEL_BATCH and max(s) <= RUN_ROUTES for s in sizes)
    assert sum(map(sum, sizes)) == 10_000 and len(p.records.routes) == 10_000
    res = m.decode_env_result(answers[0])
    assert (res.requests, res.refused, res.error_number) == (10_000, 0, 0)
    assert owners.routes_of_user[1000] == 10_000


def test_run_routes_fit_a_monitor_turn() -> None:
    from iservice.monitor import TURN_OPS
    assert RUN_ROUTES <= TURN_OPS


def test_a_run_the_journal_refused_frees_its_routes() -> None:
    owners = Owners()
    p = session(owners, 1, 1000, Limits(100, 4, 2), True)
    env = {"dev": "istun1", "route_network_1": "10.0.0.0", "route_netmask_1": "255.0.0.0",
           "route_network_2": "10.0.0.0", "route_netmask_2": "255.255.0.0"}
    p.feed(env_chunks(env, 4))
    step = p.next_batch(0.0)
    [op] = step.batch.ops
    assert isinstance(op, AddTunRoutes) and len(op.run) == 2
    assert owners.routes_of_user[1000] == 2 and len(p.records.routes) == 2
    # the journal could not take them: nothing journaled, each refused
    settled = p.settle(step.batch, [Done(errors.ERROR_DISK_FULL)], "uid=1")
    assert len(p.records.routes) == 0 and owners.routes_of_user[1000] == 0
    assert owners.count() == 0 and len(settled.failed) == 2
    res = m.decode_env_result(settled.answers[0])
    assert (res.refused, res.error_number) == (2, errors.ERROR_DISK_FULL)
