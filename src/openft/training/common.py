"""Pieces every recipe uses the same way: devices, loading the base model,
reading a file from blob storage, the token-level loss on packed rows, the
learning-rate schedule, and the failures a recipe may raise."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openft.families import attention_implementation, lora_targets
from openft.store.blobs import BlobStore
from openft.training.config import Hyperparameters, RunConfig
from openft.training.data import IGNORE
from openft.training.hyperparameters import learning_rate
from openft.weights import is_adapter

if TYPE_CHECKING:
    from openft.ml_types import Model


class ModelLoadError(Exception):
    """The base model could not be loaded (missing, corrupt, unsupported)."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def setup_torch(device: torch.device, threads: int | None) -> None:
    """Threads (``OPENFT_TRAINING_THREADS``; every core when None) and
    deterministic kernels on CPU. Seeding is separate (:func:`seed_everything`)."""
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)


def seed_everything(seed: int) -> None:
    """Seed torch's generators. Recipes call this after the base model is
    loaded and the data read, right before the first draw (the adapter's
    initial weights), so nothing else can shift what a seed means."""
    torch.manual_seed(seed)


def begin(config: RunConfig) -> tuple[torch.device, BlobStore, Any, Any]:
    """How every recipe starts: (device, set up; the blob store; tokenizer; the
    starting model). A job that continues a full fine-tune starts from its
    weights; one that continues a LoRA model and trains ``full`` starts from
    the base with that adapter merged in; one that continues a LoRA model as
    LoRA starts from the base, and :func:`add_adapter` loads the adapter."""
    device = pick_device(config.device)
    setup_torch(device, config.threads)
    blobs = BlobStore(config.storage_url, config.storage_options)
    start = start_folder(config, blobs)
    if start is not None and not is_adapter(start):
        return device, blobs, *load_base(config, device, path=start)
    tokenizer, model = load_base(config, device)
    if start is not None and config.hyperparameters.get("training_type") == "full":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start).merge_and_unload()
    return device, blobs, tokenizer, model


def start_folder(config: RunConfig, blobs: BlobStore) -> Path | None:
    """The model folder the job continues from, on this machine (None: it
    starts from its base model)."""
    return None if config.start_key is None else config.model_folder(blobs, config.start_key)


def load_base(config: RunConfig, device: torch.device, *, path: Path | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) in fp32 from the base model (or ``path``, a full
    fine-tune's folder), with the fastest attention its architecture
    supports (``families.attention_implementation``); on a GPU the recipes
    run it under bf16 autocast."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        path = path or config.base_weights.local_path(Path(config.models_dir))
        tokenizer = AutoTokenizer.from_pretrained(path)
        model_class = AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(path))]
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation=attention_implementation(model_class, device)
        )
    except Exception as exc:
        raise ModelLoadError(f"Could not load base model {config.model!r}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device)


def add_adapter(model: Model, hp: Hyperparameters, start: Path | None = None) -> Any:
    """For LoRA, wrap the model with an adapter on the architecture's targets
    (``families.lora_targets``: every linear layer but the head and MoE
    routers, plus fused expert weights), or, continuing a LoRA model, with
    that model's adapter, trainable, with this run's dropout; a full
    fine-tune trains the model as it is."""
    if hp.training_type != "lora":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if start is not None and is_adapter(start):
        config = LoraConfig.from_pretrained(str(start))
        config.lora_dropout = hp.lora_dropout
        return PeftModel.from_pretrained(model, start, config=config, is_trainable=True)
    modules, parameters = lora_targets(model)
    return get_peft_model(model, LoraConfig(
        r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
        target_modules=modules, target_parameters=parameters or None, task_type="CAUSAL_LM",
    ))


def optimizer_and_schedule(
    model: Model, hp: Hyperparameters, method: str, total_steps: int
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer, Any]:
    """(trainable parameters, AdamW at the method's rate, linear warm-up then decay)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate(hp, method), weight_decay=0.0)
    warmup = int(total_steps * hp.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup))
    return trainable, optimizer, scheduler


def model_max_length(model: Model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def read_lines(blobs: BlobStore, key: str) -> list[str]:
    with blobs.open(key) as handle:
        return handle.read().decode("utf-8").splitlines()


def autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def label_logits(
    model: Model, row: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, labels, mask) at the labelled positions of one packed row.
    Runs the decoder once with ``use_cache=False`` (which keeps attention
    inside each packed example) and the output head only where a label is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with autocast(device):
        hidden = base.get_decoder()(
            input_ids=row["input_ids"].to(device),
            position_ids=row["position_ids"].to(device),
            use_cache=False,
        ).last_hidden_state
        targets = row["labels"][:, 1:].to(device)
        mask = targets != IGNORE
        logits = base.get_output_embeddings()(hidden[:, :-1][mask]).float()
    return logits, targets[mask], mask


def token_loss(model: Model, row: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, int, int]:
    """(summed cross-entropy, label tokens, correctly predicted tokens) of one packed row."""
    logits, labels, _ = label_logits(model, row, device)
    loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    correct = int((logits.argmax(-1) == labels).sum())
    return loss, int(labels.numel()), correct


def linear_schedule(total_steps: int, warmup_steps: int) -> Any:
    """Linear warm-up to the peak rate, then linear decay to zero at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        remaining = max(total_steps - warmup_steps, 1)
        return max(0.0, (total_steps - step) / remaining)

    return factor


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def epoch_order(n_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a function of (seed, epoch) only, so a
    resumed run visits exactly the batches an uninterrupted one would."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_examples, generator=generator).tolist()


def label_logprobs(
    model: Model, row: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of every labelled token of a packed row, the index of
    the example each belongs to, in packing order)."""
    logits, labels, mask = label_logits(model, row, device)
    token_logprobs = torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]
    example_of = (row["position_ids"][0] == 0).cumsum(0)[1:].to(device) - 1
    return token_logprobs, example_of[mask[0]]


def group_logprobs(
    model: Model, prompt: list[int], completions: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of every token of every completion, the completion
    each belongs to): the same values as :func:`label_logprobs` on the packed
    (prompt + completion) examples, for a fraction of the work when the
    completions share their prompt. The prompt runs once; its key/value cache
    (with its autograd graph) is repeated for every completion, and the
    completions run together, right-padded, against it. A group of 8
    completions of 16 tokens after a 45-token prompt is 173 tokens through
    the model instead of 488."""
    from openft.kv_cache import cache_keyword, cache_of

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    rows, width = len(completions), max(len(c) for c in completions)
    inputs = torch.zeros(rows, width, dtype=torch.long)
    targets = torch.full((rows, width), IGNORE, dtype=torch.long)
    for row, completion in enumerate(completions):
        inputs[row, : len(completion)] = torch.tensor([prompt[-1], *completion[:-1]])
        targets[row, : len(completion)] = torch.tensor(completion)
    mask = (targets != IGNORE).to(device)
    past = len(prompt) - 1
    with autocast(device):
        cached = decoder(input_ids=torch.tensor([prompt[:-1]], device=device), use_cache=True)
        cache = cache_of(cached)
        cache.batch_repeat_interleave(rows)
        attention = torch.cat([torch.ones(rows, past, dtype=torch.long, device=device), mask.long()], dim=1)
        positions = torch.arange(past, past + width, device=device).expand(rows, width)
        hidden = decoder(
            input_ids=inputs.to(device), attention_mask=attention, position_ids=positions, use_cache=True,
            **{cache_keyword(decoder): cache},
        ).last_hidden_state
        logits = base.get_output_embeddings()(hidden[mask]).float()
    labels = targets.to(device)[mask]
    token_logprobs = torch.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0]
    completion_of = torch.arange(rows, device=device)[:, None].expand(rows, width)[mask]
    return token_logprobs, completion_of


def sequence_logprobs(model: Model, row: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Summed log-probability of the labelled tokens of each example in a packed
    row (one value per example, in packing order)."""
    token_logprobs, example_of = label_logprobs(model, row, device)
    sums = torch.zeros(int((row["position_ids"][0] == 0).sum()), device=device)
    return sums.index_add(0, example_of, token_logprobs)
