"""Text generation for chat completions: loaded models, adapters, sampling.

One :class:`Generator` per API process keeps base models in an LRU cache bounded
by ``OPENFT_SERVING_MEMORY_MB``. A fine-tuned LoRA model is an adapter
loaded onto the one cached copy of its base (PEFT multi-adapter); a full
fine-tune is a base of its own. Each base has a lock: a generation selects its
adapter (or disables adapters, for the base itself) and runs under that lock,
so two concurrent requests for two adapters of one base each get their own
adapter's output. Loading and generation are blocking and run in worker
threads; the event loop stays free for health checks and the jobs API.

Every generation carries a :class:`~openft.serving.types.StopSignal`, checked
before each new token and while waiting for the base's lock: a client that
leaves (a closed stream, a dropped connection) or the time limit
``OPENFT_GENERATION_TIMEOUT_SECONDS`` ends it at once, so abandoned work never
holds a base that other requests wait for.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from openft.errors import Overloaded
from openft.serving.types import Completion, GenerationParams, ModelRef, StopSignal

log = logging.getLogger(__name__)


@dataclass
class _Loaded:
    tokenizer: Any
    model: Any  # a PeftModel once an adapter is loaded
    adapters: set[str]
    lock: threading.Lock
    bytes: int


class Generator:
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

    def generate(
        self, ref: ModelRef, prompt: list[int], params: GenerationParams, stop: StopSignal
    ) -> list[Completion]:
        loaded = self._ready(ref)
        with _held(loaded.lock, stop), self._adapter(loaded, ref), torch.no_grad():
            output = self._run(loaded, prompt, params, stop, num_return_sequences=params.n)
        return [self._finish(loaded, row[len(prompt):].tolist(), params, stop) for row in output]

    def stream(
        self, ref: ModelRef, prompt: list[int], params: GenerationParams, stop: StopSignal
    ) -> Iterator[str | Completion]:
        """Text pieces as they are generated, then the final Completion (n = 1).
        Whoever stops iterating must ``stop.cancel()``: the generating thread
        then ends at its next token and releases the base's lock."""
        from transformers import TextIteratorStreamer

        loaded = self._ready(ref)
        streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with _held(loaded.lock, stop), self._adapter(loaded, ref), torch.no_grad():
                    out = self._run(loaded, prompt, params, stop, streamer=streamer)
                result["tokens"] = out[0][len(prompt):].tolist()
            except BaseException as exc:  # surfaced to the caller after the stream ends
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        sent = ""
        try:
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
        finally:
            if thread.is_alive() and "tokens" not in result:
                stop.cancel()  # a stop string ended the text, or the reader left
            thread.join()
        if "error" in result:
            raise result["error"]
        yield self._finish(loaded, result["tokens"], params, stop)

    def _run(
        self, loaded: _Loaded, prompt: list[int], params: GenerationParams, stop: StopSignal, **extra: Any
    ) -> torch.Tensor:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        input_ids = torch.tensor([prompt], device=self._device)
        return loaded.model.generate(  # type: ignore[no-any-return]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            stopping_criteria=StoppingCriteriaList([_Stop(stop)]),
            **self._sampling(loaded, params),
            **extra,
        )

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

    def _finish(
        self, loaded: _Loaded, tokens: list[int], params: GenerationParams, stop: StopSignal
    ) -> Completion:
        tokenizer = loaded.tokenizer
        eos = tokenizer.eos_token_id
        ended = eos in tokens
        if ended:
            tokens = tokens[: tokens.index(eos)]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text, ended = text[:cut], True
        # Cut short by the time limit (or a cancel) counts as "length": the answer is incomplete.
        complete = ended or (len(tokens) < params.max_new_tokens and not stop.should_stop())
        reason = "stop" if complete else "length"
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


class _Stop(StoppingCriteria):
    """Asked by ``generate`` after every token: stop when the signal says so."""

    def __init__(self, signal: StopSignal):
        self.signal = signal

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.signal.should_stop(), dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _held:
    """The base's lock, waited for no longer than the generation's deadline."""

    def __init__(self, lock: threading.Lock, stop: StopSignal):
        self.lock, self.stop = lock, stop

    def __enter__(self) -> None:
        while not self.lock.acquire(timeout=0.25):
            if self.stop.cancelled:
                raise Overloaded("The request was cancelled while waiting for the model.")
            if self.stop.timed_out:
                raise Overloaded(
                    "The model was busy for the whole generation time limit "
                    "(OPENFT_GENERATION_TIMEOUT_SECONDS); retry later."
                )

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def _adapter_name(model_id: str) -> str:
    return "a" + hashlib.sha256(model_id.encode()).hexdigest()[:16]


def _first_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


