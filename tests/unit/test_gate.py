"""The database gate admits waiters strictly in arrival order, and a waiter
cancelled while waiting (or just as it was let in) loses no place."""

from __future__ import annotations

import asyncio

from openft.api.gate import FairGate


def test_places_go_to_waiters_in_arrival_order_without_barging() -> None:
    async def scenario() -> list[str]:
        gate, order = FairGate(1), []
        release = asyncio.Event()

        async def holder() -> None:
            async with gate:
                await release.wait()

        async def waiter(name: str) -> None:
            async with gate:
                order.append(name)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(waiter(f"w{i}")) for i in range(5)]
        await asyncio.sleep(0)
        release.set()
        await first
        # A newcomer arriving as the place is freed queues behind the waiters.
        late = asyncio.create_task(waiter("late"))
        await asyncio.gather(*waiters, late)
        return order

    assert asyncio.run(scenario()) == ["w0", "w1", "w2", "w3", "w4", "late"]


def test_cancelled_waiters_do_not_leak_places() -> None:
    async def scenario() -> int:
        gate = FairGate(2)
        release = asyncio.Event()

        async def hold() -> None:
            async with gate:
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0)
        doomed = [asyncio.create_task(hold()) for _ in range(3)]
        await asyncio.sleep(0)
        doomed[0].cancel()  # cancelled while waiting
        release.set()
        await asyncio.sleep(0)
        doomed[1].cancel()  # may be cancelled just as it was handed a place
        await asyncio.gather(*holders, *doomed, return_exceptions=True)
        return gate._free

    assert asyncio.run(scenario()) == 2
