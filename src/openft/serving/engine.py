"""Text generation for chat completions: loaded models, adapters, sampling.

One :class:`Engine` per API process keeps base models in an LRU cache bounded
by ``OPENFT_SERVING_MEMORY_MB``. A fine-tuned LoRA model is an adapter
loaded onto the one cached copy of its base (PEFT multi-adapter); a full
fine-tune is a base of its own. Each base has a lock: a generation selects its
adapter (or disables adapters, for the base itself) and runs under that lock,
so two concurrent requests for two adapters of one base each get their own
adapter's output. Loading and generation are blocking and run in worker
threads; the event loop stays free for health checks and the jobs API.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


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


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any  # a PeftModel once an adapter is loaded
    adapters: set[str]
    lock: threading.Lock
    bytes: int


class Engine:
    def __init__(self, memory_budget_bytes: int, device: str = "auto"):
        self._budget = memory_budget_bytes
        self._device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self._bases: OrderedDict[str, _Loaded] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}

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
            dtype = torch.bfloat16 if self._device.type == "cuda" else torch.float32
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self._device).eval()
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            loaded = _Loaded(tokenizer, model, set(), threading.Lock(), size)
            with self._cache_lock:
                self._bases[key] = loaded
                self._evict()
            return loaded

    def _evict(self) -> None:
        while len(self._bases) > 1 and sum(b.bytes for b in self._bases.values()) > self._budget:
            evicted, _ = self._bases.popitem(last=False)
            log.info("serving: evicted %s from the model cache", evicted)

    def _ready(self, ref: ModelRef) -> _Loaded:
        loaded = self._base(ref.base_path)
        if ref.adapter_path is not None and ref.id not in loaded.adapters:
            with loaded.lock:
                if ref.id not in loaded.adapters:
                    from peft import PeftModel

                    name = _adapter_name(ref.id)
                    if not loaded.adapters:
                        loaded.model = PeftModel.from_pretrained(
                            loaded.model, ref.adapter_path, adapter_name=name
                        ).eval()
                    else:
                        loaded.model.load_adapter(ref.adapter_path, adapter_name=name)
                    loaded.adapters.add(ref.id)
        return loaded

    # --------------------------------------------------------------- generation
    def prompt_ids(self, ref: ModelRef, messages: list[dict[str, str]]) -> list[int]:
        loaded = self._ready(ref)
        ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def generate(self, ref: ModelRef, prompt: list[int], params: GenerationParams) -> list[Completion]:
        loaded = self._ready(ref)
        with loaded.lock, self._adapter(loaded, ref), torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            input_ids = torch.tensor([prompt], device=self._device)
            output = loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                **self._sampling(loaded, params),
                num_return_sequences=params.n,
            )
        return [self._finish(loaded, row[len(prompt):].tolist(), params) for row in output]

    def stream(self, ref: ModelRef, prompt: list[int], params: GenerationParams) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then the final Completion (n = 1)."""
        from transformers import TextIteratorStreamer

        loaded = self._ready(ref)
        streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with loaded.lock, self._adapter(loaded, ref), torch.no_grad():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    input_ids = torch.tensor([prompt], device=self._device)
                    out = loaded.model.generate(
                        input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                        streamer=streamer, **self._sampling(loaded, params),
                    )
                result["tokens"] = out[0][len(prompt):].tolist()
            except BaseException as exc:  # surfaced to the caller after the stream ends
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        sent = ""
        for piece in streamer:
            if not piece:
                continue
            text = sent + piece
            cut = _first_stop(text, params.stop)
            if cut is not None:
                if text[:cut] != sent:
                    yield text[len(sent):cut]
                sent = text[:cut]
                break
            yield piece
            sent = text
        thread.join()
        if "error" in result:
            raise result["error"]
        yield self._finish(loaded, result["tokens"], params)

    def count_tokens(self, ref: ModelRef, text: str) -> int:
        return len(self._ready(ref).tokenizer(text, add_special_tokens=False)["input_ids"])

    def _sampling(self, loaded: _Loaded, params: GenerationParams) -> dict[str, Any]:
        tokenizer = loaded.tokenizer
        options: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if params.temperature == 0:
            options.update(do_sample=False)
        else:
            options.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            options.update(stop_strings=params.stop, tokenizer=tokenizer)
        return options

    def _finish(self, loaded: _Loaded, tokens: list[int], params: GenerationParams) -> Completion:
        tokenizer = loaded.tokenizer
        eos = tokenizer.eos_token_id
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos)]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, ended = text[:cut], True
        reason = "stop" if ended or len(tokens) < params.max_new_tokens else "length"
        return Completion(text=text, finish_reason=reason, completion_tokens=len(tokens) + int(eos is not None and ended))

    class _NoAdapter:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> None:
            return None

    def _adapter(self, loaded: _Loaded, ref: ModelRef) -> Any:
        if not loaded.adapters:
            return self._NoAdapter()
        if ref.adapter_path is None:
            return loaded.model.disable_adapter()
        loaded.model.set_adapter(_adapter_name(ref.id))
        return self._NoAdapter()


def _adapter_name(model_id: str) -> str:
    return "a" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


