"""The pure parts of running on several workers: how a global batch is
shared among ranks, and when the Ray cluster has room for a job."""

from __future__ import annotations

import pytest

from openft.config import load_settings
from openft.scheduler.executors.ray import RayExecutor, Resources
from openft.training.team import Team


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_ranks_share_every_example_once_in_order(size: int) -> None:
    batch = list(range(10))
    shares = [Team(rank, size).share(batch) for rank in range(size)]
    assert [x for share in shares for x in share] == batch


def test_a_rank_may_get_nothing_when_the_batch_is_small() -> None:
    assert [Team(rank, 4).share([1, 2]) for rank in range(4)] == [[1], [2], [], []]


NODES = [{"CPU": 0.0}, {"CPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}]


@pytest.mark.parametrize(
    ("resources", "free", "why"),
    [
        (Resources(1, 2, 0), {"CPU": 6.0, "GPU": 1.0}, None),
        (Resources(2, 2, 0), {"CPU": 6.0}, None),
        (Resources(1, 1, 1), {"CPU": 6.0, "GPU": 1.0}, None),
        (Resources(1, 8, 0), {"CPU": 6.0}, "no node of the Ray cluster has that much"),
        (Resources(2, 1, 1), {"CPU": 6.0, "GPU": 1.0}, "the Ray cluster has 6 CPU, 1 GPU free now"),
        (Resources(1, 1, 2), {"CPU": 6.0, "GPU": 1.0}, "no node"),
        (Resources(4, 2, 0), {"CPU": 6.0}, "the Ray cluster has 6 CPU free now"),
    ],
)
def test_room_on_the_cluster(resources: Resources, free: dict, why: str | None) -> None:
    found = RayExecutor.shortfall(resources, NODES, free)
    if why is None:
        assert found is None
    else:
        assert found is not None and why in found


def test_a_jobs_resources_fall_back_to_the_server_defaults() -> None:
    executor = RayExecutor(load_settings(ray_workers=2, ray_cpus_per_worker=3, ray_gpus_per_worker=0.5))
    assert executor.resources(None) == Resources(2, 3.0, 0.5)
    assert executor.resources({"workers": 4, "gpus_per_worker": 0}) == Resources(4, 3.0, 0.0)
    assert str(Resources(2, 1, 1)) == "2 workers x (1 CPU, 1 GPU)"
