"""Direct preference optimisation (DPO), LoRA or full, on preference files,
with an RPO term on by default.

Reads top to bottom like the SFT recipe. The reference policy is the starting
model before any update (the base, or the fine-tuned model a job continues): its log-probabilities of every chosen and
rejected answer are computed once up front (so no second model is kept in
memory, and a resumed run uses the same reference). Each step packs a batch
of (chosen, rejected) pairs into one padding-free row and minimises

    -log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))  +  rpo_alpha * NLL(chosen)

where pi and ref are the summed log-probabilities of the answer tokens and
NLL(chosen) is the policy's mean per-token negative log-likelihood of the
preferred answers (RPO, Pang et al. 2024; TRL's ``rpo_alpha``). Plain DPO
(``rpo_alpha: 0``) can drive its loss to zero by lowering both answers'
likelihoods, leaving the preferred answer still not the model's choice; the
NLL term keeps the preferred answer's likelihood rising (measured in
``bench/dpo_defaults.py``). Reported accuracy is the reward accuracy: the
fraction of pairs the policy ranks correctly relative to the reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from openft.families import has_fused_experts
from openft.training.checkpoints import RunProgress
from openft.training.common import (
    add_adapter,
    begin,
    epoch_order,
    model_max_length,
    optimizer_and_schedule,
    read_lines,
    seed_everything,
    sequence_logprobs,
    start_folder,
    steps_per_epoch,
)
from openft.training.config import Hyperparameters, RunConfig
from openft.training.data import Example, pack, tokenize_preferences
from openft.training.hyperparameters import max_seq_length, resolve
from openft.training.records import HyperparametersRecord
from openft.training.report import Reporter
from openft.training.team import SOLO, Team

if TYPE_CHECKING:
    from openft.ml_types import Model

Pair = tuple[Example, Example]


def run(config: RunConfig, reporter: Reporter, team: Team = SOLO) -> None:
    # Device, storage, model.
    device, blobs, tokenizer, model = begin(config)

    # Data.
    requested = config.hyperparameters
    max_length = max_seq_length(requested, model_max_length(model))
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
    hp = resolve(
        requested, method="dpo", n_examples=len(train),
        mean_tokens=sum(len(c.input_ids) + len(r.input_ids) for c, r in train) / len(train),
        max_length=max_length, device=device.type, experts=has_fused_experts(model),
    )
    per_epoch = steps_per_epoch(len(train), hp.batch_size)
    total_steps = per_epoch * hp.n_epochs

    # Seed, then adapter: the first draws from the generator are the LoRA weights.
    seed_everything(config.seed)
    model = add_adapter(model, hp, start_folder(config, blobs))

    # Reference log-probabilities, from the starting model (a new adapter's B is
    # zero, so it is the model as loaded; a continued one is the earlier model).
    # No randomness: eval mode.
    reference_train = reference_logprobs(model, train, hp.batch_size, device)
    reference_valid = reference_logprobs(model, valid, hp.batch_size, device)

    # Optimizer and schedule.
    trainable, optimizer, scheduler = optimizer_and_schedule(model, hp, "dpo", total_steps)
    reporter.emit(HyperparametersRecord(hp.to_dict(), total_steps))

    # Resume.
    progress = RunProgress(
        blobs, config.job_id, reporter, model=model, tokenizer=tokenizer, optimizer=optimizer,
        scheduler=scheduler, total_steps=total_steps, steps_per_epoch=per_epoch,
        early_stopping_patience=hp.early_stopping_patience,
        keep_best=hp.fine_tuned_model_from == "best_valid_loss",
        accuracy_name="reward_accuracy", team=team,
    )
    progress.resume(config.resume_state_key)

    # Train.
    model.train()
    while not progress.done:
        epoch, index = progress.epoch_and_index
        order = epoch_order(len(train), config.seed, epoch)
        chosen_ids = order[index * hp.batch_size : (index + 1) * hp.batch_size]
        batch = [train[i] for i in chosen_ids]
        # This rank's share, with the global batch's denominators (see training.team).
        mine = team.share(chosen_ids)
        loss, correct = (
            dpo_loss(model, [train[i] for i in mine], reference_train[mine], hp, device, whole=batch)
            if mine else (torch.zeros(()), 0)
        )
        if mine:
            loss.backward()
        team.sync_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        row: dict[str, Any] = {"train_loss": team.sum(loss.item()), "train_accuracy": team.sum(correct) / len(batch)}
        step = progress.step + 1
        if valid and team.is_main and (step % max(1, per_epoch // 4) == 0 or step == total_steps):
            row["valid_loss"], row["valid_accuracy"] = evaluate(model, valid, reference_valid, hp, device)
        progress.stepped(sum(len(c.input_ids) + len(r.input_ids) for c, r in batch), row)
        if progress.at_epoch_end and team.is_main:
            full = (row["valid_loss"], row["valid_accuracy"]) if "valid_loss" in row else None
            progress.checkpoint(full)
        if progress.should_exit():
            return

    # Save and report.
    progress.finish()


def pair_logprobs(model: Model, pairs: list[Pair], device: torch.device) -> torch.Tensor:
    """[n, 2]: summed answer log-probabilities (chosen, rejected) of each pair."""
    row = pack([example for pair in pairs for example in pair])
    return sequence_logprobs(model, row, device).view(-1, 2)


@torch.no_grad()
def reference_logprobs(model: Model, pairs: list[Pair], batch_size: int, device: torch.device) -> torch.Tensor:
    model.eval()
    parts = [pair_logprobs(model, pairs[i : i + batch_size], device) for i in range(0, len(pairs), batch_size)]
    model.train()
    return torch.cat(parts) if parts else torch.zeros(0, 2, device=device)


def dpo_loss(
    model: Model, pairs: list[Pair], reference: torch.Tensor, hp: Hyperparameters, device: torch.device,
    *, whole: list[Pair] | None = None,
) -> tuple[torch.Tensor, int]:
    """(DPO loss + rpo_alpha x mean NLL per preferred-answer token, pairs whose
    reward margin is positive). ``whole``: the global batch ``pairs`` is a
    share of, whose pair and token counts are the denominators (default: ``pairs``)."""
    whole = pairs if whole is None else whole
    policy = pair_logprobs(model, pairs, device)
    margin = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    loss = -F.logsigmoid(float(hp.beta or 0.0) * margin).sum() / len(whole)
    if hp.rpo_alpha:
        chosen_tokens = sum(chosen.n_label_tokens for chosen, _ in whole)
        loss = loss + hp.rpo_alpha * (-policy[:, 0].sum() / max(chosen_tokens, 1))
    return loss, int((margin > 0).sum())


@torch.no_grad()
def evaluate(
    model: Model, pairs: list[Pair], reference: torch.Tensor, hp: Hyperparameters, device: torch.device,
) -> tuple[float, float]:
    model.eval()
    losses, accuracies = [], []
    for start in range(0, len(pairs), hp.batch_size):
        chunk = pairs[start : start + hp.batch_size]
        loss, correct = dpo_loss(model, chunk, reference[start : start + hp.batch_size], hp, device)
        losses.append(loss.item() * len(chunk))
        accuracies.append(correct)
    model.train()
    return sum(losses) / len(pairs), sum(accuracies) / len(pairs)
