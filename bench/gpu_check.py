"""GPU check of the training island (no Ray, no server): run the SFT recipe on
CUDA (bf16 autocast) for a model of SmolLM2-135M's shape (random weights,
the bundled tokenizer), once as one rank and once as two data-parallel ranks
(two processes on the GPU, gradients summed by ``training.team`` over gloo),
and print per-step time, tokens/s, peak GPU memory and how far the two runs'
per-step losses are apart.

    python bench/gpu_check.py TOKENIZER_DIR [--steps 20]

``TOKENIZER_DIR`` is a folder with the bundled tokenizer's files (any saved
Hugging Face tokenizer works). Needs a CUDA GPU; not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from openft.domain import Method, MethodType  # noqa: E402
from openft.store.blobs import BlobStore  # noqa: E402
from openft.training.config import RunConfig  # noqa: E402
from openft.training.report import ListReporter  # noqa: E402
from openft.training.run import run  # noqa: E402
from openft.training.team import SOLO, Team  # noqa: E402


def build(folder: Path, tokenizer_dir: str) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(  # SmolLM2-135M's shape
        vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    lines = []
    for i in range(64):
        text = " ".join(f"word{(i * 7 + j) % 97}" for j in range(120))
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"Item {i}: {text}"},
                                              {"role": "assistant", "content": text[::-1][:400]}]}))
    with BlobStore(str(folder / "blobs")).writer("files/train") as out:
        out.write(("\n".join(lines) + "\n").encode())


def config(folder: Path, steps: int, job: str) -> RunConfig:
    return RunConfig(
        job_id=job, base={"id": "random/smollm2-shape", "kind": "local", "path": str(folder / "model")},
        models_dir=str(folder / "models"), storage_url=str(folder / "blobs"), training_file_key="files/train",
        validation_file_key=None, seed=3, device="cuda",
        method=Method(MethodType.SUPERVISED, {"n_epochs": max(1, steps * 16 // 64), "batch_size": 16,
                                              "lora_dropout": 0.0}),
    )


def measure(folder: Path, steps: int, team: Team, job: str) -> dict:
    reporter = ListReporter()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run(config(folder, steps, job), reporter, team)
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    failed = reporter.of("failed")
    assert not failed, failed
    metrics = reporter.of("metrics")
    times = [m["time"] for m in metrics]
    per_step = (times[-1] - times[1]) / (len(times) - 2) if len(times) > 2 else float("nan")
    done = reporter.of("done")
    return {
        "losses": [m["data"]["train_loss"] for m in metrics], "seconds_per_step": per_step, "wall": wall,
        "tokens": done[0]["trained_tokens"] if done else None,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def rank_main(rank: int, folder: str, steps: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = measure(Path(folder), steps, Team.from_process_group(), "gpu-dp")
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.tokenizer_dir)
        one = measure(folder, args.steps, SOLO, "gpu-one")
        out = folder / "dp.json"
        mp.spawn(rank_main, args=(str(folder), args.steps, 29533, str(out)), nprocs=2)
        two = json.loads(out.read_text())
    worst = max(abs(a - b) / abs(b) for a, b in zip(two["losses"], one["losses"], strict=True))
    tokens_per_s = one["tokens"] / (one["seconds_per_step"] * len(one["losses"])) if one["tokens"] else None
    print(json.dumps({
        "steps": len(one["losses"]), "first_loss": one["losses"][0], "last_loss": one["losses"][-1],
        "one_rank_s_per_step": round(one["seconds_per_step"], 4), "one_rank_tokens_per_s": round(tokens_per_s or 0),
        "one_rank_peak_gib": round(one["peak_gib"], 2), "two_ranks_s_per_step": round(two["seconds_per_step"], 4),
        "max_relative_loss_difference_1_vs_2_ranks": worst,
    }, indent=1))


if __name__ == "__main__":
    main()
