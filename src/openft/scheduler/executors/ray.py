"""Ray executor (``OPENFT_EXECUTOR=ray``): each job is Ray work with declared resources.

The worker process that claimed a job is a Ray driver (``ray.init`` on
``OPENFT_RAY_ADDRESS``). For each run it creates a
:class:`~openft.training.ray_run.Channel` actor on the head node and starts
the training:

* ``workers == 1``: one :class:`~openft.training.ray_run.OneWorker` actor
  with ``num_cpus`` / ``num_gpus`` of the job, on whatever node has them;
* ``workers > 1``: Ray Train's ``TorchTrainer`` (one rank per worker, DDP
  process group on gloo or NCCL), driven from a small actor of this driver.

A :class:`RayRun` offers what a local run does (``records``, ``stop``,
``wait``): records come from the channel, a stop request goes into it
(rank 0 reads it between steps), and after the grace period the actor is
killed, which also ends everything it owns (Ray Train's controller and
workers). Everything the run starts is owned by this driver, so when the
worker process dies, Ray ends its runs too (and the lease re-queues the job).

One-worker jobs skip Ray Train on purpose: setting up its controller and
worker group costs about 12 s on a 2-core machine before the first step, for
a process group one worker does not need (see ``bench/ray_overhead.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from openft.config import Settings
from openft.training import records
from openft.training.config import RunConfig
from openft.training.records import Record
from openft.training.report import StopKind

log = logging.getLogger(__name__)


ON_HEAD = {"node:__internal_head__": 0.001}
"""A sliver of the resource only the head node has: schedules an actor there."""


class RayUnavailable(Exception):
    """The Ray cluster cannot be reached (or Ray is not installed)."""


@dataclass(frozen=True)
class Resources:
    """What one job runs on: ``workers`` ranks of ``cpus`` and ``gpus`` each."""

    workers: int
    cpus: float
    gpus: float

    def bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus}
        if self.gpus:
            bundle["GPU"] = self.gpus
        return bundle

    def __str__(self) -> str:
        per = ", ".join(f"{v:g} {k}" for k, v in self.bundle().items())
        return f"{self.workers} worker{'s' if self.workers > 1 else ''} x ({per})"


class RayExecutor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.node_id: str | None = None

    # ---------------------------------------------------------------- cluster
    def connect(self) -> None:
        """Join the cluster as a driver; :class:`RayUnavailable` with the reason if we cannot."""
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable("OPENFT_EXECUTOR=ray needs Ray: pip install 'openft[ray]'") from exc
        if ray.is_initialized():
            self.node_id = ray.get_runtime_context().get_node_id()
            return
        _probe(self.settings.ray_address)
        try:
            ray.init(
                address=self.settings.ray_address, namespace="openft", log_to_driver=False,
                configure_logging=False, include_dashboard=False,
            )
        except Exception as exc:
            raise RayUnavailable(
                f"Cannot reach the Ray cluster at OPENFT_RAY_ADDRESS={self.settings.ray_address!r}: "
                f"{type(exc).__name__}: {exc}. Start one with `ray start --head` (see the README, "
                "'Run on a cluster')."
            ) from exc
        self.node_id = ray.get_runtime_context().get_node_id()
        log.info("connected to Ray cluster %s as a driver on node %s: %s", self.settings.ray_address,
                 self.node_id, ray.cluster_resources())

    def resources(self, requested: dict[str, Any] | None) -> Resources:
        """A job's resources: what it asked for, the server's defaults for the rest."""
        requested = requested or {}
        return Resources(
            workers=int(requested.get("workers") or self.settings.ray_workers),
            cpus=float(requested.get("cpus_per_worker") or self.settings.ray_cpus_per_worker),
            gpus=float(requested.get("gpus_per_worker", self.settings.ray_gpus_per_worker) or 0),
        )

    def snapshot(self) -> tuple[list[dict[str, float]], dict[str, float]]:
        """(total resources of each alive node, free resources of the cluster). Blocking."""
        import ray

        return [n["Resources"] for n in ray.nodes() if n.get("Alive")], ray.available_resources()

    async def admission(self) -> Admission:
        """Which queued jobs the cluster can start now (a snapshot taken once per claim).
        While the cluster cannot be reached, none: jobs wait queued."""
        try:
            nodes, free = await asyncio.wait_for(asyncio.to_thread(self.snapshot), 30)
        except Exception as exc:
            log.warning("Ray cluster unreachable (%s); jobs stay queued", exc)
            return Admission(self, [], {}, reachable=False)
        return Admission(self, nodes, free)

    @staticmethod
    def shortfall(resources: Resources, nodes: list[dict[str, float]], free: dict[str, float]) -> str | None:
        """None if the cluster has room for ``resources`` now, else why not.
        Every worker must fit on one alive node, and all of them in what is free."""
        bundle = resources.bundle()
        largest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in bundle}
        fits_a_node = all(any(n.get(k, 0.0) >= v for n in nodes) for k, v in bundle.items()) and any(
            all(n.get(k, 0.0) >= v for k, v in bundle.items()) for n in nodes
        )
        enough = all(free.get(k, 0.0) + 1e-9 >= v * resources.workers for k, v in bundle.items())
        if fits_a_node and enough:
            return None
        have = ", ".join(f"{free.get(k, 0.0):g} {k}" for k in bundle)
        biggest = ", ".join(f"{largest[k]:g} {k}" for k in bundle)
        if not fits_a_node:
            return (f"it needs {resources}, but no node of the Ray cluster has that much "
                    f"(largest node: {biggest}); add a node that has")
        return f"it needs {resources}; the Ray cluster has {have} free now"


    # ------------------------------------------------------------------ runs
    async def launch(self, config: RunConfig, attempt: int, requested: dict[str, Any] | None = None) -> RayRun:
        import ray

        from openft.training.ray_run import Channel, OneWorker

        resources = self.resources(requested)
        config.threads = max(1, int(resources.cpus))
        config.nice = 0
        name = f"{config.job_id}-attempt-{attempt}"
        # The channel and Ray Train's driver live on the head node: it lasts as long as
        # the cluster does, so losing any other node never takes a run's bookkeeping with it.
        channel = ray.remote(Channel).options(num_cpus=0, resources=ON_HEAD, name=f"{name}-channel").remote()
        payload = config.to_dict()
        if resources.workers == 1:
            actor = ray.remote(OneWorker).options(
                num_cpus=resources.cpus, num_gpus=resources.gpus, name=name, max_restarts=0,
            ).remote()
            done = actor.train.remote(payload, channel)
        else:
            actor = ray.remote(_DataParallel).options(
                num_cpus=0, resources=ON_HEAD, name=name, max_restarts=0,
            ).remote()
            done = actor.fit.remote(payload, channel, resources.workers, resources.cpus, resources.gpus, name)
        return RayRun(name, channel, actor, done)


class Admission:
    """A claim's view of the cluster: ``accepts`` admits jobs that fit and
    notes in ``waiting`` (job id -> reason) the ones that do not."""

    def __init__(self, executor: RayExecutor, nodes: list[dict[str, float]], free: dict[str, float],
                 *, reachable: bool = True):
        self.executor, self.nodes, self.free, self.reachable = executor, nodes, free, reachable
        self.waiting: dict[str, str] = {}

    def __call__(self, job: Any) -> bool:
        if not self.reachable:
            return False
        why = self.executor.shortfall(self.executor.resources(job.resources), self.nodes, self.free)
        if why is not None:
            self.waiting[job.id] = why
        return why is None


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when a host:port address does not answer (``ray.init`` would
    retry for minutes). 'auto' is left to Ray, which fails fast by itself."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayUnavailable(
            f"Cannot reach the Ray cluster at OPENFT_RAY_ADDRESS={address!r}: nothing answers at "
            f"{host}:{port} ({exc}). Start one with `ray start --head` (see the README, "
            "'Run on a cluster')."
        ) from exc


class _DataParallel:
    """Drives one Ray Train run (``fit`` blocks until it ends)."""

    def fit(self, config: dict[str, Any], channel: Any, workers: int, cpus: float, gpus: float, name: str) -> None:
        from ray.train import FailureConfig, ScalingConfig
        from ray.train import RunConfig as TrainRunConfig
        from ray.train.torch import TorchTrainer

        from openft.training.ray_run import train_rank

        per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        trainer = TorchTrainer(
            train_rank,
            train_loop_config={"config": config, "channel": channel},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus), resources_per_worker=per_worker),
            # openft re-queues a failed run itself (same job, next attempt, from the last state).
            run_config=TrainRunConfig(name=name, failure_config=FailureConfig(max_failures=0)),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error


class RayRun:
    """One run on Ray, as the worker supervises it."""

    def __init__(self, name: str, channel: Any, actor: Any, done: Any):
        self.label = f"Ray actor {name}"
        self._channel, self._actor = channel, actor
        self._done = asyncio.ensure_future(self._outcome(done))
        self.failure: str | None = None

    async def _outcome(self, done: Any) -> int:
        try:
            await done
            return 0
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.warning("%s ended with %s", self.label, exc)
            return 1

    async def records(self) -> AsyncIterator[Record]:
        while True:
            finished = self._done.done()
            try:
                batch = await self._channel.take.remote(0.0 if finished else 1.0)
            except Exception as exc:  # the channel's node died: the run is lost
                log.warning("%s: progress channel lost: %s", self.label, exc)
                return
            for record in batch:
                try:
                    yield records.parse(record)
                except records.UnknownRecord as exc:
                    log.warning("%s: %s", self.label, exc)
            if finished and not batch:
                return

    async def stop(self, kind: StopKind, grace: float) -> None:
        if self._done.done():
            return
        try:
            await self._channel.request_stop.remote(kind)
            await asyncio.wait_for(asyncio.shield(self._done), grace)
        except Exception:
            log.warning("%s did not %s within %.1fs; killing it", self.label, kind, grace)
            self.kill()

    def kill(self) -> None:
        import ray

        for handle in (self._actor, self._channel):
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # already gone
                pass

    async def wait(self) -> int:
        """The run's outcome (0: the training returned); its actors are gone afterwards."""
        code = await self._done
        self.kill()  # a finished one-worker actor would otherwise keep its CPUs
        return code

    def exit_reason(self, code: int) -> str:
        return self.failure or f"exit code {code}"
