"""What the serving generator is asked and what it answers, without torch:
the API process imports these (wire schemas, the chat service) and loads
the generator itself only when the first chat request arrives."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelRef:
    """What to load: a base folder, plus an adapter folder for LoRA models."""

    id: str
    base_path: Path
    adapter_path: Path | None = None


@dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None
    tokens: list[int] = field(default_factory=list)
    """The sampled token ids (the end-of-turn token included when it ended the answer)."""


@dataclass
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass
class TokenLogprob:
    """One generated token's log-probability under the model (before
    temperature, top-p or a grammar reshaped the distribution), and the most
    likely alternatives at that position."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


@dataclass
class TokenEvent:
    """A sequence generated one token; ``text`` is what it adds to the visible
    answer ("" while the text may still turn into a stop string)."""

    index: int
    text: str
    logprob: TokenLogprob | None


@dataclass
class Finished:
    index: int
    finish_reason: str  # "stop" | "length"
    completion_tokens: int
    text: str
    tokens: list[int] = field(default_factory=list)


@dataclass
class Failed:
    error: BaseException


class Completions:
    """Folds one request's events into its ``n`` completions (sync and async
    readers alike): :meth:`add` each event until it returns True."""

    def __init__(self, n: int):
        self.n = n
        self._logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(n)}
        self._done: dict[int, Completion] = {}

    def add(self, event: TokenEvent | Finished | Failed) -> bool:
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, TokenEvent):
            if event.logprob is not None:
                self._logprobs[event.index].append(event.logprob)
        else:
            self._done[event.index] = Completion(event.text, event.finish_reason, event.completion_tokens,
                                                 self._logprobs[event.index] or None, event.tokens)
        return len(self._done) == self.n

    def result(self) -> list[Completion]:
        return [self._done[i] for i in range(self.n)]


class StopSignal:
    """Ends a generation early, checked before every new token: its client
    left (:meth:`cancel`), or its time limit (``OPENFT_GENERATION_TIMEOUT_SECONDS``)
    ran out. A generation stopped by its deadline reports ``finish_reason:
    "length"`` with what it had generated."""

    def __init__(self, timeout_seconds: float):
        self.deadline = time.monotonic() + timeout_seconds
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def timed_out(self) -> bool:
        return time.monotonic() >= self.deadline

    def should_stop(self) -> bool:
        return self.cancelled or self.timed_out
