"""Key/value rows of recent prompts, so a prompt that begins like an earlier one skips that part of its prefill.

Chat prompts share long beginnings: a chat template's default system prompt,
a deployment's own system prompt and tool list, the earlier turns of a
conversation, the same question asked again. The engine's prefill is the
compute-bound part of serving (every prompt token passes every weight), so
:class:`PrefixCache` keeps the key/value rows of the prompts the engine
prefilled and, for a new prompt, finds the longest beginning it already holds
(under the same adapter: an adapter changes the keys and values). The engine
then prefills only the rest, on top of those rows.

Lookup is by block: a prompt's first ``BLOCK`` tokens, then its first
``2 * BLOCK``, ... are hashed in a chain, and each stored prompt registers
the chain of its full blocks. The deepest registered block of a new prompt
names the stored prompt to extend from; the shared length is then counted
token by token against that prompt's tokens (a hash never decides alone) and
kept below the new prompt's length, so at least its last token is computed
(its logits give the first new token). Prompts sharing less than one block
are not worth a separate prefill and are not matched.

The cache is bounded in bytes (``OPENFT_SERVING_PREFIX_CACHE_MB``) and drops
the least recently used prompts first; 0 turns it off. Entries are copies
(the engine's running cache grows and is cut every step), on the model's
device. The rows a hit reuses were computed by an earlier prefill of the
same tokens, so the answer is the model's own; the matrix products over the
remaining tokens have other shapes than one prefill of the whole prompt,
which may round differently in the last bits, as batching already does.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 16  # tokens per hashed block


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: keys, values [1, heads, tokens, dim]
    hashes: list[int]  # chain hash of each full block
    nbytes: int


@dataclass(frozen=True)
class PrefixHit:
    """The first ``length`` tokens of a prompt, already computed: each layer's keys and values."""

    length: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # [1, heads, length, dim] views of the stored rows


def _chain(adapter: str, tokens: list[int] | tuple[int, ...], blocks: int) -> list[int]:
    hashes, running = [], hash(adapter)
    for start in range(0, blocks * BLOCK, BLOCK):
        running = hash((running, tuple(tokens[start:start + BLOCK])))
        hashes.append(running)
    return hashes


class PrefixCache:
    """Prompts' key/value rows by adapter and tokens, least recently used out past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0  # prompts that reused stored rows
        self.tokens_reused = 0  # prompt tokens not computed again
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], _Entry] = OrderedDict()
        # chain hash -> the entries holding that beginning, the latest stored last
        self._by_block: dict[int, dict[tuple[str, tuple[int, ...]], None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter: str, prompt: list[int]) -> PrefixHit | None:
        """The longest stored beginning of ``prompt`` under ``adapter`` (at least one block, never the
        whole prompt), or None."""
        usable = (len(prompt) - 1) // BLOCK
        if not self.max_bytes or usable == 0:
            return None
        found = None
        for depth in _chain(adapter, prompt, usable):
            holders = self._by_block.get(depth)
            if not holders:
                break
            found = next(reversed(holders))
        if found is None:
            return None
        entry = self._entries[found]
        length = 0
        limit = min(len(entry.tokens), len(prompt) - 1)
        while length < limit and entry.tokens[length] == prompt[length]:
            length += 1
        if length < BLOCK:
            return None  # a hash collision, or less than a block in common
        self._entries.move_to_end(found)
        self.hits += 1
        self.tokens_reused += length
        return PrefixHit(length, [(k[:, :, :length], v[:, :, :length]) for k, v in entry.layers])

    def store(self, adapter: str, prompt: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``prompt``'s rows (``layers``: per layer keys and values [1, heads, len(prompt), dim],
        copied here) when it has a full block and fits the bound."""
        blocks = len(prompt) // BLOCK
        if not self.max_bytes or blocks == 0:
            return
        key = (adapter, tuple(prompt))
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if nbytes > self.max_bytes:
            return
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        hashes = _chain(adapter, prompt, blocks)
        self._entries[key] = _Entry(key[1], [(k.clone(), v.clone()) for k, v in layers], hashes, nbytes)
        self.nbytes += nbytes
        for depth in hashes:
            self._by_block.setdefault(depth, {})[key] = None

    def clear(self) -> None:
        self._entries.clear()
        self._by_block.clear()
        self.nbytes = 0

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        for depth in entry.hashes:
            holders = self._by_block[depth]
            del holders[key]
            if not holders:
                del self._by_block[depth]
