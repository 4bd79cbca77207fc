"""How long a job takes to reach its first optimizer step: cold (a new
Python per job, ``OPENFT_WARM_START=false``) against warm (forked from the
worker's zygote, the default), in one run, through the real server.

Two servers share one converted copy of the bundled SmolLM2; each runs a
warm-up job (the model's conversion and load caches), then ``--jobs``
timed jobs of 12 steps. Printed: submit -> first step (the first metrics
event, polled through the API every 0.05 s) and submit -> succeeded, the
median of the runs for each, and the ratio warm/cold. The target of issue
21: warm submit -> first step <= 3 s on this 2-core machine.

    .venv/bin/python bench/job_start.py [--jobs 3]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support import SMOLLM, Server, Tenant, chat_file  # noqa: E402


def timed_job(tenant: Tenant, training: str, epochs: int) -> dict[str, float]:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 4}}}
    started = time.monotonic()
    job = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training, seed=1, method=method)
    first = None
    while True:
        if first is None and any(e.type == "metrics" for e in tenant.sdk.fine_tuning.jobs.list_events(job.id).data):
            first = time.monotonic() - started
        status = tenant.sdk.fine_tuning.jobs.retrieve(job.id)
        if status.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)  # polling the API, as a client would
    if status.status != "succeeded":
        raise SystemExit(f"job {job.id} {status.status}: {status.error}\n{tenant.server.log()[-3000:]}")
    return {"first_step": first if first is not None else float("nan"), "total": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    common = {"OPENFT_WORKER": "true", "OPENFT_POLL_SECONDS": "0.2", "OPENFT_HEARTBEAT_SECONDS": "0.5"}
    results: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="openft-start-bench-") as tmp:
        root = Path(tmp)
        models = root / "models"
        models.mkdir()
        servers = {}
        try:
            for name, warm in (("cold", "false"), ("warm", "true")):
                home = root / name
                home.mkdir()
                (home / "models").symlink_to(models, target_is_directory=True)
                servers[name] = Server(home=home, extra_env={**common, "OPENFT_WARM_START": warm}).start()
            tenants = {name: Tenant(server, "default", server.api_key) for name, server in servers.items()}
            data = chat_file(24)
            files = {name: t.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
                     for name, t in tenants.items()}
            for name in ("cold", "warm"):
                timed_job(tenants[name], files[name], 1)  # warm-up: conversion, caches, the zygote's imports
            for _ in range(args.jobs):  # alternating, so both see the same machine
                for name in ("cold", "warm"):
                    results[name].append(timed_job(tenants[name], files[name], 2))
        finally:
            for server in servers.values():
                server.stop()
    medians = {name: {k: statistics.median(r[k] for r in rows) for k in ("first_step", "total")}
               for name, rows in results.items()}
    print(f"\n{SMOLLM}, 24 examples x 2 epochs = 12 steps, batch 4; median of {args.jobs} jobs each")
    print(f"{'start':<6} {'submit -> first step s':>22} {'submit -> succeeded s':>22}")
    for name, row in medians.items():
        print(f"{name:<6} {row['first_step']:>22.2f} {row['total']:>22.2f}")
    ratio = medians["warm"]["first_step"] / medians["cold"]["first_step"]
    print(f"warm / cold, first step: {ratio:.2f}")
    print(json.dumps({"target_met": medians["warm"]["first_step"] <= 3.0, "medians": medians, "runs": results}))


if __name__ == "__main__":
    main()
