"""The training island's side of a job on a Ray cluster.

The executor (``openft.scheduler.executors.ray``) creates a :class:`Channel`
actor next to itself and starts the training as Ray work; the training
reports through the channel exactly what a local process writes on its
stdout (the records of ``training.report``), and reads stop requests from
it between steps. Nothing here opens the database: a Ray node needs the
blob store (``RunConfig.storage_url``) and nothing else.

* one worker: :class:`OneWorker`, a Ray actor holding the job's resources
  (``num_cpus`` / ``num_gpus``) that runs the recipe in its process;
* N workers: :func:`train_rank` is Ray Train's ``train_loop_per_worker``
  (``TorchTrainer``; gloo on CPU, NCCL on GPU): every rank runs the recipe
  as one rank of a :class:`~openft.training.team.Team`; rank 0 reports
  through the channel.

Ray is imported only inside these functions: the module loads without it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from openft.training.config import RunConfig
from openft.training.records import FailedRecord, Record
from openft.training.report import Reporter, StopKind
from openft.training.team import SOLO, Team


class Channel:
    """Progress records out, stop requests in (an async Ray actor with no CPU)."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._stop: StopKind | None = None

    async def put(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        self._arrived.set()

    async def take(self, timeout: float) -> list[dict[str, Any]]:
        """The records so far, waiting up to ``timeout`` seconds for the first one."""
        if not self._records:
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                pass
        records, self._records = self._records, []
        self._arrived.clear()
        return records

    async def request_stop(self, kind: StopKind) -> None:
        if self._stop != "cancel":
            self._stop = kind

    async def stop_requested(self) -> StopKind | None:
        return self._stop


class ChannelReporter(Reporter):
    """Records go to the channel actor (in order: one caller, one actor)."""

    def __init__(self, channel: Any):
        super().__init__()
        self._channel = channel

    def _emit(self, record: dict[str, Any]) -> None:
        self._channel.put.remote(record)

    def stop_requested(self) -> StopKind | None:
        import ray

        return ray.get(self._channel.stop_requested.remote(), timeout=60)  # type: ignore[no-any-return]


class RankReporter(Reporter):
    """Ranks other than 0 report nothing; a failure on one of them raises, so
    Ray Train ends the whole group instead of leaving rank 0 waiting."""

    def emit(self, record: Record) -> None:
        if isinstance(record, FailedRecord):
            raise RuntimeError(f"training rank failed: {record.message}")


def where() -> dict[str, Any]:
    """This process's Ray node, for events and logs."""
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}


def _describe(place: dict[str, Any]) -> str:
    return f"node {place['node_id'][:12]} ({place['host']}, pid {place['pid']})"


class OneWorker:
    """A one-worker job: this actor's process is the training process."""

    def train(self, config: dict[str, Any], channel: Any) -> None:
        from openft.training.run import reproducible_math, run

        reproducible_math()
        reporter = ChannelReporter(channel)
        reporter.event(f"Training on Ray {_describe(where())}", data={"ray": [where()]})
        run(RunConfig.from_dict(config), reporter, SOLO)


def train_rank(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: one data-parallel rank."""
    from openft.training.run import reproducible_math, run

    reproducible_math()
    team = Team.from_process_group()
    channel = loop_config["channel"]
    reporter: Reporter = ChannelReporter(channel) if team.is_main else RankReporter()
    places = team.gather(where())
    if team.is_main:
        ranks = ", ".join(f"rank {i} on {_describe(p)}" for i, p in enumerate(places))
        reporter.event(
            f"Training on {team.size} data-parallel Ray workers: {ranks}", data={"ray": places}
        )
    run(RunConfig.from_dict(loop_config["config"]), reporter, team)
