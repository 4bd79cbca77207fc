"""Direct preference optimisation (DPO), LoRA or full, on preference files.

Reads top to bottom like the SFT recipe. The reference policy is the model
as loaded, before any update: its log-probabilities of every chosen and
rejected answer are computed once up front (so no second model is kept in
memory, and a resumed run uses the same reference). Each step packs a batch
of (chosen, rejected) pairs into one padding-free row and minimises

    -log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))

where pi and ref are the summed log-probabilities of the answer tokens.
Reported accuracy is the fraction of pairs the policy ranks correctly
relative to the reference (reward accuracy).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from openft.store.blobs import BlobStore
from openft.training import checkpoints
from openft.training.common import (
    epoch_order,
    linear_schedule,
    load_base,
    model_max_length,
    pick_device,
    read_lines,
    sequence_logprobs,
    setup_torch,
    steps_per_epoch,
)
from openft.training.config import RunConfig
from openft.training.data import Example, pack, tokenize_preferences
from openft.training.hyperparameters import learning_rate, resolve
from openft.training.recipes.sft import _metrics_event
from openft.training.report import Reporter

Pair = tuple[Example, Example]


def run(config: RunConfig, reporter: Reporter) -> None:
    device = pick_device(config.device)
    setup_torch(config.seed, device)
    blobs = BlobStore(config.storage_url)

    # Model.
    tokenizer, model = load_base(config, device)

    # Data.
    requested = config.hyperparameters
    max_length = int(requested.get("max_seq_length") or min(model_max_length(model), 2048))
    train, truncated = tokenize_preferences(
        tokenizer, read_lines(blobs, config.training_file_key), max_seq_length=max_length
    )
    valid: list[Pair] = []
    if config.validation_file_key:
        valid, _ = tokenize_preferences(
            tokenizer, read_lines(blobs, config.validation_file_key), max_seq_length=max_length
        )
    if truncated:
        reporter.event(
            f"{len(truncated)} preference examples were longer than {max_length} tokens and "
            f"were truncated (lines {', '.join(map(str, truncated[:20]))}).",
            level="warn",
            data={"truncated_lines": truncated},
        )

    # Hyperparameters.
    mean_tokens = sum(len(c.input_ids) + len(r.input_ids) for c, r in train) / len(train)
    hp = resolve(
        requested, method="dpo", n_examples=len(train), mean_tokens=mean_tokens,
        model_max_length=model_max_length(model), device=device.type,
    )
    hp["max_seq_length"] = max_length
    per_epoch = steps_per_epoch(len(train), hp["batch_size"])
    total_steps = per_epoch * hp["n_epochs"]

    # Reference log-probabilities, from the model as loaded.
    reference_train = reference_logprobs(model, train, hp["batch_size"], device)
    reference_valid = reference_logprobs(model, valid, hp["batch_size"], device)

    # Adapter.
    if hp["training_type"] == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=hp["lora_rank"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
            target_modules="all-linear", task_type="CAUSAL_LM",
        ))

    # Optimizer and schedule.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate(hp, "dpo"), weight_decay=0.0)
    warmup = int(total_steps * hp["warmup_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup))
    reporter.emit("hyperparameters", resolved=hp, total_steps=total_steps)

    # Resume.
    step, tokens, results = 0, 0, []
    if config.resume_state_key:
        meta = checkpoints.load_state(
            blobs, config.resume_state_key, model=model, optimizer=optimizer, scheduler=scheduler
        )
        step, tokens, results = meta["step"], meta["tokens"], meta["results"]
        reporter.event(f"Resuming training from step {step}/{total_steps}")

    def save_state() -> str:
        key = checkpoints.state_key(config.job_id, step)
        meta = {"step": step, "tokens": tokens, "results": results}
        checkpoints.save_state(blobs, key, model=model, optimizer=optimizer, scheduler=scheduler, meta=meta)
        return key

    # Train.
    model.train()
    started, first_step = time.monotonic(), step
    while step < total_steps:
        epoch, index = divmod(step, per_epoch)
        order = epoch_order(len(train), config.seed, epoch)
        chosen_ids = order[index * hp["batch_size"] : (index + 1) * hp["batch_size"]]
        loss, accuracy = dpo_loss(
            model, [train[i] for i in chosen_ids], reference_train[chosen_ids], hp["beta"], device
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += sum(len(c.input_ids) + len(r.input_ids) for c, r in (train[i] for i in chosen_ids))

        row: dict[str, Any] = {"step": step, "train_loss": loss.item(), "train_accuracy": accuracy}
        if valid and (step % max(1, per_epoch // 4) == 0 or step == total_steps):
            row["valid_loss"], row["valid_mean_token_accuracy"] = evaluate(
                model, valid, reference_valid, hp["batch_size"], hp["beta"], device
            )
        results.append(row)
        rate = (time.monotonic() - started) / (step - first_step)
        reporter.emit("metrics", **_metrics_event(row, total_steps),
                      estimated_finish=time.time() + rate * (total_steps - step))

        if step % per_epoch == 0:
            metrics = dict(row)
            if valid:
                metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = (
                    row.get("valid_loss"), row.get("valid_mean_token_accuracy"))
            state = save_state()
            model_key = checkpoints.checkpoint_key(config.job_id, step)
            checkpoints.save_model(blobs, model_key, model=model, tokenizer=tokenizer)
            reporter.emit("checkpoint", step=step, state_key=state, model_key=model_key,
                          metrics={k: v for k, v in metrics.items() if v is not None})

        stop = reporter.stop_requested()
        if stop == "cancel":
            return
        if stop == "pause" and step < total_steps:
            reporter.emit("paused", step=step, state_key=save_state())
            return

    # Save and report.
    model_key, results_key = checkpoints.save_final(
        blobs, config.job_id, model=model, tokenizer=tokenizer, results=results
    )
    reporter.emit("done", model_key=model_key, results_key=results_key, trained_tokens=tokens)


def pair_logprobs(model: Any, pairs: list[Pair], device: torch.device) -> torch.Tensor:
    """[n, 2]: summed answer log-probabilities (chosen, rejected) of each pair."""
    row = pack([example for pair in pairs for example in pair])
    return sequence_logprobs(model, row, device).view(-1, 2)


@torch.no_grad()
def reference_logprobs(model: Any, pairs: list[Pair], batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    parts = [pair_logprobs(model, pairs[i : i + batch_size], device) for i in range(0, len(pairs), batch_size)]
    model.train()
    return torch.cat(parts) if parts else torch.zeros(0, 2, device=device)


def dpo_loss(
    model: Any, pairs: list[Pair], reference: torch.Tensor, beta: float, device: torch.device
) -> tuple[torch.Tensor, float]:
    policy = pair_logprobs(model, pairs, device)
    margin = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, float((margin > 0).float().mean())


@torch.no_grad()
def evaluate(
    model: Any, pairs: list[Pair], reference: torch.Tensor, batch_size: int, beta: float,
    device: torch.device,
) -> tuple[float, float]:
    model.eval()
    losses, accuracies = [], []
    for start in range(0, len(pairs), batch_size):
        loss, accuracy = dpo_loss(
            model, pairs[start : start + batch_size], reference[start : start + batch_size], beta, device
        )
        n = len(pairs[start : start + batch_size])
        losses.append(loss.item() * n)
        accuracies.append(accuracy * n)
    model.train()
    return sum(losses) / len(pairs), sum(accuracies) / len(pairs)
