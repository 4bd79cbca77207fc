"""What a job will cost, before it runs: ``python -m openft.training.estimate
CONFIG.json CALIBRATION.json`` prints one JSON object.

The counts are exact: the files are tokenized by the recipes' own functions
with the job's resolved ``max_seq_length``, and the hyperparameters are
resolved by the same rules, so ``trained_tokens`` is the number the finished
job reports (supervised: epochs x the tokens of every example; DPO: of both
answers of every pair). Reinforcement jobs sample their completions, so
their ``trained_tokens`` and duration are not known before they run.

Duration and peak memory come from a calibration measured on this
deployment: the job's base model is loaded with the worker's threads and
niceness, and optimizer steps of the job's own batches (LoRA or full,
supervised or DPO) are timed after two warm-up steps (at least 5 steps and
4 s; the median step's rate), as are forward-only passes and a model save.
The result is kept per (model, method, training type, LoRA rank,
device, threads, batch size, sequence length bucket) in the calibration
file, so later estimates of the same shape only tokenize. The estimate is then

    model load (+ the ML imports, unless jobs start warm) + reading and
      tokenizing the files + trained tokens / train rate
      + evaluated tokens / forward rate + saves

where evaluated tokens are the validations the recipe runs (and DPO's
reference pass). ``--warm`` says the deployment's jobs fork from a zygote
that has imported the ML stack already (``OPENFT_WARM_START``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from openft.training.config import Hyperparameters, RunConfig

STARTED = time.monotonic()
"""When the process started (imports are timed from here)."""

WARMUP_STEPS = 2
"""Untimed optimizer steps first (allocator and thread pools warm up)."""
MIN_STEPS, MAX_STEPS, MIN_SECONDS = 5, 24, 4.0
"""Timed steps: at least MIN_STEPS and MIN_SECONDS of them, at most MAX_STEPS.
The rate is the median of the steps' rates, so one descheduled step does not
skew it."""
FEW_EXAMPLES = 50
"""OpenAI's guidance: at least 50 well-crafted examples show clear improvements."""


def estimate(config: RunConfig, calibration_file: Path, *, warm: bool = False) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from openft.families import describe
    from openft.store.blobs import BlobStore
    from openft.training.common import is_adapter, pick_device, read_lines, setup_torch, start_folder, steps_per_epoch
    from openft.training.data import tokenize, tokenize_preferences, tokenize_prompts
    from openft.training.hyperparameters import completion_budget, max_seq_length, resolve

    began = time.monotonic()
    device = pick_device(config.device)
    setup_torch(device, config.threads)
    blobs = BlobStore(config.storage_url, config.storage_options)
    start = start_folder(config, blobs)
    path = (start if start is not None and not is_adapter(start)
            else config.base_weights.local_path(Path(config.models_dir)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model_limit = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 2048) or 2048)
    method, requested = config.method_type, config.hyperparameters
    max_length = max_seq_length(requested, model_limit)
    warnings: list[dict[str, Any]] = []

    def read(key: str | None) -> list[str]:
        return read_lines(blobs, key) if key else []

    if method == "dpo":
        train, truncated = tokenize_preferences(tokenizer, read(config.training_file_key), max_seq_length=max_length)
        valid, _ = tokenize_preferences(tokenizer, read(config.validation_file_key), max_seq_length=max_length)
        sizes = [len(c.input_ids) + len(r.input_ids) for c, r in train]
        valid_sizes = [len(c.input_ids) + len(r.input_ids) for c, r in valid]
    elif method == "reinforcement":
        room = max_length - completion_budget(requested)
        prompts = tokenize_prompts(tokenizer, read(config.training_file_key), max_prompt_length=room)
        valid_prompts = tokenize_prompts(tokenizer, read(config.validation_file_key), max_prompt_length=room)
        train, truncated = prompts, []
        sizes = [len(p.input_ids) for p in prompts]
        valid_sizes = [len(p.input_ids) for p in valid_prompts]
    else:
        train, truncated = tokenize(tokenizer, read(config.training_file_key), max_seq_length=max_length)
        valid, _ = tokenize(tokenizer, read(config.validation_file_key), max_seq_length=max_length)
        sizes = [len(e.input_ids) for e in train]
        valid_sizes = [len(e.input_ids) for e in valid]

    budget = completion_budget(requested) if method == "reinforcement" else 0
    hp = resolve(requested, method=method, n_examples=len(train), mean_tokens=sum(sizes) / len(sizes) + budget,
                 max_length=max_length, device=device.type, experts=describe(config.model, path).experts)
    per_epoch = steps_per_epoch(len(train), hp.batch_size)
    total_steps = per_epoch * hp.n_epochs
    tokenized_at = time.monotonic()

    result: dict[str, Any] = {
        "object": "fine_tuning.job.estimate",
        "hyperparameters": hp.to_dict(),
        "training_examples": len(train),
        "training_tokens": sum(sizes),
        "validation_examples": len(valid_sizes) if config.validation_file_key else None,
        "validation_tokens": sum(valid_sizes) if config.validation_file_key else None,
        "truncated_lines": truncated,
        "longest_example_tokens": max(sizes),
        "steps_per_epoch": per_epoch,
        "total_steps": total_steps,
        "trained_tokens": None if method == "reinforcement" else hp.n_epochs * sum(sizes),
        "estimated_duration_seconds": None,
        "estimated_peak_memory_bytes": None,
        "device": device.type,
        "calibration": None,
        "warnings": warnings,
    }
    if len(train) < FEW_EXAMPLES:
        warnings.append({"code": "few_examples", "message": (
            f"The training file has {len(train)} examples; fine-tuning usually needs at least "
            f"{FEW_EXAMPLES} to show a clear improvement.")})
    if truncated:
        warnings.append({"code": "truncated_examples", "message": (
            f"{len(truncated)} examples are longer than max_seq_length {max_length} tokens and will be "
            f"truncated (lines {', '.join(map(str, truncated[:20]))}{', ...' if len(truncated) > 20 else ''}).")})
    median = sorted(sizes)[len(sizes) // 2]
    if max(sizes) > 8 * median and max(sizes) > 256:
        warnings.append({"code": "long_example", "message": (
            f"The longest example has {max(sizes)} tokens, {max(sizes) / median:.0f}x the median "
            f"({median}); batches holding it take that much longer and more memory.")})
    if method == "reinforcement":
        warnings.append({"code": "not_estimated", "message": (
            "Reinforcement jobs sample their completions, so their trained tokens and duration are "
            "known only as they run.")})
        return result

    calibration, cached = _calibration(config, hp, train, sizes, device, calibration_file, tokenizer)
    result["calibration"] = {**calibration, "cached": cached}
    if calibration.get("error"):
        warnings.append({"code": "batch_does_not_fit", "message": calibration["error"]})
        return result
    evaluated = _evaluated_tokens(method, hp.n_epochs, per_epoch, total_steps, sizes, valid_sizes)
    train_rate, forward_rate = calibration["train_tokens_per_second"], calibration["forward_tokens_per_second"]
    imports = 0.0 if warm else calibration.get("import_seconds", 0.0)  # a warm start has them done
    duration = (calibration["load_seconds"] + imports + (tokenized_at - began)
                + hp.n_epochs * sum(sizes) / train_rate + evaluated / forward_rate
                + (hp.n_epochs + 1) * calibration["save_seconds"])
    result["estimated_duration_seconds"] = round(duration, 1)
    result["estimated_peak_memory_bytes"] = calibration["peak_memory_bytes"]
    available = _memory_available(device)
    if available and calibration["peak_memory_bytes"] > 0.9 * available:
        warnings.append({"code": "batch_does_not_fit", "message": (
            f"Training is estimated to need {calibration['peak_memory_bytes'] / 2**30:.1f} GiB, "
            f"close to or above the {available / 2**30:.1f} GiB this {device.type} has; lower batch_size "
            "or max_seq_length.")})
    return result


def _evaluated_tokens(method: str, epochs: int, per_epoch: int, total_steps: int, sizes: list[int],
                      valid_sizes: list[int]) -> int:
    """Tokens the recipe runs forward-only: validations (and DPO's reference pass)."""
    if not valid_sizes and method != "dpo":
        return 0
    validations = sum(1 for step in range(1, total_steps + 1)
                      if step % max(1, per_epoch // 4) == 0 or step == total_steps)
    if method == "dpo":  # every validation covers the whole file; the reference pass covers both files
        return validations * sum(valid_sizes) + sum(sizes) + sum(valid_sizes)
    from openft.training.recipes.sft import VALIDATION_SAMPLE

    return validations * sum(valid_sizes[:VALIDATION_SAMPLE]) + epochs * sum(valid_sizes)


def _calibration_key(config: RunConfig, hp: Hyperparameters, sizes: list[int], device: torch.device) -> str:
    bucket = 2 ** max(4, math.ceil(math.log2(max(1, sum(sizes) / len(sizes)))))
    return "|".join(str(part) for part in (
        config.model, config.method_type, hp.training_type, hp.lora_rank, device.type, config.threads,
        hp.batch_size, bucket))


def _calibration(config: RunConfig, hp: Hyperparameters, train: list[Any], sizes: list[int], device: torch.device,
                 file: Path, tokenizer: PreTrainedTokenizerBase) -> tuple[dict[str, Any], bool]:
    key = _calibration_key(config, hp, sizes, device)
    stored = json.loads(file.read_text()) if file.is_file() else {}
    if key in stored:
        return stored[key], True
    try:
        measured = _measure(config, hp, train, device, tokenizer)
    except MemoryError as exc:
        return {"error": f"One training step of this job ran out of memory ({exc}); lower batch_size or "
                         "max_seq_length."}, False
    except Exception as exc:
        if type(exc).__name__ != "OutOfMemoryError":
            raise
        return {"error": f"One training step of this job ran out of GPU memory ({exc}); lower batch_size "
                         "or max_seq_length."}, False
    stored = json.loads(file.read_text()) if file.is_file() else {}
    stored[key] = measured
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}")
    temporary.write_text(json.dumps(stored, indent=1))
    temporary.replace(file)
    return measured, False


def _measure(config: RunConfig, hp: Hyperparameters, train: list[Any], device: torch.device,
             tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Time the job's first batches through the recipe's own loss and update."""
    import torch

    from openft.store.blobs import BlobStore
    from openft.training.checkpoints import save_model
    from openft.training.common import add_adapter, begin, optimizer_and_schedule, start_folder, token_loss
    from openft.training.data import pack
    from openft.training.recipes.dpo import dpo_loss, reference_logprobs

    loading = time.monotonic()
    _, blobs, _, model = begin(config)
    model = add_adapter(model, hp, start_folder(config, BlobStore(config.storage_url, config.storage_options)))
    load_seconds = time.monotonic() - loading
    trainable, optimizer, _ = optimizer_and_schedule(model, hp, config.method_type, 1)
    dpo = config.method_type == "dpo"
    batches = [train[i: i + hp.batch_size] for i in range(0, len(train), hp.batch_size)]

    def tokens(batch: list[Any]) -> int:
        if dpo:
            return sum(len(c.input_ids) + len(r.input_ids) for c, r in batch)
        return sum(len(e.input_ids) for e in batch)

    def step(batch: list[Any]) -> None:
        if dpo:
            reference = reference_logprobs(model, batch, hp.batch_size, device)
            loss, _ = dpo_loss(model, batch, reference, hp, device)
        else:
            loss_sum, n_labels, _ = token_loss(model, pack(batch), device)
            loss = loss_sum / max(n_labels, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()  # the weights drift from the job's; only the time matters here
        optimizer.zero_grad(set_to_none=True)

    def timed(work: Any, batch: list[Any]) -> float:
        began = time.monotonic()
        work(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return tokens(batch) / max(time.monotonic() - began, 1e-9)

    @torch.no_grad()
    def forward(batch: list[Any]) -> None:
        if dpo:
            reference_logprobs(model, batch, hp.batch_size, device)
        else:
            token_loss(model, pack(batch), device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    for index in range(WARMUP_STEPS):
        step(batches[index % len(batches)])
    train_rates: list[float] = []
    started = time.monotonic()
    while len(train_rates) < MAX_STEPS and (len(train_rates) < MIN_STEPS or time.monotonic() - started < MIN_SECONDS):
        train_rates.append(timed(step, batches[(WARMUP_STEPS + len(train_rates)) % len(batches)]))
    model.eval()
    forward_rates = [timed(forward, batches[i % len(batches)]) for i in range(MIN_STEPS)]
    with tempfile.TemporaryDirectory(prefix="openft-calibrate-") as local:
        began = time.monotonic()
        save_model(BlobStore(local), "model", model=model, tokenizer=tokenizer)
        save_seconds = time.monotonic() - began
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        "import_seconds": round(IMPORT_SECONDS, 3),
        "load_seconds": round(load_seconds, 3),
        "train_tokens_per_second": round(statistics.median(train_rates), 1),
        "forward_tokens_per_second": round(statistics.median(forward_rates), 1),
        "timed_steps": len(train_rates),
        "save_seconds": round(save_seconds, 3),
        "peak_memory_bytes": int(peak),
    }


def _memory_available(device: torch.device) -> int | None:
    if device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


IMPORT_SECONDS = 0.0
"""Seconds the process took to import torch and transformers (a training process pays them too)."""


def main() -> None:
    global IMPORT_SECONDS
    from openft.training.config import RunConfig
    from openft.training.run import reproducible_math

    reproducible_math()  # the estimate times steps as the training process will run them

    config = RunConfig.load(Path(sys.argv[1]))
    if config.nice:
        os.nice(config.nice)
    import torch  # noqa: F401  (timed: a training process imports it too)
    import transformers  # noqa: F401

    IMPORT_SECONDS = time.monotonic() - STARTED
    from openft.training.common import ModelLoadError
    from openft.training.data import DataError

    try:
        result = estimate(config, Path(sys.argv[2]), warm="--warm" in sys.argv[3:])
    except DataError as exc:
        result = {"error": {"code": exc.code, "message": str(exc), "param": "training_file"}}
    except ModelLoadError as exc:
        result = {"error": {"code": "model_load_failed", "message": str(exc), "param": "model"}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
