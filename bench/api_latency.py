"""API latency: openft's ``GET /v1/fine_tuning/jobs/{id}`` against a bare route.

What it measures, in one run:

* **openft**: the real server (``openft serve``: auth, database read of one
  job among 10,000, wire conversion, error handling middleware) on SQLite
  (default) or the database given with ``--database-url``;
* **bare**: a plain Starlette route on the same uvicorn settings returning the
  same JSON bytes, with no auth and no database: the floor for this machine;
* **health** (for context): openft's own ``GET /health`` on the same server,
  i.e. FastAPI and openft's middleware with no auth and no database.

Both servers run in their own processes; the load comes from a third process
(keep-alive HTTP/1.1 connections, random job ids, fixed concurrency), in
alternating rounds so that machine noise hits both alike. It prints p50, p99
and requests per second for each, and their ratios (targets: p50 within
2.5x, p99 within 3x of the bare route).

    .venv/bin/python bench/api_latency.py [--rounds 4] [--seconds 4] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

N_JOBS = 10_000
SERIES = ("bare", "openft", "health")
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# --------------------------------------------------------------------------- seeding
async def seed(home: Path, database_url: str | None) -> tuple[str, list[str]]:
    """An organisation with a key, one file and N_JOBS jobs; returns (key, job ids)."""
    from sqlalchemy import insert

    from openft.cli import create_api_key
    from openft.config import load_settings
    from openft.store.db import create_engine, create_session_factory
    from openft.store.queries.orgs import read_org_by_name
    from openft.store.tables import Job

    overrides: dict[str, object] = {"home": home}
    if database_url:
        overrides["database_url"] = database_url
    settings = load_settings(**overrides)
    key = await create_api_key(settings, "bench")
    engine = create_engine(settings.resolved_database_url)
    now = datetime.now(UTC)
    async with create_session_factory(engine)() as session, session.begin():
        org = await read_org_by_name(session, "bench")
        assert org is not None
        ids = [f"ftjob-{secrets.token_hex(12)}" for _ in range(N_JOBS)]
        hyper = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 3}
        rows = [
            dict(
                id=job_id, org_id=org.id, model=MODEL, training_file="file-bench",
                validation_file=None, status="queued",
                method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
                resolved_hyperparameters=None, suffix="bench", seed=i, metadata_={"run": str(i)},
                integrations=None, error=None, fine_tuned_model=None, result_files=[],
                trained_tokens=None, estimated_finish=None, created_at=now, updated_at=now,
                finished_at=None,
            )
            for i, job_id in enumerate(ids)
        ]
        await session.execute(insert(Job), rows)
    await engine.dispose()
    return key, ids


# --------------------------------------------------------------------------- servers
BARE_APP = '''
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
body = open(sys.argv[1], "rb").read()
async def job(request):
    return Response(body, media_type="application/json")
app = Starlette(routes=[Route("/v1/fine_tuning/jobs/{job_id}", job)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
'''


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


# --------------------------------------------------------------------------- load
async def _worker(port: int, paths: list[str], auth: str, deadline: float, out: list[float]) -> None:
    """One keep-alive connection issuing GETs back to back until the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)
    try:
        while time.perf_counter() < deadline:
            request = (
                f"GET {random.choice(paths)} HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {auth}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = length.search(head)
            assert match and head.startswith(b"HTTP/1.1 200"), head[:200]
            await reader.readexactly(int(match.group(1)))
            out.append(time.perf_counter() - start)
    finally:
        writer.close()


async def _load(port: int, paths: list[str], auth: str, seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(_worker(port, paths, auth, deadline, latencies) for _ in range(concurrency)))
    return latencies


def load_main(spec_path: str) -> None:
    """Runs in the load process: alternating rounds against both servers."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results: dict[str, list[float]] = {name: [] for name in SERIES}
    elapsed: dict[str, float] = {name: 0.0 for name in SERIES}
    job_paths = [f"/v1/fine_tuning/jobs/{job_id}" for job_id in spec["ids"]]
    paths = {"bare": job_paths, "openft": job_paths, "health": ["/health"]}
    ports = {"bare": spec["ports"]["bare"], "openft": spec["ports"]["openft"], "health": spec["ports"]["openft"]}
    for name in SERIES:  # warm-up, discarded
        asyncio.run(_load(ports[name], paths[name], spec["key"], 1.0, spec["concurrency"]))
    for _ in range(spec["rounds"]):
        for name in SERIES:
            latencies = asyncio.run(
                _load(ports[name], paths[name], spec["key"], spec["seconds"], spec["concurrency"])
            )
            results[name] += latencies
            elapsed[name] += spec["seconds"]
    Path(spec["out"]).write_text(json.dumps({"latencies": results, "elapsed": elapsed}))


# --------------------------------------------------------------------------- report
def summarise(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "rps": len(ordered) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary home")
    parser.add_argument("--load-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_spec:
        load_main(args.load_spec)
        return

    with tempfile.TemporaryDirectory(prefix="openft-bench-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        key, ids = asyncio.run(seed(home, args.database_url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}
        env.update(OPENFT_HOME=str(home), OPENFT_LOG_LEVEL="warning")
        if args.database_url:
            env["OPENFT_DATABASE_URL"] = args.database_url
        ports = {"openft": free_port(), "bare": free_port()}
        openft = subprocess.Popen(
            [sys.executable, "-m", "openft", "serve", "--port", str(ports["openft"])], env=env
        )
        bare = None
        try:
            wait_healthy(f"http://127.0.0.1:{ports['openft']}/health", openft)
            sample = httpx.get(
                f"http://127.0.0.1:{ports['openft']}/v1/fine_tuning/jobs/{ids[0]}",
                headers={"Authorization": f"Bearer {key}"},
            )
            sample.raise_for_status()
            body_path = Path(tmp) / "job.json"
            body_path.write_bytes(sample.content)
            bare = subprocess.Popen(
                [sys.executable, "-c", BARE_APP, str(body_path), str(ports["bare"])], env=env
            )
            wait_healthy(f"http://127.0.0.1:{ports['bare']}/v1/fine_tuning/jobs/x", bare)
            spec_path = Path(tmp) / "load.json"
            out_path = Path(tmp) / "out.json"
            spec_path.write_text(json.dumps({
                "ports": ports, "ids": ids, "key": key, "rounds": args.rounds,
                "seconds": args.seconds, "concurrency": args.concurrency, "out": str(out_path),
            }))
            subprocess.run([sys.executable, __file__, "--load-spec", str(spec_path)], check=True, env=env)
            raw = json.loads(out_path.read_text())
        finally:
            for process in (openft, bare):
                if process is not None:
                    process.terminate()
                    process.wait()

    stats = {name: summarise(raw["latencies"][name], raw["elapsed"][name]) for name in SERIES}
    database = (args.database_url or "sqlite").split(":")[0]
    print(f"\nGET /v1/fine_tuning/jobs/{{id}}: {N_JOBS} jobs in {database}, "
          f"concurrency {args.concurrency}, {args.rounds} alternating rounds of {args.seconds:g} s, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':8} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name, s in stats.items():
        print(f"{name:8} {s['requests']:9d} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['rps']:8.0f}")
    p50 = stats["openft"]["p50_ms"] / stats["bare"]["p50_ms"]
    p99 = stats["openft"]["p99_ms"] / stats["bare"]["p99_ms"]
    rps = stats["bare"]["rps"] / stats["openft"]["rps"]
    print(f"ratio openft/bare: p50 {p50:.2f}x (target <= 2.5x), p99 {p99:.2f}x (target <= 3x), "
          f"throughput {rps:.2f}x fewer requests/s")
    floor = stats["health"]["p50_ms"] / stats["bare"]["p50_ms"]
    print(f"context: openft's GET /health (FastAPI + middleware, no auth, no database) "
          f"p50 is {floor:.2f}x the bare route")


if __name__ == "__main__":
    main()
