"""Eval throughput: one eval run of 64 completions items on the bundled
model, batched by the serving engine against one item at a time, in one run,
through the real server and worker.

For each engine configuration (``OPENFT_SERVING_MAX_BATCH=1``, then the
default 16) the script starts the server on the same home, warms the run
process's path with a one-item run (the bundled model's first conversion
happens there), then runs the eval: 64 distinct questions, greedy, up to
``--tokens`` new tokens each, graded by a ``string_check`` and a python
criterion (in its sandbox where the host has one, else only the string
check). It times the run from the moment it is in progress (its process
started) to completed, and from its first recorded item to its last (the
sampling and grading alone, without the process start and model load).

Printed: items/s for both configurations, the speed-up, and how many greedy
answers are identical (batching must not change what a model says).

    .venv/bin/python bench/evals.py [--items 64] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support import SMOLLM, Server, Tenant  # noqa: E402

warnings.filterwarnings("ignore", message="The Evals API is deprecated")

SUBJECTS = ["the sea", "a lighthouse", "winter", "a robot", "a library", "the moon", "a garden", "a train"]
EXACT = {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
         "reference": "{{item.subject}}", "operation": "ilike"}
PYTHON = {"type": "python", "name": "long enough", "pass_threshold": 1.0,
          "source": "def grade(sample, item):\n    return 1.0 if len(sample['output_text']) > 20 else 0.0\n"}


def run_eval(tenant: Tenant, eval_id: str, n: int, tokens: int) -> dict[str, Any]:
    rows = [{"item": {"question": f"In one sentence, what is special about {SUBJECTS[i % 8]} (number {i})?",
                      "subject": SUBJECTS[i % 8]}} for i in range(n)]
    run = tenant.sdk.evals.runs.create(eval_id, data_source={  # type: ignore[arg-type]
        "type": "completions", "model": SMOLLM, "source": {"type": "file_content", "content": rows},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": tokens}})
    started = first = None
    while True:
        got = tenant.sdk.evals.runs.retrieve(run.id, eval_id=eval_id)
        now = time.perf_counter()
        if got.status == "in_progress" and started is None:
            started = now
        if got.result_counts.total >= 1 and first is None:
            first, first_count = now, got.result_counts.total
        if got.status in ("completed", "failed", "canceled"):
            break
        time.sleep(0.05)
    assert got.status == "completed", got.error
    items = sorted(tenant.sdk.evals.runs.output_items.list(run.id, eval_id=eval_id, limit=100),
                   key=lambda i: i.datasource_item_id)
    total = now - (started or now)
    sampling = now - (first or now)
    return {"items_per_s": n / total, "after_first_item_per_s": (n - first_count) / sampling if sampling else 0.0,
            "seconds": total, "passed": got.result_counts.passed,
            "texts": [i.sample.output[0].content if i.sample.output else "" for i in items]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    criteria: list[dict[str, Any]] = [EXACT] + ([PYTHON] if shutil.which("bwrap") else [])
    rows = {}
    with tempfile.TemporaryDirectory(prefix="openft-evals-bench-") as tmp:
        home = Path(tmp)
        for name, batch in (("one at a time", "1"), ("batched", "16")):
            server = Server(home=home, extra_env={"OPENFT_WORKER": "true", "OPENFT_POLL_SECONDS": "0.2",
                                                  "OPENFT_HEARTBEAT_SECONDS": "0.5",
                                                  "OPENFT_SERVING_MAX_BATCH": batch}).start()
            try:
                tenant = Tenant(server, "default", server.api_key)
                evaluation = tenant.sdk.evals.create(name="bench", testing_criteria=criteria,  # type: ignore[arg-type]
                                                     data_source_config={"type": "custom", "item_schema": {
                                                         "type": "object"}})
                run_eval(tenant, evaluation.id, 1, 4)  # warm: the first conversion of the bundled model
                rows[name] = run_eval(tenant, evaluation.id, args.items, args.tokens)
            finally:
                server.stop()
    print(f"\nOne eval run of {args.items} completions items on {SMOLLM}, greedy, up to {args.tokens} tokens each, "
          f"criteria: {', '.join(c['name'] for c in criteria)}")
    print(f"{'engine':<14} {'items/s':>8} {'items/s after the first item':>29} {'seconds':>8} {'passed':>7}")
    for name, row in rows.items():
        print(f"{name:<14} {row['items_per_s']:>8.2f} {row['after_first_item_per_s']:>29.2f} "
              f"{row['seconds']:>8.1f} {row['passed']:>7}")
    alone, batched = rows["one at a time"], rows["batched"]
    same = sum(a == b for a, b in zip(alone["texts"], batched["texts"], strict=True))
    speedup = batched["items_per_s"] / alone["items_per_s"]
    print(f"speed-up: {speedup:.2f}x; identical greedy answers: {same} of {args.items}")
    print(json.dumps({"speedup": round(speedup, 2), "identical": same,
                      "rows": {k: {m: round(v, 3) for m, v in r.items() if m != "texts"} for k, r in rows.items()}}))


if __name__ == "__main__":
    main()
