"""``POST /fine_tuning/jobs/estimate`` (openft extension): the checks of job
creation, then ``openft.training.estimate`` in a child process (the API
process never imports torch), one estimate at a time per server. Nothing is
created."""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from openft.config import Settings
from openft.domain import JobSpec
from openft.errors import InvalidRequest, ServerFailure
from openft.scheduler.executors.warm import Zygote, ZygoteUnavailable
from openft.services.jobs import check_job
from openft.services.models import ModelRegistry
from openft.training.config import RunConfig

ESTIMATE_TIMEOUT_SECONDS = 900
_ONE_AT_A_TIME = anyio.Semaphore(1)


def warm_jobs(settings: Settings) -> bool:
    """Whether this deployment's jobs start without paying the ML imports (the
    local executor's zygote): then the estimate leaves them out."""
    return settings.warm_start and settings.executor == "local"


def calibration_file(settings: Settings) -> Path:
    return settings.models_dir / "calibration.json"


async def estimate(transaction: Any, settings: Settings, registry: ModelRegistry, org_id: str,
                   spec: JobSpec, *, zygote: Zygote | None = None) -> dict[str, Any]:
    """``zygote``: the co-located worker's, when it has one; the estimate then
    forks from it instead of starting a new Python (seconds of imports)."""
    async with transaction() as session:
        checked = await check_job(session, registry, org_id, spec, executor=settings.executor)
    config = RunConfig.create(
        settings, job_id=f"estimate-{secrets.token_hex(4)}", base=checked.base,
        training_file_key=checked.training.storage_key,
        validation_file_key=checked.validation.storage_key if checked.validation is not None else None,
        method=checked.spec.method, seed=checked.spec.seed, start_key=checked.start_key,
        colocated=settings.worker,
    )
    with tempfile.TemporaryDirectory(prefix="openft-estimate-") as folder:
        path = Path(folder) / "config.json"
        config.dump(path)
        args = [str(path), str(calibration_file(settings)), *(["--warm"] if warm_jobs(settings) else [])]
        async with _ONE_AT_A_TIME:
            code, out, err = await _run(args, Path(folder), zygote)
    if code != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ServerFailure(f"The estimate failed: {tail[0]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if "error" in result:
        raise InvalidRequest(result["error"]["message"], param=result["error"]["param"],
                             code=result["error"]["code"])
    method = checked.spec.method.with_hyperparameters(result["hyperparameters"])
    return {"object": result.pop("object"), "model": spec.model, "method": method.to_wire(), **result}


async def _run(args: list[str], folder: Path, zygote: Zygote | None) -> tuple[int, bytes, bytes]:
    """``python -m openft.training.estimate ARGS``: forked warm when a zygote
    runs here, a new Python otherwise; exit code, stdout, stderr."""
    if zygote is not None and zygote.alive:
        try:
            return await zygote.run("openft.training.estimate", args, folder, ESTIMATE_TIMEOUT_SECONDS)
        except ZygoteUnavailable:
            pass
    with anyio.fail_after(ESTIMATE_TIMEOUT_SECONDS):
        done = await anyio.run_process([sys.executable, "-m", "openft.training.estimate", *args], check=False)
    return done.returncode, done.stdout, done.stderr
