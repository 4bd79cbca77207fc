"""Gateway cost: what routing adds to a request, and what it costs the
requests this deployment answers itself.

Two real servers (``openft serve``, API only, SQLite): an upstream and a
gateway whose providers file names it as the account ``east``. One job lives
upstream (created through the gateway), one on the gateway. In alternating
rounds (so machine noise hits each alike), a load process (keep-alive
connections, fixed concurrency) reads ``GET /v1/fine_tuning/jobs/{id}``:

* **direct**: the upstream job from the upstream itself (the floor);
* **routed**: the same job through the gateway, by its remembered id (no
  header: the gateway authenticates, looks the id up, forwards);
* **routed+header**: the same with ``x-tfy-provider-name: east``;
* **local**: the gateway's own job while an upstream account is configured
  (the routing layer authenticates and looks the id up, then passes it on);
* **local, no accounts**: the same with the providers file emptied (the
  server re-reads it): the routing layer steps aside.

It prints p50, p99 and requests per second of each, and the ratios that
matter: routed / direct (the gateway's overhead) and local / local-no-
accounts (what configuring an account costs local requests).

    .venv/bin/python bench/gateway.py [--rounds 3] [--seconds 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

SERIES = ("direct", "routed", "routed+header", "local", "local, no accounts")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(home: Path, key: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "openft", "serve", "--port", str(port)],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}, "OPENFT_HOME": str(home),
             "OPENFT_API_KEY": key, "OPENFT_WORKER": "false", "OPENFT_LOG_LEVEL": "warning", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)  # the server is starting
    raise SystemExit(f"server on {url} did not start")


def chat_file() -> bytes:
    line = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    return b"".join(json.dumps(line).encode() + b"\n" for _ in range(12))


async def load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(headers=headers, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one() -> None:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - began)
                assert response.status_code == 200, response.text

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return latencies


def summary(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    ordered = sorted(latencies)
    return (statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000,
            len(ordered) / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        up_key, gw_key = "sk-bench-upstream-key", "sk-bench-gateway-key"
        providers = root / "providers.json"
        account = {"east": {"kind": "openai-compatible", "api_key_env": "EAST_KEY", "organizations": ["*"]}}
        upstream, up_url = serve(root / "up", up_key, {})
        account["east"]["base_url"] = f"{up_url}/v1"
        providers.write_text(json.dumps(account))
        gateway, gw_url = serve(root / "gw", gw_key, {"OPENFT_PROVIDERS_FILE": str(providers), "EAST_KEY": up_key})
        try:
            sdk = openai.OpenAI(base_url=f"{gw_url}/v1", api_key=gw_key, max_retries=0)
            east = {"x-tfy-provider-name": "east"}
            model = "HuggingFaceTB/SmolLM2-135M-Instruct"
            routed_job = sdk.fine_tuning.jobs.create(model=model, extra_headers=east, training_file=sdk.files.create(
                file=("t.jsonl", io.BytesIO(chat_file())), purpose="fine-tune", extra_headers=east).id).id
            local_job = sdk.fine_tuning.jobs.create(model=model, training_file=sdk.files.create(
                file=("t.jsonl", io.BytesIO(chat_file())), purpose="fine-tune").id).id
            plans = {
                "direct": (f"{up_url}/v1/fine_tuning/jobs/{routed_job}", {"Authorization": f"Bearer {up_key}"}),
                "routed": (f"{gw_url}/v1/fine_tuning/jobs/{routed_job}", {"Authorization": f"Bearer {gw_key}"}),
                "routed+header": (f"{gw_url}/v1/fine_tuning/jobs/{routed_job}",
                                  {"Authorization": f"Bearer {gw_key}", **east}),
                "local": (f"{gw_url}/v1/fine_tuning/jobs/{local_job}", {"Authorization": f"Bearer {gw_key}"}),
                "local, no accounts": (f"{gw_url}/v1/fine_tuning/jobs/{local_job}",
                                       {"Authorization": f"Bearer {gw_key}"}),
            }
            results: dict[str, list[float]] = {name: [] for name in SERIES}
            for round_number in range(args.rounds + 1):  # the first round warms up and is dropped
                for name in SERIES:
                    providers.write_text("{}" if name == "local, no accounts" else json.dumps(account))
                    url, headers = plans[name]
                    httpx.get(url, headers=headers).raise_for_status()  # the file is re-read before timing
                    latencies = asyncio.run(load(url, headers, args.seconds, args.concurrency))
                    if round_number:
                        results[name].extend(latencies)
        finally:
            for process in (gateway, upstream):
                process.terminate()
                process.wait(timeout=30)
    total = args.rounds * args.seconds
    rows = {name: summary(results[name], total) for name in SERIES}
    print(f"GET /v1/fine_tuning/jobs/{{id}}, concurrency {args.concurrency}, {args.rounds} rounds of "
          f"{args.seconds:g} s each, alternating")
    print(f"{'series':<20} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name, (p50, p99, rate) in rows.items():
        print(f"{name:<20} {p50:8.2f} {p99:8.2f} {rate:8.0f}")
    print(f"routed / direct: p50 {rows['routed'][0] / rows['direct'][0]:.2f}x, "
          f"throughput {rows['routed'][2] / rows['direct'][2]:.2f}x")
    print(f"local / local without accounts: p50 {rows['local'][0] / rows['local, no accounts'][0]:.2f}x, "
          f"throughput {rows['local'][2] / rows['local, no accounts'][2]:.2f}x")


if __name__ == "__main__":
    main()
