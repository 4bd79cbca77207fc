"""Text generation for chat completions: loaded models, adapters, engines.

One :class:`Generator` per API process keeps base models in an LRU cache bounded
by ``OPENFT_SERVING_MEMORY_MB`` (a base with requests in flight is never
evicted). A fine-tuned LoRA model is an adapter loaded onto the one cached copy
of its base (PEFT multi-adapter); a full fine-tune is a base of its own.

Each cached base has an :class:`~openft.serving.engine.Engine`: a thread that
batches every request for that base and its adapters, token by token (see
the engine's docstring). Callers :meth:`Generator.submit` a request with a
sink for its events; :meth:`Generator.generate` is the blocking form used by
tests and tools. Loading runs in the caller's thread (under the base's lock
where it changes the model the engine is using).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openft import tool_format
from openft.errors import Overloaded
from openft.serving.constraints import Matchers
from openft.serving.engine import Engine, Request
from openft.serving.lora import BASE, BatchedLoRA
from openft.serving.types import (
    Completion,
    Completions,
    Failed,
    Finished,
    GenerationParams,
    ModelRef,
    StopSignal,
    TokenEvent,
)

if TYPE_CHECKING:
    from openft.ml_types import Model, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    tokenizer: Tokenizer
    model: Model  # a PeftModel once an adapter is loaded
    adapters: set[str]
    lock: threading.Lock  # held by the engine for each step, and while the model changes
    bytes: int
    engine: Engine | None = None
    token_strings: _TokenStrings | None = None
    lora: BatchedLoRA | None = None  # None: no adapters yet, or PEFT's mixed batches instead
    peft_path: bool = False  # an adapter the batched LoRA cannot run was loaded
    per_adapter: bool = False  # PEFT cannot mix these adapters in one pass either: one pass per adapter
    active: str | None = None  # the adapter PEFT has active (per-adapter passes)
    # Loaded adapters, least recently used first; their loads and unloads are serialised by adapter_lock.
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    adapter_lock: threading.Lock = field(default_factory=threading.Lock)
    # Requests between _ready and the engine's queue, per adapter id (then the engine knows them).
    pins: dict[str, int] = field(default_factory=dict)
    pin_lock: threading.Lock = field(default_factory=threading.Lock)
    adapters_evicted: int = 0

class Generator:
    def __init__(self, memory_budget_bytes: int, device: str = "auto", *, max_batch: int = 16,
                 max_queue: int = 64, dtype: str = "auto", max_cache_bytes: int | None = None,
                 prefix_cache_bytes: int = 256 * 2**20, prefill_chunk: int = 256, max_adapters: int = 32):
        self._budget = memory_budget_bytes
        self._max_cache_bytes = max_cache_bytes
        self._prefix_cache_bytes = prefix_cache_bytes
        self._prefill_chunk = prefill_chunk
        self.max_adapters = max_adapters
        self._device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        # 'auto': bfloat16 on a GPU, float32 on the CPU (where bfloat16 is an option: half the bytes per step,
        # and int8: float32 loaded, its linear layers then run on int8 weights, openft.serving.int8).
        self._int8 = dtype == "int8"
        if self._int8 and self._device.type != "cpu":
            raise ValueError("OPENFT_SERVING_DTYPE=int8 is for serving on the CPU; use bfloat16 on a GPU.")
        self._dtype = torch.float32 if self._int8 else getattr(torch, dtype) if dtype != "auto" else (
            torch.bfloat16 if self._device.type == "cuda" else torch.float32)
        self.max_batch, self.max_queue = max_batch, max_queue
        self._bases: OrderedDict[str, _Loaded] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        atexit.register(self.close)

    def close(self) -> None:
        """Stop every engine (waiting requests fail with a retryable error)."""
        with self._cache_lock:
            loaded, self._bases = list(self._bases.values()), OrderedDict()
        for base in loaded:
            if base.engine is not None:
                base.engine.close()

    # ------------------------------------------------------------------ loading
    def _base(self, path: Path) -> _Loaded:
        key = str(path)
        with self._cache_lock:
            if key in self._bases:
                self._bases.move_to_end(key)
                return self._bases[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per base; other bases are not blocked
            with self._cache_lock:
                if key in self._bases:
                    return self._bases[key]
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=self._dtype).to(self._device).eval()
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            loaded = _Loaded(tokenizer, model, set(), threading.Lock(), size)
            loaded.token_strings = _TokenStrings(tokenizer)
            matchers = Matchers(tokenizer)
            loaded.engine = Engine(
                lambda: loaded.model, tokenizer, self._device,
                max_batch=self.max_batch, max_queue=self.max_queue, name=path.name,
                lock=loaded.lock, token_strings=loaded.token_strings, matcher_factory=matchers.new,
                adapter_kwargs=lambda names: self._adapter_kwargs(loaded, names),
                max_cache_bytes=self._max_cache_bytes, prefix_cache_bytes=self._prefix_cache_bytes,
                prefill_chunk=self._prefill_chunk,
                prepare=lambda: self._choose_kernels(loaded, path.name),
            )
            with self._cache_lock:
                self._bases[key] = loaded
                self._evict()
            return loaded

    def _choose_kernels(self, loaded: _Loaded, name: str) -> None:
        """On the engine's thread (the one thread that computes with this model: a second thread's
        OpenMP pool would keep a core spinning): int8 weights when asked for, else single rows on
        OpenBLAS where it is measured faster."""
        model = loaded.model
        if self._device.type != "cpu" or self._dtype is not torch.float32:
            return
        if self._int8:
            from openft.serving.int8 import quantize_linears

            loaded.bytes += quantize_linears(model)
            log.info("serving: %s runs its linear layers on int8 weights", name)
            return
        from openft.serving import blas

        timing = blas.openblas_is_faster(model)  # which library streams this CPU's weights faster
        if timing.openblas_wins:
            blas.route_linears(model)
        log.info("serving: %s single-row products on %s (a pass: torch %.1f ms, OpenBLAS %.1f ms)",
                 name, "OpenBLAS" if timing.openblas_wins else "torch",
                 timing.torch_seconds * 1000, timing.openblas_seconds * 1000)

    def _evict(self) -> None:
        """Least recently used bases out while over budget; busy ones stay."""
        for key in list(self._bases):
            if len(self._bases) <= 1 or sum(b.bytes for b in self._bases.values()) <= self._budget:
                return
            loaded = self._bases[key]
            if loaded.engine is not None and loaded.engine.busy:
                continue
            del self._bases[key]
            if loaded.engine is not None:
                threading.Thread(target=loaded.engine.close, daemon=True).start()
            log.info("serving: evicted %s from the model cache", key)

    def _ready(self, ref: ModelRef, *, pin: bool = False) -> _Loaded:
        """The loaded base of ``ref``, with its adapter loaded; ``pin``: until :meth:`_unpin`, the
        adapter is not unloaded (the time between here and the engine's queue)."""
        loaded = self._base(ref.base_path)
        if ref.adapter_path is None:
            return loaded
        with loaded.adapter_lock:
            if ref.id not in loaded.adapters:
                self._load_adapter(loaded, ref)
            loaded.recent[ref.id] = None
            loaded.recent.move_to_end(ref.id)
            if pin:
                with loaded.pin_lock:
                    loaded.pins[ref.id] = loaded.pins.get(ref.id, 0) + 1
        return loaded

    @staticmethod
    def _unpin(loaded: _Loaded, ref: ModelRef) -> None:
        with loaded.pin_lock:
            loaded.pins[ref.id] -= 1
            if not loaded.pins[ref.id]:
                del loaded.pins[ref.id]

    def _load_adapter(self, loaded: _Loaded, ref: ModelRef) -> None:
        """Load ``ref``'s adapter onto its base (under ``adapter_lock``). At ``max_adapters``, the least
        recently used adapter that no request is using is unloaded once the new one is in; when every
        one is in use the request is refused (503), so adapters never grow past the bound."""
        from peft import PeftModel

        victim = None
        if len(loaded.adapters) >= self.max_adapters:
            assert loaded.engine is not None
            with loaded.lock, loaded.pin_lock:  # between two engine steps; pins first, then the queue: a
                pinned = set(loaded.pins)  # request is pinned until it is in the engine's queue
                busy = loaded.engine.adapters_in_use()
            victim = next((a for a in loaded.recent if a not in pinned and _adapter_name(a) not in busy), None)
            if victim is None:
                raise Overloaded(
                    f"All {self.max_adapters} fine-tuned models this server keeps loaded on this base are "
                    "answering requests (OPENFT_SERVING_MAX_ADAPTERS); retry shortly.", code="server_overloaded")
        with loaded.lock:  # between two engine steps
            name = _adapter_name(ref.id)
            if not loaded.adapters:
                loaded.model = PeftModel.from_pretrained(loaded.model, ref.adapter_path, adapter_name=name).eval()
            else:
                loaded.model.load_adapter(ref.adapter_path, adapter_name=name)
            loaded.adapters.add(ref.id)
            try:
                if victim is not None:  # after the load, as a PeftModel always keeps one adapter; no request
                    # can have queued for it meanwhile: requests pin under adapter_lock, which this load holds
                    loaded.model.delete_adapter(_adapter_name(victim))
                    loaded.adapters.discard(victim)
                    loaded.recent.pop(victim, None)
                    loaded.adapters_evicted += 1
                    log.info("serving: unloaded the least recently used adapter %s", victim)
            finally:
                loaded.active = None
                self._stack_adapters(loaded)

    @staticmethod
    def _stack_adapters(loaded: _Loaded) -> None:
        if loaded.peft_path:
            return
        loaded.lora = loaded.lora or BatchedLoRA(loaded.model)
        if not loaded.lora.rebuild():
            from peft.tuners.lora import ParamWrapper

            loaded.per_adapter = any(isinstance(m, ParamWrapper) for m in loaded.model.modules())
            log.info("serving: an adapter is not plain LoRA on linear layers; using %s",
                     "one pass per adapter" if loaded.per_adapter else "PEFT's mixed batches")
            loaded.model.base_model.enable_adapter_layers()
            loaded.lora, loaded.peft_path = None, True

    def _adapter_kwargs(self, loaded: _Loaded, names: list[str]) -> dict[str, Any] | None:
        """Ready a pass whose rows use ``names``; None when they cannot share one."""
        if not loaded.adapters:
            return {}
        if loaded.lora is not None:
            loaded.lora.select(names, self._device)
            return {}
        if not loaded.per_adapter:
            return {"adapter_names": names}
        if len(set(names)) > 1:
            return None
        if loaded.active != names[0]:  # LoRA on expert weights (ParamWrapper): one adapter per pass
            if names[0] == BASE:
                loaded.model.base_model.disable_adapter_layers()
            else:
                loaded.model.base_model.enable_adapter_layers()
                loaded.model.base_model.set_adapter(names[0])
            loaded.active = names[0]
        return {}

    # --------------------------------------------------------------- requests
    def prompt_ids(self, ref: ModelRef, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None = None, **switches: bool) -> list[int]:
        """The prompt's tokens; ``switches`` go to the template (``enable_thinking``)."""
        loaded = self._ready(ref)
        rendered, native_tools = tool_format.template_input(loaded.tokenizer, messages, tools)
        extra: dict[str, Any] = {"tools": native_tools} if native_tools else {}
        ids = loaded.tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=True, **extra,
                                                   **switches)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def chat_template(self, ref: ModelRef) -> str | None:
        return getattr(self._ready(ref).tokenizer, "chat_template", None)  # type: ignore[no-any-return]

    def opens_thinking(self, ref: ModelRef, prompt: list[int]) -> bool:
        """Whether the prompt ends inside a ``<think>`` block its template opened."""
        return tool_format.opens_thinking(self._ready(ref).tokenizer, prompt)

    def special_tokens(self, ref: ModelRef) -> dict[str, int]:
        """The model's control tokens, text -> id."""
        tokenizer = self._ready(ref).tokenizer
        return dict(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True))

    def convention(self, ref: ModelRef) -> tool_format.Convention:
        """How the model writes tool calls (its chat template's convention)."""
        return tool_format.convention_of(self._ready(ref).tokenizer)

    def context_length(self, ref: ModelRef) -> int:
        """Most tokens (prompt and completion together) the model takes."""
        loaded = self._ready(ref)
        config = loaded.model.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))

    def submit(
        self, ref: ModelRef, prompt: list[int], params: GenerationParams, stop: StopSignal,
        sink: Callable[[TokenEvent | Finished | Failed], None], *,
        grammar: str | None = None, logprobs: int | None = None, cache_scope: str = "",
    ) -> None:
        """Queue a request on its base's engine; events go to ``sink`` from the
        engine's thread. Raises :class:`~openft.errors.Overloaded` when the
        queue is full. Prompts reuse each other's cached rows only within one
        ``cache_scope`` (the organisation, where several share a process)."""
        loaded = self._ready(ref, pin=True)
        assert loaded.engine is not None
        adapter = _adapter_name(ref.id) if ref.adapter_path is not None else None
        try:
            loaded.engine.submit(Request(prompt, params, stop, sink, adapter=adapter, grammar=grammar,
                                         logprobs=logprobs, cache_scope=cache_scope))
        finally:  # queued (the engine now answers for its adapter) or refused
            if adapter is not None:
                self._unpin(loaded, ref)

    def generate(
        self, ref: ModelRef, prompt: list[int], params: GenerationParams, stop: StopSignal, *,
        grammar: str | None = None, logprobs: int | None = None,
    ) -> list[Completion]:
        """Blocking: every choice of one request, in order."""
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.submit(ref, prompt, params, stop, events.put, grammar=grammar, logprobs=logprobs)
        return collect(events.get, params.n)

    def engine(self, ref: ModelRef) -> Engine:
        engine = self._ready(ref).engine
        assert engine is not None
        return engine

    def stats(self) -> dict[str, dict[str, int]]:
        with self._cache_lock:
            bases = list(self._bases.items())
        out = {}
        for key, base in bases:
            if base.engine is not None:
                running, waiting = base.engine.load()
                adapters = sum(p.numel() * p.element_size() for name, p in base.model.named_parameters()
                               if "lora_" in name)
                out[Path(key).name] = {**base.engine.stats.as_dict(), "running": running, "waiting": waiting,
                                       **base.engine.memory(), "weights_bytes": base.bytes,
                                       "adapters_loaded": len(base.adapters), "adapters_bytes": adapters,
                                       "adapters_limit": self.max_adapters,
                                       "adapters_evicted": base.adapters_evicted}
        return out


def collect(get: Callable[[], Any], n: int) -> list[Completion]:
    """Completions from a request's events (``get`` blocks for the next)."""
    completions = Completions(n)
    while not completions.add(get()):
        pass
    return completions.result()


class _TokenStrings:
    """A token's text and exact bytes, for logprobs (cached per token)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}
        self._byte_of = _byte_decoder()

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self._cache:
            piece = self._tokenizer.convert_ids_to_tokens(token)
            raw: bytes
            if piece is not None and all(ch in self._byte_of for ch in piece):  # byte-level BPE
                raw = bytes(self._byte_of[ch] for ch in piece)
            elif piece is not None and piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
                raw = bytes([int(piece[3:5], 16)])  # SentencePiece byte fallback
            elif piece is not None and "\u2581" in piece:
                raw = piece.replace("\u2581", " ").encode()
            else:
                raw = self._tokenizer.decode([token]).encode()
            self._cache[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._cache[token]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(
        range(ord("\xae"), ord("\xff") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _adapter_name(model_id: str) -> str:
    return "a" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
