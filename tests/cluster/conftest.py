"""Fixtures of the cluster tier: a Ray cluster the suite starts on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require


@pytest.fixture(scope="package")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[object]:
    """A bounded Ray cluster on loopback for this package's tests (torn down
    after them, so the rest of the suite has the machine): a head with no CPUs
    and one 2-CPU node;
    nodes get the S3 credentials of the session's SeaweedFS (as real nodes would
    from their own environment)."""
    import tempfile

    from services import RayCluster

    require("ray")
    env = {k: v for k, v in request.getfixturevalue("seaweed").env.items() if k.startswith("AWS_")}
    # Unix socket paths must stay short: a short temp folder, not pytest's.
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")), env=env)
    try:
        cluster.start()
        cluster.add_node(2)
        yield cluster
    finally:
        cluster.stop()
