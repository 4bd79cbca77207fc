"""A capacity admits at most ``total`` holders and ``per_org`` of one
organisation; past either it refuses at once with a 429 and Retry-After,
and a slot comes back when its holder leaves, however it leaves."""

from __future__ import annotations

import anyio
import pytest

from openft.errors import RateLimited
from openft.services.capacity import Capacity


def test_one_organisation_cannot_take_more_than_its_share() -> None:
    async def scenario() -> None:
        capacity = Capacity("grader runs", total=3, per_org=2, retry_after_seconds=7)
        async with capacity.slot("a"), capacity.slot("a"):
            with pytest.raises(RateLimited) as refused:
                async with capacity.slot("a"):
                    pass
            assert refused.value.retry_after == 7 and refused.value.status_code == 429
            assert "your organisation (at most 2)" in refused.value.message
            async with capacity.slot("b"):  # another organisation still gets the last slot
                with pytest.raises(RateLimited, match="as many grader runs as it can"):
                    async with capacity.slot("c"):
                        pass
        assert capacity.in_use == 0

    anyio.run(scenario)


def test_a_slot_comes_back_when_its_holder_fails() -> None:
    async def scenario() -> None:
        capacity = Capacity("exports", total=1, per_org=1)
        with pytest.raises(ValueError):
            async with capacity.slot("a"):
                raise ValueError("the merge failed")
        async with capacity.slot("b"):
            assert capacity.in_use == 1

    anyio.run(scenario)


def test_blocking_work_runs_on_the_capacitys_own_threads() -> None:
    async def scenario() -> None:
        capacity = Capacity("graders", total=2, per_org=2)
        running = 0
        most = 0

        def work() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            anyio.from_thread.run(anyio.sleep, 0.05)
            running -= 1

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(capacity.run_sync, work)
        assert most == 2

    anyio.run(scenario)
