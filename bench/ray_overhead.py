"""What running a job on Ray costs next to the local executor.

Starts a loopback Ray cluster (a head with no CPUs and one node with every
core of this machine), then fine-tunes the same job (the bundled SmolLM2,
same seed, data and hyperparameters) through the real server three ways, in
one run:

* ``local``: the local executor, one process with every core;
* ``ray x1``: the Ray executor, one worker with every core (a Ray actor);
* ``ray x2``: the Ray executor, two data-parallel workers (Ray Train,
  DDP on gloo) of half the cores each.

For each it prints submit -> first optimizer step and submit -> succeeded
(polled through the API every 0.1 s), and the ratios to ``local``. The
targets for ``ray x1``: total <= 1.15x local, first step <= local + 10 s.

    .venv/bin/python bench/ray_overhead.py [--epochs 2] [--examples 24]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from services import RayCluster  # noqa: E402
from support import SMOLLM, Server, Tenant, chat_file  # noqa: E402


def timed_job(tenant: Tenant, training: str, method: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, float]:
    started = time.monotonic()
    job = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training, seed=1, method=method,
                                             extra_body=extra)
    first = None
    while True:
        if first is None:
            events = tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=20).data
            if any(e.type == "metrics" for e in events):
                first = time.monotonic() - started
        status = tenant.sdk.fine_tuning.jobs.retrieve(job.id)
        if status.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)  # polling the API, as a client would
    if status.status != "succeeded":
        raise SystemExit(f"job {job.id} {status.status}: {status.error}\n{tenant.server.log()[-3000:]}")
    return {"first_step": first or float("nan"), "total": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    method = {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": args.epochs, "batch_size": args.batch_size, "lora_dropout": 0.0}}}
    common = {"OPENFT_WORKER": "true", "OPENFT_POLL_SECONDS": "0.2", "OPENFT_HEARTBEAT_SECONDS": "0.5",
              "OPENFT_TRAINING_THREADS": str(cores), "OPENFT_TRAINING_NICE": "0"}
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="openft-ray-bench-") as tmp:
        root = Path(tmp)
        cluster = RayCluster(Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp")))
        servers: list[Server] = []
        try:
            cluster.start()
            cluster.add_node(cores)
            models = root / "models"  # one converted copy of the bundled model for both servers
            models.mkdir()
            for name, env in (
                ("local", {"OPENFT_EXECUTOR": "local"}),
                ("ray", {"OPENFT_EXECUTOR": "ray", "OPENFT_RAY_ADDRESS": cluster.address,
                         "OPENFT_RAY_CPUS_PER_WORKER": str(cores)}),
            ):
                home = root / name
                home.mkdir()
                (home / "models").symlink_to(models, target_is_directory=True)
                servers.append(Server(home=home, extra_env={**common, **env}).start())
            local, ray = (Tenant(s, "default", s.api_key) for s in servers)
            data = chat_file(args.examples)
            files = [t.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
                     for t in (local, ray)]
            # Warm-up: converts the bundled model once (shared folder) and starts each path once.
            warm = {"type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": args.examples}}}
            timed_job(local, files[0], warm, None)
            timed_job(ray, files[1], warm, None)
            rows.append(("local", timed_job(local, files[0], method, None)))
            rows.append(("ray x1", timed_job(ray, files[1], method, None)))
            half = max(cores // 2, 1)
            rows.append(("ray x2", timed_job(ray, files[1], method,
                                             {"resources": {"workers": 2, "cpus_per_worker": half}})))
        finally:
            for server in servers:
                server.stop()
            cluster.stop()
    base = rows[0][1]
    steps = args.epochs * -(-args.examples // args.batch_size)
    print(f"\n{SMOLLM}, {args.examples} examples x {args.epochs} epochs = {steps} steps, batch {args.batch_size}, "
          f"{cores} cores")
    print(f"{'executor':<8} {'first step s':>12} {'total s':>8} {'total/local':>11} {'first - local s':>15}")
    for name, row in rows:
        print(f"{name:<8} {row['first_step']:>12.1f} {row['total']:>8.1f} {row['total'] / base['total']:>11.2f} "
              f"{row['first_step'] - base['first_step']:>15.1f}")
    ray1 = rows[1][1]
    verdict = ray1["total"] <= 1.15 * base["total"] and ray1["first_step"] <= base["first_step"] + 10
    print(json.dumps({"target_met": verdict, "rows": dict(rows)}))


if __name__ == "__main__":
    main()
