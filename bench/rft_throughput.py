"""openft's reinforcement fine-tuning recipe against TRL's ``GRPOTrainer``.

Same task (``examples/sentiment``: one-word sentiment labels, the python
grader in ``examples/sentiment/grader.py``), same model (the bundled
SmolLM2-135M-Instruct), same prompts in the same order, same group size,
batch (prompts per step), completion budget, LoRA (r=16, alpha 32, dropout
0.05, all linear layers) and seed. TRL otherwise runs with its defaults
(learning rate 1e-6, gradient checkpointing, no KL term, DAPO loss);
openft with its own (``auto``: LoRA rate 2e-4, KL weight 0.04).

``--runs openft,trl,trl-tuned`` adds TRL without gradient checkpointing at
openft's learning rate. Each run is a subprocess (its peak RSS is its own); runs are interleaved
(openft, trl, openft, trl, ...) so drift in the machine's speed hits both.
Reported per run: completions graded per second and optimizer steps per
second over the training loop (sampling, grading and updates; model loading
excluded), the mean training reward of the last two steps, the mean reward
of greedy answers to the 16 validation prompts after training (graded the
same way for both), and peak memory.

    .venv/bin/python bench/rft_throughput.py [--steps 8] [--rounds 2] [--group 8] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sentiment"
BUNDLED = "HuggingFaceTB/SmolLM2-135M-Instruct"
SEED = 3


def lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLE / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def grader_function():  # the example's grader, in this process (TRL calls Python functions)
    namespace: dict = {}
    exec((EXAMPLE / "grader.py").read_text(), namespace)
    return namespace["grade"]


def model_path() -> Path:
    from openft.weights import BaseWeights

    return BaseWeights(BUNDLED, "bundled").local_path(Path(tempfile.gettempdir()) / "openft-bench-models")


def greedy_reward(model, tokenizer, prompts: list[dict], max_tokens: int) -> float:
    """Mean reward of greedy answers (plain transformers generate, one prompt at a time)."""
    import torch

    grade, rewards = grader_function(), []
    model.eval()
    for line in prompts:
        ids = tokenizer.apply_chat_template(line["messages"], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        rewards.append(grade({"output_text": text}, line))
    return statistics.fmean(rewards)


def run_openft(args: argparse.Namespace) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.domain import Method, MethodType
    from openft.store.blobs import BlobStore
    from openft.training.config import RunConfig
    from openft.training.report import ListReporter
    from openft.training.run import run

    train = lines("train")[: args.steps * args.batch]
    with tempfile.TemporaryDirectory() as tmp:
        blobs = BlobStore(f"{tmp}/blobs")
        with blobs.writer("train.jsonl") as out:
            out.write("".join(json.dumps(x) + "\n" for x in train).encode())
        grader = {"type": "python", "name": "sentiment", "source": (EXAMPLE / "grader.py").read_text()}
        config = RunConfig(
            job_id="bench-openft", base={"id": BUNDLED, "kind": "local", "path": str(model_path())},
            models_dir=f"{tmp}/models", storage_url=f"{tmp}/blobs", training_file_key="train.jsonl",
            validation_file_key=None, seed=SEED, device="cpu",
            method=Method(MethodType.REINFORCEMENT, {
                "n_epochs": 1, "batch_size": args.batch, "max_completion_tokens": args.tokens,
                "compute_multiplier": args.group / 8}, grader=grader),
        )
        reporter = ListReporter()
        run(config, reporter)
        assert reporter.of("done"), reporter.records[-1]
        start = reporter.of("hyperparameters")[0]["time"]
        rows = [r["data"] for r in reporter.of("metrics")]
        elapsed = reporter.of("metrics")[-1]["time"] - start
        tokenizer = AutoTokenizer.from_pretrained(model_path())
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32),
                                          f"{tmp}/blobs/models/bench-openft")
        final = greedy_reward(model, tokenizer, lines("valid"), args.tokens)
    return {"seconds": elapsed, "train_rewards": [r["train_reward_mean"] for r in rows], "valid_reward": final}


def run_trl(args: argparse.Namespace, tuned: bool = False) -> dict:
    """TRL with its defaults; ``tuned``: without gradient checkpointing and at
    openft's learning rate (2e-4), to see what the defaults cost."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    train = lines("train")[: args.steps * args.batch]
    grade = grader_function()
    rewards_seen: list[list[float]] = []

    def reward(completions, label, **_):
        scores = [grade({"output_text": c[0]["content"]}, {"label": y})
                  for c, y in zip(completions, label, strict=True)]
        rewards_seen.append(scores)
        return scores

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *_a, **_k):
            times.append(time.time())

        def on_step_end(self, *_a, **_k):
            times.append(time.time())

    dataset = Dataset.from_list([{"prompt": x["messages"], "label": x["label"]} for x in train])
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    model = AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, seed=SEED, report_to=[], save_strategy="no",
            num_generations=args.group, per_device_train_batch_size=args.batch * args.group,
            max_completion_length=args.tokens, max_steps=args.steps, shuffle_dataset=False, logging_steps=1,
            **({"gradient_checkpointing": False, "learning_rate": 2e-4} if tuned else {}),
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer,
            peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                   task_type="CAUSAL_LM"),
            callbacks=[Clock()],
        )
        trainer.train()
        final = greedy_reward(trainer.model, tokenizer, lines("valid"), args.tokens)
    per_step = [statistics.fmean(r) for r in rewards_seen]
    return {"seconds": times[-1] - times[0], "train_rewards": per_step, "valid_reward": final}


def one(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    runner = {"openft": run_openft, "trl": run_trl, "trl-tuned": lambda a: run_trl(a, tuned=True)}[args.one]
    result = runner(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16, help="completion budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="openft,trl",
                        help="comma-separated: openft, trl (defaults), trl-tuned (no checkpointing, lr 2e-4)")
    parser.add_argument("--one", choices=["openft", "trl", "trl-tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    names = args.runs.split(",")
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names:
            command = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
            out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            found = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not found:
                sys.exit(f"{name} run failed:\n{out.stderr[-4000:]}")
            result = json.loads(found[-1].removeprefix("RESULT "))
            results[name].append(result)
            print(f"round {round_ + 1} {name}: {result['seconds']:.1f} s, valid reward {result['valid_reward']:.3f}",
                  flush=True)
    completions = args.steps * args.batch * args.group
    print(f"\n{args.steps} steps x {args.batch} prompts x {args.group} completions (budget {args.tokens} tokens), "
          f"{args.rounds} interleaved rounds, {args.threads} threads\n")
    print("| recipe | completions/s | steps/s | train reward (last 2 steps) | valid reward (greedy) | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary = {}
    for name, runs in results.items():
        seconds = statistics.fmean(r["seconds"] for r in runs)
        last = statistics.fmean(statistics.fmean(r["train_rewards"][-2:]) for r in runs)
        valid = statistics.fmean(r["valid_reward"] for r in runs)
        peak = max(r["peak_rss_mb"] for r in runs)
        summary[name] = completions / seconds
        print(f"| {name} | {completions / seconds:.2f} | {args.steps / seconds:.3f} | {last:.3f} | {valid:.3f} | "
              f"{peak:.0f} MiB |")
    for other in (n for n in names if n != "openft" and "openft" in summary):
        print(f"openft / {other} completions per second: {summary['openft'] / summary[other]:.2f}x")


if __name__ == "__main__":
    main()
