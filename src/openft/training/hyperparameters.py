"""Resolving ``"auto"`` hyperparameters, by rules written in the README.

* ``n_epochs``: 3, raised for tiny files so that about 100 examples are seen
  (at most 25 epochs), lowered for huge ones so about 25,000 are (at least 1).
* ``batch_size``: about 0.2% of the examples (1 to 256), then lowered until a
  batch holds at most ``TOKENS_PER_BATCH`` tokens on average (memory).
* ``learning_rate_multiplier``: 1.0, times the method's base learning rate
  (LoRA 1e-3, full fine-tuning 2e-5; DPO ``DPO_LEARNING_RATE_FACTOR`` of those).
* Extensions: ``training_type`` lora, ``lora_rank`` 16, ``lora_alpha`` 2x rank,
  ``lora_dropout`` 0.05, ``max_seq_length`` min(model limit, 2048),
  ``warmup_ratio`` 0.05; DPO ``beta`` 0.1 and ``rpo_alpha`` 1.0.
* Reinforcement: ``batch_size`` 4 prompts (fewer if the file has fewer),
  learning rate ``RFT_LEARNING_RATE_FACTOR`` of the base rate,
  ``compute_multiplier`` 1.0 (group size 8 x multiplier, at least 2),
  ``reasoning_effort`` sets the completion budget (``COMPLETION_BUDGET``)
  unless ``max_completion_tokens`` is given, ``eval_interval`` a quarter of
  the steps, ``eval_samples`` 1, KL weight ``beta`` 0.04.
* Supervised and DPO: no early stopping; ``fine_tuned_model_from`` last.
"""

from __future__ import annotations

import math
from typing import Any

from openft.training.config import Hyperparameters

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
TOKENS_PER_BATCH = {"cpu": 16_384, "cuda": 65_536}
BASE_LEARNING_RATE = {"lora": 1e-3, "full": 2e-5}
DPO_LEARNING_RATE_FACTOR = 0.1
DPO_RPO_ALPHA = 1.0
MAX_SEQ_LENGTH = 2048
RFT_BATCH_SIZE = 4
RFT_GROUP_SIZE = 8
RFT_LEARNING_RATE_FACTOR = 0.2
RFT_BETA = 0.04
COMPLETION_BUDGET = {"low": 64, "default": 256, "medium": 256, "high": 1024}


def completion_budget(requested: dict[str, Any]) -> int:
    """Most tokens one sampled completion may have (decided before the data is read)."""
    if requested.get("max_completion_tokens") not in (None, "auto"):
        return int(requested["max_completion_tokens"])
    return COMPLETION_BUDGET[requested.get("reasoning_effort") or "default"]


def auto_epochs(n_examples: int) -> int:
    if n_examples * 3 < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n_examples))
    if n_examples * 3 > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return 3


def auto_batch_size(n_examples: int, mean_tokens: float, device: str) -> int:
    size = min(256, max(1, math.ceil(n_examples * 0.002)))
    budget = TOKENS_PER_BATCH.get(device, TOKENS_PER_BATCH["cpu"])
    return max(1, min(size, int(budget // max(mean_tokens, 1))))


def max_seq_length(requested: dict[str, Any], model_max_length: int) -> int:
    """The one place the sequence cap is decided (data is tokenized with it
    before the other values can be resolved)."""
    value = requested.get("max_seq_length")
    return int(value) if value not in (None, "auto") else min(model_max_length, MAX_SEQ_LENGTH)


def resolve(
    requested: dict[str, Any],
    *,
    method: str,
    n_examples: int,
    mean_tokens: float,
    max_length: int,
    device: str,
    experts: bool = False,
) -> Hyperparameters:
    """Every hyperparameter with a concrete value. ``experts``: LoRA reaches
    the model's fused expert weights, which PEFT trains without dropout, so
    ``lora_dropout`` defaults to 0 (the API refuses another value)."""

    def given(name: str, default: Any) -> Any:
        value = requested.get(name)
        return default if value in (None, "auto") else value

    training_type = given("training_type", "lora")
    rank = given("lora_rank", 16)
    lora = training_type == "lora"
    dpo, rft = method == "dpo", method == "reinforcement"
    n_epochs = given("n_epochs", auto_epochs(n_examples))
    batch_size = given("batch_size", min(RFT_BATCH_SIZE, n_examples) if rft
                       else auto_batch_size(n_examples, mean_tokens, device))
    multiplier = float(given("compute_multiplier", 1.0))
    total_steps = math.ceil(n_examples / batch_size) * n_epochs
    return Hyperparameters(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=float(given("learning_rate_multiplier", 1.0)),
        training_type=training_type,
        max_seq_length=max_length,
        warmup_ratio=float(given("warmup_ratio", 0.05)),
        lora_rank=rank if lora else None,
        lora_alpha=float(given("lora_alpha", 2 * rank)) if lora else None,
        lora_dropout=float(given("lora_dropout", 0.0 if experts else 0.05)) if lora else None,
        beta=float(given("beta", 0.1 if dpo else RFT_BETA)) if dpo or rft else None,
        rpo_alpha=float(given("rpo_alpha", DPO_RPO_ALPHA)) if dpo else None,
        reasoning_effort=given("reasoning_effort", "default") if rft else None,
        compute_multiplier=multiplier if rft else None,
        group_size=max(2, round(RFT_GROUP_SIZE * multiplier)) if rft else None,
        max_completion_tokens=completion_budget(requested) if rft else None,
        eval_interval=int(given("eval_interval", max(1, total_steps // 4))) if rft else None,
        eval_samples=int(given("eval_samples", 1)) if rft else None,
        early_stopping_patience=None if rft else requested.get("early_stopping_patience"),
        fine_tuned_model_from=None if rft else given("fine_tuned_model_from", "last"),
    )


def learning_rate(hp: Hyperparameters, method: str) -> float:
    base = BASE_LEARNING_RATE[hp.training_type]
    if method == "dpo":
        base *= DPO_LEARNING_RATE_FACTOR
    if method == "reinforcement":
        base *= RFT_LEARNING_RATE_FACTOR
    return base * hp.learning_rate_multiplier
