"""``aio.FairGate``: the as-user check threads' gate serves waiting users round robin."""

from __future__ import annotations

import asyncio

import pytest

from iservice.aio import FairGate


async def _run(gate: FairGate, key: str, order: list[str], go: asyncio.Event) -> None:
    async with gate.hold(key):
        order.append(key)
        await go.wait()


def test_a_burst_of_one_key_does_not_queue_the_others_behind_it() -> None:
    async def main() -> list[str]:
        gate = FairGate(1)
        order: list[str] = []
        go = asyncio.Event()
        # user a sends 5 at once, then b and c one each
        tasks = [asyncio.create_task(_run(gate, k, order, go))
                 for k in ["a"] * 5 + ["b", "c"]]
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["a", "a", "b", "c", "a", "a", "a"]


def test_at_most_slots_hold_it_at_a_time() -> None:
    async def main() -> int:
        gate = FairGate(2)
        inside = peak = 0

        async def one(key: int) -> None:
            nonlocal inside, peak
            async with gate.hold(key % 3):
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0)
                inside -= 1
        await asyncio.gather(*(one(k) for k in range(20)))
        assert gate.waiting == 0
        return peak

    assert asyncio.run(main()) == 2


def test_a_cancelled_waiter_gives_up_its_place_and_a_cancelled_holder_its_slot() -> None:
    async def main() -> list[str]:
        gate = FairGate(1)
        order: list[str] = []
        go = asyncio.Event()
        first = asyncio.create_task(_run(gate, "a", order, go))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_run(gate, "b", order, go))
        later = asyncio.create_task(_run(gate, "c", order, go))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        assert gate.waiting == 1
        first.cancel()  # the holder: its slot goes to c
        go.set()
        await asyncio.gather(later)
        for t in (first, waiter):
            with pytest.raises(asyncio.CancelledError):
                await t
        # the gate is free again
        async with gate.hold("d"):
            order.append("d")
        return order

    assert asyncio.run(main()) == ["a", "c", "d"]


def test_a_slot_granted_to_a_cancelled_waiter_passes_on() -> None:
    async def main() -> list[str]:
        gate = FairGate(1)
        order: list[str] = []
        go = asyncio.Event()
        go.set()
        async with gate.hold("a"):
            granted = asyncio.create_task(_run(gate, "b", order, go))
            after = asyncio.create_task(_run(gate, "c", order, go))
            await asyncio.sleep(0)
            assert gate.waiting == 2
        # released: the slot was granted to b, which is cancelled before it runs
        granted.cancel()
        await after
        with pytest.raises(asyncio.CancelledError):
            await granted
        async with gate.hold("d"):
            order.append("d")
        return order

    assert asyncio.run(main()) == ["c", "d"]


def test_no_slots_is_refused() -> None:
    with pytest.raises(ValueError):
        FairGate(0)


def test_one_key_never_holds_more_than_its_cap() -> None:
    """With ``per_key=1`` a key whose holder is stuck keeps one slot at most: the other
    keys pass through the rest, even when that key asked first and more often."""
    async def main() -> list[str]:
        gate = FairGate(2, per_key=1)
        order: list[str] = []
        stuck = asyncio.Event()  # never set while the others run
        go = asyncio.Event()
        stuck_tasks = [asyncio.create_task(_run(gate, "a", order, stuck)) for _ in range(3)]
        await asyncio.sleep(0)
        others = [asyncio.create_task(_run(gate, k, order, go)) for k in "bcd"]
        await asyncio.sleep(0)
        go.set()
        # (without the cap two stuck "a"s hold both slots and the others never run)
        await asyncio.wait_for(asyncio.gather(*others), 5)
        assert order == ["a", "b", "c", "d"], order  # one "a" inside, the rest waiting
        stuck.set()
        await asyncio.gather(*stuck_tasks)
        assert gate.waiting == 0
        return order

    assert asyncio.run(main()) == ["a", "b", "c", "d", "a", "a"]
