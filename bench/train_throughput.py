"""Training throughput: openft's SFT step against a plain TRL ``SFTTrainer``.

Same model (the bundled SmolLM2-135M-Instruct, LoRA r=16 on all linear
layers), same tokenized examples, same batch size, on two datasets:

* **mixed**: lengths spread log-uniformly from ~32 to ~512 tokens (padding
  is most of a padded batch);
* **uniform**: every example ~250 tokens (nothing to gain from packing).

openft packs each batch into one padding-free row (attention kept inside each
example through ``position_ids``) and computes the output head only where a
label is. TRL runs with its defaults (``SFTConfig()``: padding to the longest
example, gradient checkpointing on); a second TRL column turns gradient
checkpointing off, for context. Steps are interleaved (openft, TRL, TRL
without checkpointing, ...) so machine noise hits all alike. Reported:

* real (non-padding) tokens per second and the ratio to TRL's defaults;
* peak memory of training: the highest resident memory during two steps
  above the memory before them (model and optimizer loaded), each method in a
  fresh subprocess, sampled every 5 ms;
* the summed loss of one batch, packed vs padded, and their relative gap.

    .venv/bin/python bench/train_throughput.py [--steps 3] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from openft.training.common import token_loss  # noqa: E402
from openft.training.data import IGNORE, Example, pack  # noqa: E402

METHODS = ("openft", "trl", "trl-no-ckpt")
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


# ----------------------------------------------------------------------------- data
def make_examples(tokenizer: Any, lengths: list[int], seed: int) -> list[Example]:
    """Chat examples of roughly the given token lengths (loss on the answer)."""
    from openft.training.data import chat_example

    rng = random.Random(seed)
    words = ["alpha", "river", "stone", "cloud", "ember", "north", "maple", "quiet", "swift", "lunar"]
    examples = []
    for i, target in enumerate(lengths):
        question = " ".join(rng.choice(words) for _ in range(max(4, target // 3)))
        answer = " ".join(rng.choice(words) for _ in range(max(4, target // 3)))
        raw = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        examples.append(chat_example(tokenizer, raw, i + 1))
    return examples


def datasets(tokenizer: Any, n: int) -> dict[str, list[Example]]:
    rng = random.Random(0)
    mixed = [int(32 * (16 ** rng.random())) for _ in range(n)]  # log-uniform 32..512
    return {
        "mixed": make_examples(tokenizer, mixed, 1),
        "uniform": make_examples(tokenizer, [250] * n, 2),
    }


# -------------------------------------------------------------------------- methods
def load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return tokenizer, model


class OpenftStep:
    def __init__(self, model_dir: Path):
        from peft import LoraConfig, get_peft_model

        _, base = load(model_dir)
        torch.manual_seed(0)
        self.model = get_peft_model(base, LoraConfig(**LORA)).train()
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self, batch: list[Example]) -> float:
        loss_sum, n, _ = token_loss(self.model, pack(batch), torch.device("cpu"))
        (loss_sum / n).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum.item()


class TrlStep:
    def __init__(self, model_dir: Path, examples: list[Example], *, checkpointing: bool):
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        tokenizer, base = load(model_dir)
        torch.manual_seed(0)
        config = SFTConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, report_to=[])
        if not checkpointing:
            config.gradient_checkpointing = False
        dataset = Dataset.from_list([{"input_ids": e.input_ids} for e in examples])
        self.trainer = SFTTrainer(
            model=base, args=config, train_dataset=dataset, processing_class=tokenizer,
            peft_config=LoraConfig(**LORA),
        )
        self.trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        self.trainer.current_gradient_accumulation_steps = 1  # set by train() in normal use
        self.trainer.model.train()

    def __call__(self, batch: list[Example]) -> float:
        inputs = self.trainer.data_collator([{"input_ids": e.input_ids} for e in batch])
        loss = self.trainer.training_step(self.trainer.model, inputs)
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss)


def make_step(method: str, model_dir: Path, examples: list[Example]) -> Any:
    if method == "openft":
        return OpenftStep(model_dir)
    return TrlStep(model_dir, examples, checkpointing=method == "trl")


# --------------------------------------------------------------------------- checks
@torch.no_grad()
def loss_check(model_dir: Path, batch: list[Example]) -> tuple[float, float]:
    """Summed token loss of one batch: packed (openft) and padded (reference)."""
    _, model = load(model_dir)
    model.eval()
    packed, _, _ = token_loss(model, pack(batch), torch.device("cpu"))
    longest = max(len(e.input_ids) for e in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    targets = labels[:, 1:]
    keep = targets != IGNORE
    padded = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return packed.item(), padded.item()


def memory_child(method: str, dataset: str, model_dir: str, batch_size: int, steps: int) -> None:
    """Runs in a subprocess: peak memory of ``steps`` training steps."""
    tokenizer, _ = load(Path(model_dir))
    examples = datasets(tokenizer, batch_size * steps)[dataset]
    import threading

    import psutil

    step = make_step(method, Path(model_dir), examples)
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for i in range(steps):
        step(examples[i * batch_size : (i + 1) * batch_size])
    done.set()
    sampler.join()
    print(json.dumps({"peak_mib": (peak - baseline) / 2**20}))


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method and dataset")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model-dir", default=None, help="default: the bundled SmolLM2 (converted if needed)")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    if args.model_dir is None:
        from openft.weights import ensure_bundled

        home = Path(os.environ.get("OPENFT_HOME", "~/.openft")).expanduser()
        args.model_dir = str(ensure_bundled(home / "models", progress=lambda s: print(s, file=sys.stderr)))
    model_dir = Path(args.model_dir)
    if args.memory_child:
        memory_child(*args.memory_child, args.model_dir, args.batch_size, 2)
        return

    tokenizer, _ = load(model_dir)
    data = datasets(tokenizer, args.batch_size * (args.steps + 1))
    everything = [e for examples in data.values() for e in examples]
    steps = {m: make_step(m, model_dir, everything) for m in METHODS}
    keys = [(m, d) for d in data for m in METHODS]
    timing: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    real_tokens: dict[tuple[str, str], int] = {key: 0 for key in keys}
    for index in range(args.steps + 1):  # step 0 warms up and is not counted
        for name, examples in data.items():
            batch = examples[index * args.batch_size : (index + 1) * args.batch_size]
            for method in METHODS:
                started = time.perf_counter()
                steps[method](batch)
                if index:
                    timing[(method, name)].append(time.perf_counter() - started)
                    real_tokens[(method, name)] += sum(len(e.input_ids) for e in batch)
    del steps

    memory = {}
    for key in timing:
        result = subprocess.run(
            [sys.executable, __file__, "--model-dir", args.model_dir, "--batch-size", str(args.batch_size),
             "--memory-child", *key], capture_output=True, text=True, check=True)
        memory[key] = json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]

    print(f"\nSFT step, {model_dir.name}, LoRA r=16 all-linear, batch {args.batch_size}, "
          f"{args.steps} timed steps each, {os.cpu_count()} CPU threads")
    print(f"{'dataset':8} {'method':12} {'real tok/s':>11} {'s/step':>8} {'peak MiB':>9} {'vs trl':>7}")
    for name, examples in data.items():
        lengths = [len(e.input_ids) for e in examples]
        for method in METHODS:
            key = (method, name)
            rate = real_tokens[key] / sum(timing[key])
            base = real_tokens[("trl", name)] / sum(timing[("trl", name)])
            print(f"{name:8} {method:12} {rate:11.0f} {statistics.mean(timing[key]):8.2f} "
                  f"{memory[key]:9.0f} {rate / base:6.2f}x")
        print(f"{'':8} lengths: min {min(lengths)}, median {int(statistics.median(lengths))}, max {max(lengths)}")
    packed, padded = loss_check(model_dir, data["mixed"][: args.batch_size])
    gap = abs(packed - padded) / abs(padded)
    print(f"summed loss of one mixed batch: packed {packed:.6f}, padded {padded:.6f}, "
          f"relative gap {gap:.2e} ({'within' if gap <= 1e-5 else 'ABOVE'} 1e-5)")


if __name__ == "__main__":
    main()
