"""Reinforcement fine-tuning (``method.type: "reinforcement"``): group-relative
policy optimisation (GRPO, Shao et al. 2024) with OpenAI's graders, LoRA or full.

Reads top to bottom like the other recipes. Each optimizer step takes
``batch_size`` prompts and

1. **samples** a group of ``group_size`` completions per prompt from the
   current policy (temperature 1, at most ``max_completion_tokens`` each) with
   the serving engine (:mod:`openft.training.rollouts`);
2. **grades** every completion with the job's grader (:mod:`openft.graders`);
   a grader error is reward 0 and is counted;
3. **normalises** rewards within each group: advantage = (r - mean) / (std + 1e-4).
   A group whose completions all got the same reward carries no signal and
   is left out of the update (DAPO's dynamic sampling, without resampling);
4. **updates** the policy once on the remaining completions, one group per
   forward pass with its prompt computed once (gradients accumulate), with
   the clipped objective and a KL penalty to the starting model, averaged
   over their tokens:

       loss = sum_t [ -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) + beta * KL_t ] / tokens

   with rho_t = pi(y_t) / pi_old(y_t) (one update per sample, so pi_old is the
   policy that sampled, detached), KL_t = exp(ref_t - pi_t) - (ref_t - pi_t) - 1
   (Schulman's k3 estimator) and ref the starting model (the LoRA adapter
   disabled, or a frozen copy for a full fine-tune or a continued LoRA model).

Every ``eval_interval`` steps (and at the last), ``eval_samples`` completions
of each validation prompt are sampled with seeds fixed per prompt, so two
validations differ only by the weights; the mean reward before training is
reported first, as the baseline. Metrics per step (events and result file):
``train_loss``, ``train_reward_mean``, ``train_reward_std``, ``kl``,
``grader_errors``, ``completion_tokens_mean``, ``valid_reward_mean``,
``valid_reward_std``. Sampling seeds are a function of (seed, step, prompt),
and so is dropout (the generator is seeded per step), so a paused and
resumed run equals an uninterrupted one. Running alone, a pause or cancel
that arrives mid-step (sampling or update) drops that step at once and the
state of the step before is saved; on several ranks it waits for the step's
end, so that every rank stops at the same step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openft import tool_format
from openft.families import has_fused_experts
from openft.graders.grader import Grader, GraderUnavailable, GradingContext
from openft.graders.sandbox import SandboxLimits
from openft.graders.templates import sample_namespace
from openft.store.blobs import BlobStore
from openft.training.checkpoints import RunProgress
from openft.training.common import (
    add_adapter,
    begin,
    epoch_order,
    group_logprobs,
    model_max_length,
    optimizer_and_schedule,
    read_lines,
    seed_everything,
    start_folder,
    steps_per_epoch,
)
from openft.training.config import Hyperparameters, RunConfig
from openft.training.data import Prompt, tokenize_prompts
from openft.training.hyperparameters import completion_budget, max_seq_length, resolve
from openft.training.records import HyperparametersRecord
from openft.training.report import Reporter
from openft.training.rollouts import Interrupted, Rollouts
from openft.training.team import SOLO, Team

if TYPE_CHECKING:
    from openft.ml_types import Model, Tokenizer

CLIP_EPSILON = 0.2
TEMPERATURE = 1.0
MAX_SAMPLING_BATCH = 256
"""Most sequences the sampler decodes at once (more wait for room; a group always fits)."""

RESULT_COLUMNS = {
    "step": "step", "train_loss": "train_loss", "train_reward_mean": "train_accuracy",
    "train_reward_std": "train_reward_std", "kl": "kl", "grader_errors": "grader_errors",
    "completion_tokens_mean": "completion_tokens_mean", "valid_reward_mean": "valid_accuracy",
    "valid_reward_std": "valid_reward_std",
}


def run(config: RunConfig, reporter: Reporter, team: Team = SOLO) -> None:
    # Device, storage, model.
    device, blobs, tokenizer, model = begin(config)

    # Data: prompts must leave room for a whole completion.
    requested = config.hyperparameters
    max_length = max_seq_length(requested, model_max_length(model))
    budget = completion_budget(requested)
    room = max_length - budget
    train = tokenize_prompts(tokenizer, read_lines(blobs, config.training_file_key), max_prompt_length=room)
    valid: list[Prompt] = []
    if config.validation_file_key:
        valid = tokenize_prompts(tokenizer, read_lines(blobs, config.validation_file_key), max_prompt_length=room)

    # Hyperparameters.
    hp = resolve(
        requested, method="reinforcement", n_examples=len(train),
        mean_tokens=sum(len(p.input_ids) for p in train) / len(train) + budget,
        max_length=max_length, device=device.type, experts=has_fused_experts(model),
    )
    assert hp.group_size and hp.max_completion_tokens and hp.eval_interval and hp.eval_samples
    per_epoch = steps_per_epoch(len(train), hp.batch_size)
    total_steps = per_epoch * hp.n_epochs

    # Grader, and the sampler (it copies the base model before the adapter is added).
    grader = Grader(config.method.grader, grading_context(config, device))
    if problem := grader.unavailable():
        raise GraderUnavailable(problem)
    wanted = max(hp.batch_size * hp.group_size, len(valid) * hp.eval_samples)
    rollouts = Rollouts(model, tokenizer, device, lora=hp.training_type == "lora",
                        max_batch=max(hp.group_size, hp.eval_samples, min(wanted, MAX_SAMPLING_BATCH)))
    reference = None if hp.training_type == "lora" or not hp.beta else frozen_copy(model)

    # Seed, then adapter: the first draws from the generator are the LoRA weights.
    seed_everything(config.seed)
    start = start_folder(config, blobs)
    model = add_adapter(model, hp, start)
    if reference is None and start is not None and hp.training_type == "lora" and hp.beta:
        reference = frozen_copy(model)  # the continued LoRA model, not the bare base
    rollouts.attach(model)

    # Optimizer and schedule.
    trainable, optimizer, scheduler = optimizer_and_schedule(model, hp, "reinforcement", total_steps)
    reporter.emit(HyperparametersRecord(hp.to_dict(), total_steps))

    # Resume.
    progress = RunProgress(
        blobs, config.job_id, reporter, model=model, tokenizer=tokenizer, optimizer=optimizer,
        scheduler=scheduler, total_steps=total_steps, steps_per_epoch=per_epoch,
        accuracy_name="reward_mean", team=team, result_columns=RESULT_COLUMNS,
    )
    progress.resume(config.resume_state_key)
    try:
        if valid and team.is_main and progress.step == 0:
            mean, spread, _ = validate(rollouts, grader, valid, hp, config.seed)
            reporter.event(f"Validation reward before training: mean={mean:.4f}, std={spread:.4f}",
                           data={"step": 0, "valid_reward_mean": mean, "valid_reward_std": spread})

        # Train. Alone, a pause or cancel may cut a step short (an RFT step can
        # take minutes): it is dropped and the state of the step before is saved.
        interrupted = (lambda: reporter.stop_requested() is not None) if team.size == 1 else None
        model.train()
        while not progress.done:
            epoch, index = progress.epoch_and_index
            order = epoch_order(len(train), config.seed, epoch)
            chosen = order[index * hp.batch_size : (index + 1) * hp.batch_size]
            step = progress.step + 1
            torch.manual_seed(sample_seed(config.seed, step, -1))  # dropout: a function of (seed, step)
            mine = team.share(chosen)
            seeds = [sample_seed(config.seed, step, i) for i in mine]
            prompts = [train[i] for i in mine]
            try:
                groups = rollouts.sample([p.input_ids for p in prompts], hp.group_size, seeds,
                                         max_tokens=hp.max_completion_tokens, temperature=TEMPERATURE,
                                         interrupted=interrupted)
                rewards, errors = grade(grader, prompts, groups, tokenizer)
                loss, kl = update(model, reference, prompts, groups, rewards, hp, device, team, interrupted)
            except Interrupted:
                optimizer.zero_grad(set_to_none=True)
                if progress.should_exit():
                    return
                continue
            team.sync_gradients(trainable)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            row: dict[str, Any] = {"train_loss": loss, "kl": kl, **step_statistics(rewards, groups, errors, team)}
            if valid and team.is_main and (step % hp.eval_interval == 0 or step == total_steps):
                row["valid_accuracy"], row["valid_reward_std"], _ = validate(rollouts, grader, valid, hp, config.seed)
            summary = f", mean reward={row['train_accuracy']:.4f}" + (
                f", validation reward={row['valid_accuracy']:.4f}" if "valid_accuracy" in row else "")
            tokens = sum(len(p.input_ids) * len(g) + sum(c.completion_tokens for c in g)
                         for p, g in zip(prompts, groups, strict=True))
            progress.stepped(int(team.sum(tokens)), row, summary)
            if progress.at_epoch_end and team.is_main:
                progress.checkpoint()
            if progress.should_exit():
                return

        # Save and report.
        progress.finish()
    finally:
        rollouts.close()
        grader.close()


def step_statistics(rewards: list[list[float]], groups: list[list[Any]], errors: int, team: Team) -> dict[str, Any]:
    """Reward mean and spread, grader errors and completion length over the
    whole step (every rank's share)."""
    flat = [r for group in rewards for r in group]
    count = team.sum(len(flat))
    mean = team.sum(sum(flat)) / count
    spread = math.sqrt(max(team.sum(sum(r * r for r in flat)) / count - mean * mean, 0.0))
    lengths = team.sum(sum(c.completion_tokens for group in groups for c in group))
    return {"train_accuracy": mean, "train_reward_std": spread, "grader_errors": int(team.sum(errors)),
            "completion_tokens_mean": lengths / count}


def grading_context(config: RunConfig, device: torch.device) -> GradingContext:
    """Sandbox limits and embedding model from the server's settings; a judge
    for model graders, served in this process by openft's own generator."""
    python = config.grader_limits.get("python")
    limits = SandboxLimits.from_dict(python) if python else SandboxLimits()
    embedding = config.grader_limits.get("embedding_model")
    judge = None
    if config.judges:
        from openft.graders.judge import GeneratorJudge
        from openft.serving.generator import Generator
        from openft.weights import BaseWeights, local_ref

        blobs = BlobStore(config.storage_url, config.storage_options)
        refs = {model_id: local_ref(model_id, BaseWeights(**where["base"]), where.get("adapter_key"), blobs,
                                    Path(config.models_dir))
                for model_id, where in config.judges.items()}
        judge = GeneratorJudge(Generator(16 * 2**30, device.type), refs, timeout_seconds=600)
    return GradingContext(limits, judge, Path(embedding) if embedding else None)


def frozen_copy(model: Model) -> Any:
    import copy

    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


def sample_seed(seed: int, step: int, prompt: int) -> int:
    """The sampling seed of one prompt's group at one step (``prompt`` -1: the
    step's own generator), within torch's 64-bit seed range."""
    return ((seed * 1_000_003 + step) * 1_000_033 + prompt) % (2**63 - 1)


def grade(grader: Grader, prompts: list[Prompt], groups: list[list[Any]],
          tokenizer: Tokenizer) -> tuple[list[list[float]], int]:
    """(rewards per group, completions whose grading had an error). Graders
    see the answer as chat completions return it: a reasoning model's
    thinking apart, tool calls read in the model's convention."""
    convention = tool_format.convention_of(tokenizer)
    style = tool_format.reasoning_style(getattr(tokenizer, "chat_template", None))
    rewards, errors = [], 0
    for prompt, group in zip(prompts, groups, strict=True):
        scores = []
        for completion in group:
            opened = tool_format.opens_thinking(tokenizer, prompt.input_ids)
            _, answer = tool_format.split_answer(completion.text, style, opened=opened)
            text = completion.text if convention.name == "harmony" else answer  # harmony's calls are on a channel
            calls = convention.parse(text, set(prompt.tool_names)) if prompt.tool_names else None
            tools = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                     for c in calls or []]
            result = grader.grade(sample_namespace(answer, tools), prompt.item)
            errors += result.failed
            scores.append(result.reward)
        rewards.append(scores)
    return rewards, errors


def advantages(rewards: list[float]) -> list[float]:
    mean, spread = statistics.fmean(rewards), statistics.pstdev(rewards)
    return [(r - mean) / (spread + 1e-4) for r in rewards]


def update(
    model: Model, reference: Model, prompts: list[Prompt], groups: list[list[Any]], rewards: list[list[float]],
    hp: Hyperparameters, device: torch.device, team: Team, interrupted: Callable[[], bool] | None = None,
) -> tuple[float, float]:
    """Accumulate the gradients of one step, one group per forward pass (its
    prompt computed once: :func:`~openft.training.common.group_logprobs`);
    returns (loss, mean KL per token). Groups without reward spread are skipped."""
    included = []
    for prompt, group, scores in zip(prompts, groups, rewards, strict=True):
        if max(scores) == min(scores):
            continue
        kept = [(c.tokens, a) for c, a in zip(group, advantages(scores), strict=True) if c.tokens]
        included.append((prompt, [tokens for tokens, _ in kept], [a for _, a in kept]))
    global_tokens = team.sum(sum(len(t) for _, completions, _ in included for t in completions))
    if not global_tokens:
        return 0.0, 0.0
    loss_sum, kl_sum = 0.0, 0.0
    for prompt, completions, weights in included:
        if interrupted is not None and interrupted():
            raise Interrupted
        logprobs, completion_of = group_logprobs(model, prompt.input_ids, completions, device)
        advantage = torch.tensor(weights, device=device)[completion_of]
        ratio = torch.exp(logprobs - logprobs.detach())
        objective = torch.minimum(ratio * advantage,
                                  ratio.clamp(1 - CLIP_EPSILON, 1 + CLIP_EPSILON) * advantage)
        loss = -objective
        if hp.beta:
            with torch.no_grad():
                ref = reference_logprobs(model, reference, prompt.input_ids, completions, device)
            gap = ref - logprobs
            kl = torch.exp(gap) - gap - 1
            loss = loss + hp.beta * kl
            kl_sum += float(kl.detach().sum())
        loss = loss.sum() / global_tokens
        loss.backward()
        loss_sum += float(loss.detach())
    return team.sum(loss_sum), team.sum(kl_sum) / global_tokens


def reference_logprobs(model: Model, reference: Model, prompt: list[int], completions: list[list[int]],
                       device: torch.device) -> torch.Tensor:
    """The starting model's log-probabilities of the completions' tokens."""
    if reference is not None:
        return group_logprobs(reference, prompt, completions, device)[0]
    with model.disable_adapter():
        return group_logprobs(model, prompt, completions, device)[0]


@torch.no_grad()
def validate(rollouts: Rollouts, grader: Grader, valid: list[Prompt], hp: Hyperparameters,
             seed: int) -> tuple[float, float, int]:
    """(mean reward, its spread, grader errors) over ``eval_samples`` completions
    of every validation prompt, with seeds fixed per prompt."""
    assert hp.eval_samples and hp.max_completion_tokens
    seeds = [sample_seed(seed, 0, 1_000_000 + i) for i in range(len(valid))]
    groups = rollouts.sample([p.input_ids for p in valid], hp.eval_samples, seeds,
                             max_tokens=hp.max_completion_tokens, temperature=TEMPERATURE)
    rewards, errors = grade(grader, valid, groups, rollouts.engine.tokenizer)
    flat = [r for group in rewards for r in group]
    return statistics.fmean(flat), statistics.pstdev(flat), errors



