"""Chat serving under concurrent load: the batching engine against one
request at a time per base, in one run, through the real server.

Set-up: the bundled SmolLM2-135M-Instruct and three LoRA adapters of it,
each trained by a short job through the API (so they are real fine-tuned
models, ``ft:...``). Then, for each engine configuration

* ``one at a time``: ``OPENFT_SERVING_MAX_BATCH=1`` (each base generates for
  one request at a time, the behaviour before the batching engine);
* ``batched``: the defaults (``OPENFT_SERVING_MAX_BATCH=16``),

it starts the server on the same home, warms each model with one request,
and runs ``--clients`` concurrent streaming clients (base + 3 adapters in
turn, distinct prompts, greedy, ``--tokens`` new tokens each), while another
client polls the jobs API (``GET /v1/fine_tuning/jobs``) every 50 ms.

Printed per configuration: aggregate output tokens/s, time to first token
p50/p99, and the jobs API's p50/p99 latency during the load; then the
speed-up and how many greedy answers are identical in both. Targets on the
2-core CPU: throughput >= 4x, >= 15 of 16 answers identical, jobs API p99
<= 100 ms under load.

    .venv/bin/python bench/serving.py [--clients 16] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support import SMOLLM, Server, Tenant, jsonl  # noqa: E402

TOPICS = ["the sea", "a lighthouse", "winter", "a robot", "a library", "the moon", "a garden", "a train",
          "a mountain", "a city at night", "a storm", "a fox", "a violin", "a desert", "a river", "a market"]


def train_adapters(tenant: Tenant) -> list[str]:
    """Three quick fine-tunes of the bundled model, each with its own voice
    and long answers (so every client really generates its tokens)."""
    models = []
    for word in ("Ahoy", "Indeed", "Verily"):
        answer = (f"{word}! {{topic}} is a fine thing. " + "Let me tell you a long story about it, with every "
                  "detail I remember, from the very beginning to the very end, and then some more. ") * 2
        data = jsonl([{"messages": [{"role": "user", "content": f"Write a long story about {t}."},
                                    {"role": "assistant", "content": answer.format(topic=t.capitalize())}]}
                      for t in TOPICS[:12]])
        file_id = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
        job = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=file_id, seed=1, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
        while (status := tenant.sdk.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
            time.sleep(0.5)  # polling the API, as a client would
        if status.status != "succeeded":
            raise SystemExit(f"adapter job failed: {status.error}\n{tenant.server.log()[-3000:]}")
        models.append(status.fine_tuned_model)
    return models


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def one_client(client: httpx.AsyncClient, model: str, topic: str, tokens: int, start: float) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Write a long story about {topic}."}],
            "stream": True, "temperature": 0, "max_tokens": tokens, "stream_options": {"include_usage": True}}
    first, text, usage = None, [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.monotonic() - start
                    text.append(choice["delta"]["content"])
    return {"ttft": first or float("nan"), "text": "".join(text), "tokens": usage}


async def poll_jobs(client: httpx.AsyncClient, stop: asyncio.Event) -> list[float]:
    latencies = []
    while not stop.is_set():
        started = time.monotonic()
        response = await client.get("/v1/fine_tuning/jobs", params={"limit": 10})
        response.raise_for_status()
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return latencies


async def load(server: Server, models: list[str], clients: int, tokens: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=600) as client, \
            httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as poller:
        for model in models:  # warm: base loaded, adapters attached
            await one_client(client, model, "warm-up", 4, time.monotonic())
        stop = asyncio.Event()
        polling = asyncio.create_task(poll_jobs(poller, stop))
        start = time.monotonic()
        results = await asyncio.gather(*(
            one_client(client, models[i % len(models)], TOPICS[i % len(TOPICS)], tokens, start)
            for i in range(clients)))
        wall = time.monotonic() - start
        stop.set()
        jobs_latency = await polling
    total = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results]
    return {"tokens_per_s": total / wall, "tokens": total, "wall_s": wall,
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "jobs_p50_ms": 1000 * percentile(jobs_latency, 50), "jobs_p99_ms": 1000 * percentile(jobs_latency, 99),
            "jobs_requests": len(jobs_latency), "texts": [r["text"] for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    common = {"OPENFT_POLL_SECONDS": "0.2", "OPENFT_HEARTBEAT_SECONDS": "0.5"}
    with tempfile.TemporaryDirectory(prefix="openft-serving-bench-") as tmp:
        home = Path(tmp)
        server = Server(home=home, extra_env={**common, "OPENFT_WORKER": "true"}).start()
        try:
            adapters = train_adapters(Tenant(server, "default", server.api_key))
        finally:
            server.stop()
        models = [SMOLLM, *adapters]
        rows = {}
        for name, batch in (("one at a time", "1"), ("batched", "16")):
            server = Server(home=home, extra_env={**common, "OPENFT_WORKER": "false",
                                                  "OPENFT_SERVING_MAX_BATCH": batch}).start()
            try:
                rows[name] = asyncio.run(load(server, models, args.clients, args.tokens))
            finally:
                server.stop()
    print(f"\n{args.clients} streaming clients over {SMOLLM} + 3 adapters, {args.tokens} new tokens each, greedy")
    print(f"{'engine':<14} {'tokens/s':>9} {'TTFT p50 s':>10} {'TTFT p99 s':>10} {'jobs p50 ms':>11} "
          f"{'jobs p99 ms':>11}")
    for name, row in rows.items():
        print(f"{name:<14} {row['tokens_per_s']:>9.1f} {row['ttft_p50']:>10.2f} {row['ttft_p99']:>10.2f} "
              f"{row['jobs_p50_ms']:>11.1f} {row['jobs_p99_ms']:>11.1f}")
    alone, batched = rows["one at a time"], rows["batched"]
    same = sum(a == b for a, b in zip(alone["texts"], batched["texts"], strict=True))
    speedup = batched["tokens_per_s"] / alone["tokens_per_s"]
    print(f"throughput: {speedup:.2f}x; identical greedy answers: {same} of {args.clients}; "
          f"tokens generated: {alone['tokens']} one at a time, {batched['tokens']} batched "
          f"(of {args.clients * args.tokens})")
    for i, (a, b) in enumerate(zip(alone["texts"], batched["texts"], strict=True)):
        if a != b:
            prefix = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            print(f"  client {i}: differs after {prefix} characters")
    verdict = speedup >= 4 and same >= args.clients - 1 and batched["jobs_p99_ms"] <= 100
    print(json.dumps({"target_met": verdict, "speedup": round(speedup, 2), "identical": same,
                      "rows": {k: {m: v for m, v in r.items() if m != "texts"} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
