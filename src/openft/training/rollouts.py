"""Sampling completions from the policy during reinforcement fine-tuning,
with the serving engine (:mod:`openft.serving.engine`).

The engine brings what the recipe needs: continuous batching (a finished
completion leaves the batch at once, so short answers do not wait for long
ones), one prefill per prompt shared by its group of completions, and a
``torch.Generator`` per completion seeded from the request, so a sample
depends on (seed, step, prompt) and not on timing: all of a step's requests
are queued at once (:meth:`Engine.submit_all`), and the batches form the same
way every run.

For a LoRA policy the engine decodes with a plain copy of the base model
whose linear weights are refreshed to ``W + scale * B @ A`` before each
round (:meth:`Rollouts.sync`): generation pays nothing for the adapter, and
the copy's base weights never drift (they are rebuilt from the untouched
originals each time). A full fine-tune decodes with the policy itself.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from openft.serving.engine import Engine, Request
from openft.serving.types import Completion, Completions, GenerationParams, StopSignal

if TYPE_CHECKING:
    from openft.ml_types import Model, Tokenizer

NO_DEADLINE = 10 * 365 * 24 * 3600.0
POLL_SECONDS = 0.05
"""How often a sampling round looks at its ``interrupted`` flag."""


class Interrupted(Exception):
    """A pause or cancel arrived while sampling (the round's requests are dropped)."""


class Rollouts:
    def __init__(self, base: Model, tokenizer: Tokenizer, device: torch.device, *, max_batch: int, lora: bool):
        """``base``: the model as loaded, before the adapter is added (a LoRA
        run then decodes with a copy of it)."""
        self.device = device
        self._copy = copy.deepcopy(base).eval() if lora else None
        self._policy: Any = None if lora else base
        self._pairs: list[tuple[torch.nn.Parameter, torch.nn.Module]] = []  # (copy's weight, LoRA layer)
        self.engine = Engine(
            lambda: self._copy if self._copy is not None else self._policy, tokenizer, device,
            max_batch=max_batch, max_queue=0, name="rollouts", lock=threading.Lock(),
            token_strings=lambda _token: ("", []), adapter_kwargs=lambda _names: {},
            prefix_cache_bytes=0,  # the policy's weights change every step: yesterday's rows are not its own
        )

    def attach(self, policy: Model) -> None:
        """The model being trained (a PeftModel for LoRA)."""
        if self._copy is None:
            self._policy = policy
            return
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import ParamWrapper

        for name, module in policy.named_modules():
            path = name.removeprefix("base_model.model.").replace(".base_layer", "")
            if isinstance(module, LoraLinear):
                self._pairs.append((self._copy.get_submodule(path).weight, module))
            elif isinstance(module, ParamWrapper):  # LoRA on fused expert weights (one wrapper per parameter)
                self._pairs.append((getattr(self._copy.get_submodule(path), module.parameter_name), module))
        if not self._pairs:
            raise RuntimeError("the LoRA policy has no LoRA layers to merge for sampling")

    @torch.no_grad()
    def sync(self) -> None:
        """Bring the decoding copy up to the policy's current weights."""
        for target, lora in self._pairs:
            delta = sum(lora.get_delta_weight(name) for name in lora.active_adapters)
            base = lora.get_param() if hasattr(lora, "get_param") else lora.base_layer.weight
            target.copy_(base + delta)

    def sample(self, prompts: list[list[int]], n: int, seeds: list[int], *, max_tokens: int,
               temperature: float = 1.0, interrupted: Callable[[], bool] | None = None) -> list[list[Completion]]:
        """``n`` completions of each prompt, sampled at ``temperature``. When
        ``interrupted()`` turns true, the round's rows leave the engine at its
        next step and :class:`Interrupted` is raised."""
        self.sync()
        was_training = self._policy is not None and self._policy.training
        if was_training:
            self._policy.eval()
        inboxes: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in prompts]
        params = [GenerationParams(max_new_tokens=max_tokens, temperature=temperature, seed=seed, n=n)
                  for seed in seeds]
        stops = [StopSignal(NO_DEADLINE) for _ in prompts]
        self.engine.submit_all([
            Request(prompt, param, stop, inbox.put)
            for prompt, param, stop, inbox in zip(prompts, params, stops, inboxes, strict=True)
        ])
        try:
            return [self._collect(inbox, n, stops, interrupted) for inbox in inboxes]
        finally:
            if was_training:
                self._policy.train()

    @staticmethod
    def _collect(inbox: queue.SimpleQueue[Any], n: int, stops: list[StopSignal],
                 interrupted: Callable[[], bool] | None) -> list[Completion]:
        completions = Completions(n)
        while True:
            try:
                event = inbox.get(timeout=POLL_SECONDS if interrupted else None)
            except queue.Empty:
                assert interrupted is not None
                if interrupted():
                    for stop in stops:
                        stop.cancel()
                    raise Interrupted from None
                continue
            if completions.add(event):
                return completions.result()

    def close(self) -> None:
        self.engine.close()
