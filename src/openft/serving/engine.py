"""Continuous batching for one loaded base model: many requests, one forward
pass per step.

An :class:`Engine` owns a thread that runs the decode loop of one base. Every
step it

1. **admits** waiting requests while the batch has room (``max_batch``
   sequences): each is prefilled on its own (requests with prompts of one
   length, and the ``n`` choices of one request, share a prefill), samples its
   first token and joins the running batch; a prompt that begins like one
   prefilled before (under the same adapter and ``cache_scope``, an
   organisation) computes only the rest, on that prompt's stored key/value
   rows (:mod:`openft.serving.prefix_cache`, bounded by
   ``prefix_cache_bytes``: the generator's engines get
   ``OPENFT_SERVING_PREFIX_CACHE_MB``; 0, off, for RFT's rollouts, whose
   weights change). A prompt with more than ``prefill_chunk`` tokens left to
   compute (``OPENFT_SERVING_PREFILL_CHUNK``) is prefilled that many tokens
   per step instead, each part followed by the running rows' decode step, so
   a long prompt arriving does not stall the answers already streaming;
2. **decodes** one token for every running sequence in a single forward pass:
   the batch's key/value cache is left-padded, each row has its own attention
   mask and position ids, and each row names its LoRA adapter
   (:mod:`openft.serving.lora`: stacked adapter weights and two batched
   matrix products per LoRA layer; PEFT's ``adapter_names`` where that does
   not apply), so a base and any number of its adapters share the pass.
   Adapters that no shared pass can run (LoRA on the fused expert weights
   of a mixture-of-experts model: PEFT's ``ParamWrapper`` has no mixed
   batches) make ``adapter_kwargs`` answer None, and the step runs one pass
   per adapter over its rows' slice of the cache (correct, slower);
3. **retires** sequences that finished (end of turn, a stop string,
   ``max_tokens``, a grammar that is complete) or whose client left or whose
   time ran out: their rows leave the cache at once, and the cache's leading
   columns that only padding still uses are cut away.

A new request therefore starts at the next step, not when the batch drains,
and a finished or abandoned one frees its slot immediately.

The cache is transformers' ``DynamicCache`` with a full layer for every
decoder layer, also for models with sliding-window layers (Gemma 2 and 3,
gpt-oss, Mistral): a sliding layer's own cache keeps only its window, so
rows of different lengths could not be padded into one tensor. Keeping
every column costs memory beyond the window but changes no answer: the
model's sliding mask is computed from column distances, which left padding
leaves equal to token distances, so each row still sees only its window.

Per-row work happens in this thread too, so the API's event loop only
forwards events: sampling (greedy, or temperature/top-p with the sequence's
own ``torch.Generator``, so a seed means the same output whatever the batch),
grammar masks for structured output (:mod:`openft.serving.constraints`),
log-probabilities of the model's distribution, incremental detokenisation and
stop strings (text that may be the start of a stop string is held back).

Greedy output is what the model would produce alone, up to floating-point
reordering: padded key columns add exact zeros to attention, but matrix
products over a batch may sum in another order than over one row, so a
near-tie between two tokens can flip (measured in ``bench/serving.py``).

The engine is bounded: at most ``max_batch`` running sequences and
``max_queue`` waiting requests; :meth:`Engine.submit` refuses beyond that with
:class:`~openft.errors.Overloaded` (503, ``Retry-After``). A request still
waiting when its deadline passes fails with the same error.

Its key/value cache is bounded too (``max_cache_bytes``,
``OPENFT_SERVING_KV_CACHE_MB``): the cache is ``rows x width x
bytes_per_token`` and its width never passes the longest row's prompt plus
``max_new_tokens``, so a request is admitted only while that product, with
it, stays within the bound; otherwise it waits for rows to finish. One that
could not fit even alone generates at most what fits alone (``length``, as
at the end of the context), and one whose prompt alone cannot fit is
refused when it is submitted; never an out-of-memory crash mid-generation.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from openft import tool_format
from openft.errors import InvalidRequest, Overloaded
from openft.kv_cache import bytes_per_token, cache_keyword, cache_of
from openft.serving.lora import BASE
from openft.serving.prefix_cache import PrefixCache, PrefixHit
from openft.serving.types import (
    Failed,
    Finished,
    GenerationParams,
    StopSignal,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
)

if TYPE_CHECKING:
    from openft.ml_types import Model, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One chat completion as the engine sees it: ``params.n`` sequences over
    one prompt. ``sink`` receives its events, from the engine's thread."""

    prompt: list[int]
    params: GenerationParams
    stop: StopSignal
    sink: Callable[[TokenEvent | Finished | Failed], None]
    adapter: str | None = None
    grammar: str | None = None  # an llguidance grammar (structured output, forced tool calls)
    logprobs: int | None = None  # None: off; 0..20: the chosen token plus this many alternatives
    cache_scope: str = ""  # who may reuse this prompt's rows (an organisation): the prefix cache never crosses it


@dataclass
class EngineStats:
    """Counters of what the engine did, for tests and benchmarks."""

    steps: int = 0  # decode steps
    rows: int = 0  # sequences summed over decode steps
    largest_batch: int = 0
    mixed_steps: int = 0  # decode steps whose rows used more than one adapter (or base + adapter)
    joined_running: int = 0  # sequences admitted while others were mid-generation
    prefills: int = 0
    prefill_chunks: int = 0  # passes over a part of a long prompt (OPENFT_SERVING_PREFILL_CHUNK)
    interleaved_steps: int = 0  # decode steps run between two parts of a long prompt's prefill
    refused: int = 0  # requests refused because the queue was full
    cancelled: int = 0  # sequences dropped because the client left or time ran out

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class _Sequence:
    """One choice being generated: its tokens, sampler, grammar and text."""

    def __init__(self, request: Request, index: int, decode: Callable[[list[int]], str], matcher: Any):
        self.request, self.index = request, index
        self.tokens: list[int] = []
        self.matcher = matcher
        self.text = _TextStream(decode, request.params.stop)
        self.done = False
        seed = request.params.seed
        base = secrets.randbits(63) if seed is None else seed
        self.generator: torch.Generator | None = None
        if request.params.temperature > 0:
            self.generator = torch.Generator().manual_seed((base + index * 0x9E3779B97F4A7C15) % 2**63)

    @property
    def adapter(self) -> str:
        return self.request.adapter or BASE


@dataclass
class _Chunked:
    """A long prompt being prefilled a part per step: its cache so far and how many tokens it holds."""

    request: Request
    cache: Any  # DynamicCache
    done: int


class Engine:
    def __init__(
        self,
        model: Callable[[], Any],
        tokenizer: Tokenizer,
        device: torch.device,
        *,
        max_batch: int,
        max_queue: int,
        name: str,
        lock: threading.Lock,
        token_strings: Callable[[int], tuple[str, list[int]]],
        matcher_factory: Callable[[str], Any] | None = None,
        adapter_kwargs: Callable[[list[str]], dict[str, Any] | None],
        max_cache_bytes: int | None = None,
        prefix_cache_bytes: int = 0,
        prefill_chunk: int = 0,
        prepare: Callable[[], None] | None = None,
    ):
        """``model()`` gives the current model (a PeftModel once an adapter is
        loaded); ``lock`` is held for each step, and by whoever changes the
        model (loading an adapter); ``adapter_kwargs(names)`` readies a
        forward pass whose rows use those adapters and gives its arguments,
        or None when those adapters cannot share one pass; a prompt with more
        than ``prefill_chunk`` tokens left to compute (0: none) is prefilled
        that many tokens per step, between decode steps; ``prepare()`` runs
        first on the engine's thread (which then does all of the model's
        computing: torch's OpenMP pool is per thread, and a second pool's
        workers keep spinning on the cores after their work)."""
        self._model, self.tokenizer, self.device = model, tokenizer, device
        self.max_batch, self.max_queue = max_batch, max_queue
        self.lock = lock
        self._token_strings = token_strings
        self._matcher_factory = matcher_factory
        self._adapter_kwargs = adapter_kwargs
        self.stats = EngineStats()
        self.max_cache_bytes = max_cache_bytes
        self._prefixes = PrefixCache(prefix_cache_bytes)
        self.bytes_per_token = bytes_per_token(model())
        self._eos = _eos_ids(model(), tokenizer)
        self._cache_kw = cache_keyword(model())
        # Control tokens are dropped from the text, except where they carry the answer's structure
        # (gpt-oss's harmony channels: the chat layer reads them).
        keep = tool_format.convention_of(tokenizer).name == "harmony"
        self._decode_text = lambda tokens: tokenizer.decode(tokens, skip_special_tokens=not keep)
        self._waiting: deque[Request] = deque()
        self._running: list[_Sequence] = []
        self.prefill_chunk = prefill_chunk
        self._chunked: deque[_Chunked] = deque()  # admitted long prompts, prefilled a part per step
        self._admitting: list[Request] = []  # taken from the queue for the step under way
        self._cache: Any = None  # DynamicCache of the running rows, left-padded
        self._mask: torch.Tensor | None = None  # [rows, cached columns]: 1 real, 0 padding
        self._cond = threading.Condition()
        self._closed = False
        self._prepare = prepare
        self._thread = threading.Thread(target=self._loop, name=f"openft-engine-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API
    def _projected_bytes(self, widths: list[int]) -> int:
        """The most the cache of rows of these widths (prompt + max_new_tokens) can take."""
        return len(widths) * max(widths, default=0) * self.bytes_per_token

    def submit(self, request: Request) -> None:
        if request.params.n > self.max_batch:
            raise InvalidRequest(f"n={request.params.n} is more than this server's batch size "
                                 f"(OPENFT_SERVING_MAX_BATCH={self.max_batch}).", param="n")
        if self.max_cache_bytes is not None:
            self._fit_alone(request)
        with self._cond:
            room = max(0, self.max_batch - self._rows())  # taken at the next step, not queued
            if len(self._waiting) >= self.max_queue + room:
                self.stats.refused += 1
                raise Overloaded(
                    "The model's request queue is full (OPENFT_SERVING_MAX_QUEUE); retry shortly.",
                    code="server_overloaded",
                )
            self._waiting.append(request)
            self._cond.notify()

    def _fit_alone(self, request: Request) -> None:
        """A request whose rows could pass the cache bound even alone generates at most what fits (it
        ends with finish_reason 'length' there, as at the end of the context); one whose prompt alone
        cannot fit is refused."""
        assert self.max_cache_bytes is not None
        n = request.params.n
        most = self.max_cache_bytes // (n * self.bytes_per_token)  # widest row n rows may have
        if len(request.prompt) + 1 > most:
            raise InvalidRequest(
                f"This request's prompt ({len(request.prompt)} tokens, {n} choice(s)) does not fit the server's "
                f"key/value cache bound of {self.max_cache_bytes / 2**20:.0f} MiB (OPENFT_SERVING_KV_CACHE_MB).",
                param="messages" if n == 1 else "n")
        if _width(request) > most:
            request.params = replace(request.params, max_new_tokens=most - len(request.prompt))

    def submit_all(self, requests: list[Request]) -> None:
        """Queue several requests at once, unbounded by ``max_queue``: the
        engine sees all of them at its next step, so batches are formed the
        same way on every run (the training sampler's determinism rests on it)."""
        with self._cond:
            self._waiting.extend(requests)
            self._cond.notify()

    @property
    def busy(self) -> bool:
        with self._cond:
            return bool(self._waiting or self._running or self._chunked)

    def load(self) -> tuple[int, int]:
        """(running sequences, waiting requests)."""
        with self._cond:
            return self._rows(), len(self._waiting)

    def adapters_in_use(self) -> set[str]:
        """The adapters of every request running, being prefilled or waiting (call between steps)."""
        with self._cond:
            requests = [s.request for s in self._running] + [j.request for j in self._chunked] + list(
                self._waiting) + self._admitting
        return {r.adapter for r in requests if r.adapter is not None}

    def memory(self) -> dict[str, int]:
        """The key/value cache now: its bytes, the most the running rows may take, the bound, per token;
        the prefix cache: its bytes, bound, prompts, and how often and how much it saved."""
        with self._cond:
            cache, mask = self._cache, self._mask
            reserved = self._projected_bytes(self._widths())
            partial = [job.cache for job in self._chunked]
        used = sum(t.nbytes for c in [cache, *partial] if c is not None for layer in c.layers
                   for t in (layer.keys, layer.values))
        prefixes = self._prefixes
        return {"kv_cache_bytes": used + (0 if mask is None else mask.nbytes), "kv_cache_reserved_bytes": reserved,
                "kv_cache_limit_bytes": self.max_cache_bytes or 0, "kv_bytes_per_token": self.bytes_per_token,
                "prefix_cache_bytes": prefixes.nbytes, "prefix_cache_limit_bytes": prefixes.max_bytes,
                "prefix_cache_prompts": len(prefixes), "prefix_cache_hits": prefixes.hits,
                "prefix_tokens_reused": prefixes.tokens_reused}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # ----------------------------------------------------------------- loop
    def _loop(self) -> None:
        if self._prepare is not None:
            try:
                with self.lock, torch.inference_mode():
                    self._prepare()
            except Exception:  # a speed-up that failed leaves the model as it was loaded
                log.exception("serving engine preparation failed")
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._running and not self._chunked:
                    self._cond.wait()
                if self._closed:
                    for request in self._waiting:
                        request.sink(Failed(Overloaded("The model was unloaded; retry.")))
                    for seq in self._running:
                        seq.request.sink(Failed(Overloaded("The model was unloaded; retry.")))
                    for job in self._chunked:
                        job.request.sink(Failed(Overloaded("The model was unloaded; retry.")))
                    return
                admitted = self._take_admissible()
                self._admitting = admitted  # taken off the queue, not yet in the batch (adapters_in_use)
            try:
                with self.lock, torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    if self._chunked:
                        self._prefill_part()  # one part of the oldest long prompt, then the running rows' step
                    self._retire()
                    if self._running:
                        self._decode()
                        self._retire()
            except Exception as exc:  # a failed step fails its rows, never the engine
                log.exception("serving engine step failed")
                failed = {id(s.request): s.request for s in self._running}
                failed.update({id(r): r for r in admitted})
                failed.update({id(job.request): job.request for job in self._chunked})
                for request in failed.values():
                    request.sink(Failed(exc))
                self._running, self._cache, self._mask = [], None, None
                with self._cond:
                    self._chunked.clear()
            finally:
                with self._cond:
                    self._admitting = []

    def _take_admissible(self) -> list[Request]:
        """Waiting requests that fit in the batch now (in arrival order);
        requests that waited past their deadline, or whose client left, are
        answered here and never start."""
        admitted: list[Request] = []
        room = self.max_batch - self._rows()
        widths = self._widths()
        while self._waiting:
            request = self._waiting[0]
            if request.stop.cancelled:
                self._waiting.popleft()
                self.stats.cancelled += 1
                continue
            if request.stop.timed_out:
                self._waiting.popleft()
                request.sink(Failed(Overloaded(
                    "The model was busy for the whole generation time limit "
                    "(OPENFT_GENERATION_TIMEOUT_SECONDS); retry later.")))
                continue
            if request.params.n > room:
                break
            grown = widths + [_width(request)] * request.params.n
            if self.max_cache_bytes is not None and self._projected_bytes(grown) > self.max_cache_bytes:
                if widths:
                    break  # it waits (in order) until running rows finish and free their share
                self._waiting.popleft()  # not even alone (submit_all skips submit's check): it never could
                request.sink(Failed(InvalidRequest("This request's key/value cache could not fit the server's "
                                                   "bound (OPENFT_SERVING_KV_CACHE_MB).", param="max_tokens")))
                continue
            room -= request.params.n
            widths = grown
            admitted.append(self._waiting.popleft())
        return admitted

    # -------------------------------------------------------------- prefill
    def _rows(self) -> int:
        """Sequences generating or being prefilled (each counts against the batch)."""
        return len(self._running) + sum(job.request.params.n for job in self._chunked)

    def _widths(self) -> list[int]:
        """The most cache columns each of those sequences may take."""
        return [_width(s.request) for s in self._running] + [
            _width(job.request) for job in self._chunked for _ in range(job.request.params.n)]

    def _prefill(self, requests: list[Request]) -> None:
        """Run the prompts of newly admitted requests, sample their first
        tokens, and merge their cache rows into the running batch. A prompt
        whose beginning the prefix cache holds computes only the rest; prompts
        with as many tokens reused and as many left to compute share a pass.
        A prompt with more than ``prefill_chunk`` tokens left joins the
        chunked queue instead (:meth:`_prefill_part`)."""
        if self._running:
            self.stats.joined_running += sum(r.params.n for r in requests)
        groups: dict[tuple[int, int, str], list[tuple[Request, PrefixHit | None]]] = {}
        shared = self._adapter_kwargs([r.adapter or BASE for r in requests]) is not None
        for request in requests:
            adapter = BASE if shared else (request.adapter or BASE)
            hit = self._prefixes.lookup(_prefix_key(request), request.prompt)
            reused = hit.length if hit else 0
            if self.prefill_chunk and len(request.prompt) - reused > self.prefill_chunk:
                self.stats.prefills += 1
                with self._cond:  # other threads count these rows (_rows, _widths)
                    self._chunked.append(_Chunked(request, _past([hit] if hit else []), reused))
                continue
            groups.setdefault((reused, len(request.prompt), adapter), []).append((request, hit))
        for (reused, length, _), group in groups.items():
            self.stats.prefills += 1
            # One row per distinct prompt; the n choices of a request share it.
            ids = torch.tensor([r.prompt[reused:] for r, _ in group], device=self.device)
            out = self._model()(
                input_ids=ids,
                attention_mask=torch.ones(len(group), length, dtype=torch.long, device=self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: _past([hit for _, hit in group if hit])},
                **(self._adapter_kwargs([r.adapter or BASE for r, _ in group]) or {}),
            )
            self._join([r for r, _ in group], cache_of(out), out.logits[:, -1, :], length)

    def _prefill_part(self) -> None:
        """The next ``prefill_chunk`` tokens of the oldest long prompt, on its own cache; once its last
        part is in, it joins the running batch. Between parts the running rows take their decode step,
        so a long prompt delays them by one part per step, not by its whole prefill."""
        for job in [job for job in self._chunked if job.request.stop.should_stop()]:
            with self._cond:  # the client left, or its time ran out, while it waited for its parts
                self._chunked.remove(job)
            if job.request.stop.cancelled:
                self.stats.cancelled += 1
            else:
                job.request.sink(Failed(Overloaded(
                    "The model was busy for the whole generation time limit "
                    "(OPENFT_GENERATION_TIMEOUT_SECONDS); retry later.")))
        if not self._chunked:
            return
        job = self._chunked[0]
        request = job.request
        end = min(job.done + self.prefill_chunk, len(request.prompt))
        out = self._model()(
            input_ids=torch.tensor([request.prompt[job.done:end]], device=self.device),
            attention_mask=torch.ones(1, end, dtype=torch.long, device=self.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: job.cache},
            **(self._adapter_kwargs([request.adapter or BASE]) or {}),
        )
        self.stats.prefill_chunks += 1
        job.cache, job.done = cache_of(out), end
        if end == len(request.prompt):
            with self._cond:
                self._chunked.popleft()
            self._join([request], job.cache, out.logits[:, -1, :], end)

    def _join(self, group: list[Request], cache: Any, logits: torch.Tensor, length: int) -> None:
        """Prefilled prompts (one cache row each, ``length`` columns) join the running batch: their rows
        are kept by the prefix cache, repeated for their ``n`` choices, and their first tokens sampled."""
        for row, request in enumerate(group):
            self._prefixes.store(_prefix_key(request), request.prompt,
                                 [(layer.keys[row:row + 1], layer.values[row:row + 1]) for layer in cache.layers])
        sequences, rows = [], []
        for row, request in enumerate(group):
            for index in range(request.params.n):
                matcher = self._matcher_factory(request.grammar) if request.grammar else None
                sequences.append(_Sequence(request, index, self._decode_text, matcher))
                rows.append(row)
        if rows != list(range(len(group))):
            index = torch.tensor(rows, device=self.device)
            cache.batch_select_indices(index)
            logits = logits[index]
        self._merge(cache, torch.ones(len(rows), length, dtype=torch.long, device=self.device))
        self._running.extend(sequences)
        self._advance(sequences, logits)

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        assert self._mask is not None
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)])
            old.values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)])
        self._mask = torch.cat([_pad_left(self._mask, width, 1), _pad_left(mask, width, 1)])

    # --------------------------------------------------------------- decode
    def _decode(self) -> None:
        assert self._mask is not None
        rows = self._running
        self.stats.steps += 1
        self.stats.interleaved_steps += bool(self._chunked)
        self.stats.rows += len(rows)
        self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
        adapters = [s.adapter for s in rows]
        if len(set(adapters)) > 1:
            self.stats.mixed_steps += 1
        ids = torch.tensor([[s.tokens[-1]] for s in rows], device=self.device)
        positions = self._mask.sum(dim=1, keepdim=True)  # real tokens before the new one
        self._mask = torch.cat([self._mask, torch.ones_like(ids)], dim=1)
        kwargs = self._adapter_kwargs(adapters)
        if kwargs is not None:
            out = self._model()(
                input_ids=ids,
                attention_mask=self._mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_kw: self._cache},
                **kwargs,
            )
            self._cache = cache_of(out)
            self._advance(rows, out.logits[:, -1, :])
        else:
            self._advance(rows, self._decode_per_adapter(ids, positions, adapters))

    def _decode_per_adapter(self, ids: torch.Tensor, positions: torch.Tensor, adapters: list[str]) -> torch.Tensor:
        """One decode step as one pass per adapter, each over its rows' slice
        of the cache; the slices' grown caches are put back in row order."""
        assert self._mask is not None
        logits: torch.Tensor | None = None
        grown: list[tuple[torch.Tensor, torch.Tensor]] = []
        for adapter in dict.fromkeys(adapters):
            rows = torch.tensor([i for i, a in enumerate(adapters) if a == adapter], device=self.device)
            part = DynamicCache([(layer.keys[rows], layer.values[rows]) for layer in self._cache.layers])
            kwargs = self._adapter_kwargs([adapter] * len(rows))
            assert kwargs is not None, "a single adapter always runs in one pass"
            out = self._model()(
                input_ids=ids[rows], attention_mask=self._mask[rows], position_ids=positions[rows],
                use_cache=True, **{self._cache_kw: part}, **kwargs,
            )
            step = out.logits[:, -1, :]
            if logits is None:
                logits = step.new_empty(len(adapters), step.shape[-1])
                grown = [(layer.keys.new_empty(len(adapters), *layer.keys.shape[1:-2], layer.keys.shape[-2] + 1,
                                               layer.keys.shape[-1]),
                          layer.values.new_empty(len(adapters), *layer.values.shape[1:-2],
                                                 layer.values.shape[-2] + 1, layer.values.shape[-1]))
                         for layer in self._cache.layers]
            logits[rows] = step
            for (keys, values), layer in zip(grown, cache_of(out).layers, strict=True):
                keys[rows], values[rows] = layer.keys, layer.values
        assert logits is not None
        for layer, (keys, values) in zip(self._cache.layers, grown, strict=True):
            layer.keys, layer.values = keys, values
        return logits

    # -------------------------------------------------------------- sampling
    def _advance(self, sequences: list[_Sequence], logits: torch.Tensor) -> None:
        """Sample one token for each sequence from its row of ``logits``."""
        logits = logits.float()
        for seq, row in zip(sequences, logits, strict=True):
            request = seq.request
            if request.stop.should_stop():
                self._end(seq, "length", cancelled=True)
                continue
            scores = row
            if seq.matcher is not None:
                scores = _masked(row, seq.matcher, self._eos)
            token = _sample(scores, request.params, seq.generator)
            logprob = self._logprob(row, token, request.logprobs) if request.logprobs is not None else None
            seq.tokens.append(token)
            if seq.matcher is not None:
                seq.matcher.consume_token(token)
            if token in self._eos:
                request.sink(TokenEvent(seq.index, "", logprob))
                self._end(seq, "stop")
                continue
            piece, stopped = seq.text.add(seq.tokens)
            request.sink(TokenEvent(seq.index, piece, logprob))
            if stopped:
                self._end(seq, "stop")
            elif seq.matcher is not None and seq.matcher.is_stopped():
                self._end(seq, "stop")
            elif len(seq.tokens) >= request.params.max_new_tokens:
                self._end(seq, "length")

    def _end(self, seq: _Sequence, reason: str, *, cancelled: bool = False) -> None:
        seq.done = True
        if cancelled and seq.request.stop.cancelled:
            self.stats.cancelled += 1
            return  # the client left: nobody is listening
        tail = "" if seq.text.stopped else seq.text.flush()  # text held back for a stop string that never came
        if tail:
            seq.request.sink(TokenEvent(seq.index, tail, None))
        seq.request.sink(Finished(seq.index, reason, len(seq.tokens), seq.text.text, list(seq.tokens)))

    def _logprob(self, row: torch.Tensor, token: int, top: int) -> TokenLogprob:
        logprobs = torch.log_softmax(row, dim=-1)
        text, raw = self._token_strings(token)
        alternatives = []
        if top:
            values, indices = torch.topk(logprobs, top)
            for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                alt_text, alt_raw = self._token_strings(index)
                alternatives.append(TopLogprob(alt_text, value, alt_raw))
        return TokenLogprob(text, float(logprobs[token]), raw, alternatives)

    def _retire(self) -> None:
        """Drop finished rows from the batch and cut padding-only columns."""
        keep = [i for i, s in enumerate(self._running) if not s.done]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._mask is not None
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        first = int(self._mask.any(dim=0).nonzero()[0])
        if first:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


# ---------------------------------------------------------------- helpers
def _width(request: Request) -> int:
    """The most cache columns a request's rows can need: its prompt and every token it may add."""
    return len(request.prompt) + request.params.max_new_tokens


def _past(hits: list[PrefixHit]) -> DynamicCache:
    """A cache holding these reused beginnings, one row each (all of one length), or an empty one;
    full layers only (see the module docstring)."""
    if not hits:
        return DynamicCache()
    return DynamicCache([(torch.cat([hit.layers[i][0] for hit in hits]), torch.cat([hit.layers[i][1] for hit in hits]))
                         for i in range(len(hits[0].layers))])


def _prefix_key(request: Request) -> str:
    """Whose stored prompt rows a request may reuse: its scope's, under its adapter. Scopes keep one
    organisation from timing another's prompts (a hit answers sooner)."""
    return f"{request.cache_scope}\x00{request.adapter or BASE}"


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _eos_ids(model: Model, tokenizer: Tokenizer) -> frozenset[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(configured)
    return frozenset(ids)


def _sample(scores: torch.Tensor, params: GenerationParams, generator: torch.Generator | None) -> int:
    if params.temperature == 0 or generator is None:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p  # keeps at least one
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _masked(row: torch.Tensor, matcher: Any, eos: frozenset[int]) -> torch.Tensor:
    """``row`` with every token the grammar forbids next set to -inf."""
    import numpy as np

    bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
    allowed = np.unpackbits(bits, bitorder="little")[: row.shape[0]].astype(bool)
    if matcher.is_stopped():  # complete: only the end of turn may follow
        allowed[:] = False
        allowed[list(eos)] = True
    mask = torch.from_numpy(allowed).to(row.device)
    if mask.shape[0] < row.shape[0]:  # padding rows of the embedding matrix
        mask = torch.cat([mask, torch.zeros(row.shape[0] - mask.shape[0], dtype=torch.bool, device=row.device)])
    return row.masked_fill(~mask, float("-inf"))


class _TextStream:
    """A sequence's visible text: grows token by token (decoded incrementally,
    never half a character: a byte-level token that ends mid-UTF-8 waits for
    the next), ends at the first stop string, and holds back any tail that
    could still become one."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]):
        self.decode, self.stops = decode, [s for s in stops if s]
        self.text = ""  # decoded text (up to the stop string, once stopped)
        self.sent = 0  # characters of ``text`` already handed out
        self.prefix, self.read = 0, 0  # token offsets of the incremental decoder
        self.stopped = False

    def add(self, tokens: list[int]) -> tuple[str, bool]:
        """(text that may be shown now, whether a stop string ended it)."""
        before = self.decode(tokens[self.prefix:self.read])
        now = self.decode(tokens[self.prefix:])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return "", False  # an incomplete character: wait for more tokens
        self.text += now[len(before):]
        self.prefix, self.read = self.read, len(tokens)
        if self.stops:
            cut = _first_stop(self.text, self.stops, max(0, self.sent - max(map(len, self.stops))))
            if cut is not None:
                self.text, self.stopped = self.text[:cut], True
                return self._take(len(self.text)), True
            return self._take(len(self.text) - _held_back(self.text, self.stops)), False
        return self._take(len(self.text)), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(upto, self.sent)
        piece, self.sent = self.text[self.sent:upto], upto
        return piece


def _first_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    positions = [p for p in (text.find(s, start) for s in stops) if p >= 0]
    return min(positions) if positions else None


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[-size:]):
                longest = size
                break
    return longest
