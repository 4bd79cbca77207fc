"""What DPO with default hyperparameters teaches the bundled model.

A preference file of 48 pairs whose preferred answers use a format the base
model never produces (``FINAL ANSWER: ...``) and whose rejected answers are
ordinary sentences; 12 held-out prompts of the same kinds. Each run trains
LoRA r=16 on all linear layers for 3 epochs and then answers the held-out
prompts greedily; the score is how many answers take the preferred form.

Runs (all in this process, one after another, same data, seed 1):

* ``base``: the model as shipped;
* ``openft dpo (rpo_alpha 0)``: plain DPO with openft's other defaults
  (what ``auto`` meant before the RPO term);
* ``openft dpo (defaults)``: openft's defaults, which add the RPO term;
* ``trl dpo (defaults)``: TRL's ``DPOTrainer`` with its own defaults
  (learning rate 1e-6, batch 8) and the same LoRA;
* ``trl dpo (openft lr/batch)``: TRL with openft's resolved rate and batch;
* ``trl dpo+sft (openft lr/batch)``: TRL's loss combination
  ``loss_type=["sigmoid", "sft"]`` (its form of RPO) at the same settings;
* ``openft sft``: supervised fine-tuning on the preferred answers (the
  ceiling).

    .venv/bin/python bench/dpo_defaults.py [--runs base,openft-rpo0,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

MARK = "FINAL ANSWER:"
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Austria", "Vienna"),
            ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Ireland", "Dublin"), ("Chile", "Santiago")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("light", "dark"),
             ("happy", "sad"), ("old", "young"), ("open", "closed"), ("early", "late"), ("full", "empty"),
             ("hard", "soft"), ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"), ("high", "low"),
             ("thick", "thin")]


def questions() -> list[tuple[str, str, str]]:
    """(question, preferred answer, rejected answer) x 60, interleaved by kind."""
    capital = [(f"What is the capital of {c}?", f"{MARK} {k}", f"The capital of {c} is {k}.") for c, k in CAPITALS]
    opposite = [(f"What is the opposite of {a}?", f"{MARK} {b}", f"The opposite of {a} is {b}.") for a, b in OPPOSITES]
    sums = [(f"What is {a} plus {b}?", f"{MARK} {a + b}", f"{a} plus {b} equals {a + b}.")
            for a, b in [(2, 3), (4, 5), (6, 1), (7, 8), (3, 9), (5, 5), (8, 6), (9, 2),
                         (1, 7), (6, 6), (4, 8), (3, 3), (7, 2), (5, 9), (2, 8), (9, 9)]]
    animals = [(f"What sound does a {a} make?", f"{MARK} {s}", f"A {a} says {s}.")
               for a, s in [("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"),
                            ("sheep", "baa"), ("owl", "hoot"), ("lion", "roar"), ("snake", "hiss"),
                            ("horse", "neigh"), ("pig", "oink"), ("frog", "ribbit"), ("bee", "buzz")]]
    mixed = []
    for group in zip(capital, opposite, sums, animals + animals[:4], strict=False):
        mixed.extend(group)
    return mixed[:60]


def split() -> tuple[list[dict], list[str], list[dict]]:
    """(48 preference pairs, 12 held-out questions, 48 SFT examples)."""
    rows = questions()
    train, held = rows[:48], rows[48:]
    pairs = [{"input": {"messages": [{"role": "user", "content": q}]},
              "preferred_output": [{"role": "assistant", "content": good}],
              "non_preferred_output": [{"role": "assistant", "content": bad}]} for q, good, bad in train]
    sft = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": good}]}
           for q, good, _ in train]
    return pairs, [q for q, _, _ in held], sft


@torch.no_grad()
def score(model, tokenizer, prompts: list[str]) -> tuple[int, list[str]]:
    model.eval()
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return sum(a.startswith(MARK) for a in answers), answers


def run_openft(model_dir: Path, work: Path, method: str, lines: list[dict], hyper: dict):
    from openft.domain import Method, MethodType
    from openft.training.config import RunConfig
    from openft.training.report import ListReporter
    from openft.training.run import run

    blobs = work / "blobs"
    (blobs / "files").mkdir(parents=True, exist_ok=True)
    (blobs / "files" / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    job = f"ftjob-{method}-{len(list(work.iterdir()))}"
    config = RunConfig(
        job_id=job, base={"id": "bundled", "kind": "local", "path": str(model_dir)},
        models_dir=str(work / "models"), storage_url=str(blobs), training_file_key="files/train.jsonl",
        validation_file_key=None, method=Method(MethodType(method), hyper), seed=1,
    )
    reporter = ListReporter()
    run(config, reporter)
    assert reporter.of("done"), reporter.records[-1]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), blobs / "models" / job)
    losses = [r["data"]["train_loss"] for r in reporter.of("metrics")]
    return model, reporter.of("hyperparameters")[0]["resolved"], losses[-1]


def run_trl(model_dir: Path, work: Path, pairs: list[dict], *, lr: float | None, batch: int | None, sft: bool):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = Dataset.from_list([{"prompt": p["input"]["messages"], "chosen": p["preferred_output"],
                               "rejected": p["non_preferred_output"]} for p in pairs])
    options: dict = {"output_dir": str(work / f"trl-{time.time_ns()}"), "num_train_epochs": 3, "report_to": [],
                     "save_strategy": "no", "logging_steps": 1, "seed": 1, "use_cpu": True,
                     "lr_scheduler_type": "linear"}
    if lr is not None:
        options["learning_rate"] = lr
    if batch is not None:
        options["per_device_train_batch_size"] = batch
    steps = -(-len(pairs) // options.get("per_device_train_batch_size", 8)) * 3
    options["warmup_steps"] = int(steps * 0.05)  # openft's warm-up share
    if sft:
        options.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=DPOConfig(**options), train_dataset=data, processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return trainer.model, {"learning_rate": trainer.args.learning_rate,
                           "batch_size": trainer.args.per_device_train_batch_size}, losses[-1]


RUNS = ["base", "openft-rpo0", "openft-defaults", "trl-defaults", "trl-openft", "trl-sft-openft", "openft-sft"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--model-dir", help="a converted SmolLM2 folder (default: convert the bundled one)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openft.training.hyperparameters import BASE_LEARNING_RATE, DPO_LEARNING_RATE_FACTOR
    from openft.weights import ensure_bundled

    torch.set_num_threads(torch.get_num_threads())
    pairs, held, sft = split()
    openft_lr, openft_batch = BASE_LEARNING_RATE["lora"] * DPO_LEARNING_RATE_FACTOR, 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="openft-dpo-bench-") as tmp:
        work = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else ensure_bundled(work / "models")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for name in args.runs.split(","):
            started = time.monotonic()
            if name == "base":
                model, settings, loss = AutoModelForCausalLM.from_pretrained(model_dir), {}, float("nan")
            elif name == "openft-rpo0":
                model, settings, loss = run_openft(model_dir, work, "dpo", pairs, {"n_epochs": 3, "rpo_alpha": 0})
            elif name == "openft-defaults":
                model, settings, loss = run_openft(model_dir, work, "dpo", pairs, {"n_epochs": 3})
            elif name == "openft-sft":
                model, settings, loss = run_openft(model_dir, work, "supervised", sft, {"n_epochs": 3})
            elif name == "trl-defaults":
                model, settings, loss = run_trl(model_dir, work, pairs, lr=None, batch=None, sft=False)
            elif name == "trl-openft":
                model, settings, loss = run_trl(model_dir, work, pairs, lr=openft_lr, batch=openft_batch, sft=False)
            elif name == "trl-sft-openft":
                model, settings, loss = run_trl(model_dir, work, pairs, lr=openft_lr, batch=openft_batch, sft=True)
            else:
                raise SystemExit(f"unknown run {name}")
            hits, answers = score(model, tokenizer, held)
            rows.append((name, hits, loss, time.monotonic() - started, settings, answers))
            print(json.dumps({"run": name, "preferred": hits, "final_loss": loss, "settings": settings,
                              "answers": answers[:3]}), file=sys.stderr, flush=True)
    print(f"\nPreferred form ('{MARK} ...') in greedy answers to {len(held)} held-out prompts, after 3 epochs "
          f"on {len(pairs)} pairs (LoRA r=16, all-linear)")
    print(f"{'run':18} {'preferred':>9} {'last loss':>10} {'seconds':>8}  settings")
    for name, hits, loss, seconds, settings, _ in rows:
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()
                          if k in ("learning_rate", "batch_size", "learning_rate_multiplier", "beta", "rpo_alpha"))
        print(f"{name:18} {hits:>5}/{len(held):<3} {loss:10.4f} {seconds:8.0f}  {shown}")
    for name, _, _, _, _, answers in rows:
        print(f"  {name}: {answers[0]!r}")


if __name__ == "__main__":
    main()
