"""Training next to a busy API: which training settings leave both room.

``openft serve`` runs the API and a training worker on one host. This bench
starts the real server once per configuration (training threads, niceness,
OpenMP wait policy), fine-tunes the bundled SmolLM2 through the API, and
measures in the same run

* the job's optimizer steps per minute with the API idle (``unloaded``),
* the same while ``--clients`` keep-alive connections hammer
  ``GET /v1/fine_tuning/jobs/{id}`` (``loaded``), and the API's p50/p99
  latency and throughput meanwhile.

It prints one row per configuration; ``kept`` is loaded / unloaded step rate
(the issue's target: at least 0.5, with API p99 <= 500 ms). The load comes
from a separate process on the same machine, so every configuration shares
the CPU three ways alike.

    .venv/bin/python bench/colocated.py [--seconds 20] [--clients 200]
        [--configs default,t2n0,t1n10,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from api_latency import _load, free_port, summarise, wait_healthy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEY = "sk-bench-colocated"
CONFIGS = {
    # name: (OPENFT_TRAINING_THREADS, OPENFT_TRAINING_NICE, OMP_WAIT_POLICY); None = openft's default
    "api-only": ("off", None, None),  # no worker: the API's own numbers under this load
    "default": (None, None, None),
    "t2n0": ("2", "0", None),
    "t2n10": ("2", "10", None),
    "t2n10-passive": ("2", "10", "PASSIVE"),
    "t1n0": ("1", "0", None),
    "t1n10": ("1", "10", None),
}


def latest_step(client: httpx.Client, job_id: str) -> tuple[int, float]:
    """(newest reported step, when we read it)."""
    events = client.get(f"/fine_tuning/jobs/{job_id}/events", params={"limit": 20}).json()["data"]
    steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
    return (max(steps) if steps else 0), time.monotonic()


def wait_for_step(client: httpx.Client, job_id: str, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while latest_step(client, job_id)[0] < step:
        status = client.get(f"/fine_tuning/jobs/{job_id}").json()["status"]
        if status in ("failed", "cancelled", "succeeded") or time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} is {status} before step {step}")
        time.sleep(0.5)


def measure(name: str, env_values: tuple, models: Path, root: Path, args: argparse.Namespace) -> dict:
    threads, nice, wait_policy = env_values
    home = root / name
    home.mkdir()
    (home / "models").symlink_to(models)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}
    env.update(OPENFT_HOME=str(home), OPENFT_LOG_LEVEL="warning", OPENFT_API_KEY=KEY)
    training = threads != "off"
    if not training:
        env["OPENFT_WORKER"], threads = "false", None
    for variable, value in (("OPENFT_TRAINING_THREADS", threads), ("OPENFT_TRAINING_NICE", nice),
                            ("OMP_WAIT_POLICY", wait_policy)):
        if value is not None:
            env[variable] = value
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "openft", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1",
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
            with open(REPO / "examples" / "tiny-chat.jsonl", "rb") as handle:
                file_id = client.post("/files", files={"file": ("t.jsonl", handle)},
                                      data={"purpose": "fine-tune"}).json()["id"]
            job = client.post("/fine_tuning/jobs", json={
                "model": MODEL, "training_file": file_id, "seed": 1,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50}}},
            }).json()
            step0 = step1 = step2 = 0
            t0, t1, t2 = 0.0, 1.0, 2.0
            if training:
                wait_for_step(client, job["id"], 3)
                step0, t0 = latest_step(client, job["id"])
                time.sleep(args.seconds)  # the unloaded window: the bench only watches
                step1, t1 = latest_step(client, job["id"])
            latencies = asyncio.run(_load(port, [f"/v1/fine_tuning/jobs/{job['id']}"], KEY,
                                          args.seconds, args.clients))
            if training:
                step2, t2 = latest_step(client, job["id"])
            client.post(f"/fine_tuning/jobs/{job['id']}/cancel")
    finally:
        server.terminate()
        server.wait()
    api = summarise(latencies, args.seconds)
    unloaded = (step1 - step0) / (t1 - t0) * 60
    loaded = (step2 - step1) / (t2 - t1) * 60
    return {"name": name, "unloaded": unloaded, "loaded": loaded, "kept": loaded / unloaded if unloaded else 0,
            **api}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    from openft.weights import ensure_bundled

    rows = []
    with tempfile.TemporaryDirectory(prefix="openft-colocated-") as tmp:
        root = Path(tmp)
        models = root / "shared-models"
        ensure_bundled(models)
        for name in args.configs.split(","):
            rows.append(measure(name, CONFIGS[name], models, root, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nSFT of {MODEL} (LoRA, batch 1) while {args.clients} clients GET one job, "
          f"{args.seconds:g} s windows, {os.cpu_count()} CPUs")
    print(f"{'config':15} {'steps/min idle':>14} {'under load':>11} {'kept':>6} {'req/s':>7} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(f"{r['name']:15} {r['unloaded']:14.1f} {r['loaded']:11.1f} {r['kept']:6.2f} "
              f"{r['rps']:7.0f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f}")
    print("config: tN = OPENFT_TRAINING_THREADS, nN = OPENFT_TRAINING_NICE, passive = OMP_WAIT_POLICY; "
          "default = openft's own choice inside `openft serve`")


if __name__ == "__main__":
    main()
