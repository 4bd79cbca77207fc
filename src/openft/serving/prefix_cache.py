"""Key/value rows of recent prompts, so a prompt that begins like an earlier one skips that part of its prefill.

Chat prompts share long beginnings: a chat template's default system prompt,
a deployment's own system prompt and tool list, the earlier turns of a
conversation, the same question asked again. The engine's prefill is the
compute-bound part of serving (every prompt token passes every weight), so
:class:`PrefixCache` keeps the key/value rows of the prompts the engine
prefilled and, for a new prompt, finds the longest beginning it already holds
for the same owner: the same adapter (it changes the keys and values) and
the same scope (an organisation: a hit answers sooner, so reused rows would
let one organisation time another's prompts). The engine then prefills only
the rest, on top of those rows.

Lookup is by block: a prompt's first ``BLOCK`` tokens, then its first
``2 * BLOCK``, ... are hashed in a chain, and each stored prompt registers
the chain of its full blocks. The deepest registered block of a new prompt
names the stored prompt to extend from; the shared length is then counted
token by token against that prompt's tokens (a hash never decides alone) and
kept below the new prompt's length, so at least its last token is computed
(its logits give the first new token); the stored prompt must have the same
owner (a hash never decides alone). Prompts sharing less than one block are
not worth a separate prefill and are not matched. Entries are numbered, so
storing or dropping a prompt of n tokens costs O(n), not a hash of the whole
prompt per block.

The cache is bounded in bytes (``OPENFT_SERVING_PREFIX_CACHE_MB``, separate
from the running rows' ``OPENFT_SERVING_KV_CACHE_MB``) and drops the least
recently used prompts first; a prompt over a quarter of the bound is not
kept; 0 turns it off. Entries are copies
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
    owner: str  # whose rows: the engine's scope (an organisation) and adapter, as one key
    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: keys, values [1, heads, tokens, dim]
    hashes: list[int]  # chain hash of each full block
    nbytes: int


@dataclass(frozen=True)
class PrefixHit:
    """The first ``length`` tokens of a prompt, already computed: each layer's keys and values."""

    length: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # [1, heads, length, dim] views of the stored rows


def _chain(owner: str, tokens: list[int] | tuple[int, ...], blocks: int) -> list[int]:
    hashes, running = [], hash(owner)
    for start in range(0, blocks * BLOCK, BLOCK):
        running = hash((running, tuple(tokens[start:start + BLOCK])))
        hashes.append(running)
    return hashes


class PrefixCache:
    """Prompts' key/value rows by owner (the engine's scope and adapter) and tokens, least recently
    used out past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0  # prompts that reused stored rows
        self.tokens_reused = 0  # prompt tokens not computed again
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by entry number, least recently used first
        self._numbers: dict[tuple[str, tuple[int, ...]], int] = {}  # (owner, tokens) -> entry number
        self._next = 0
        # chain hash -> the numbers of the entries holding that beginning, the latest stored last (small
        # integers: a prompt's tuple would be hashed again for each of its blocks)
        self._by_block: dict[int, dict[int, None]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, owner: str, prompt: list[int]) -> PrefixHit | None:
        """The longest stored beginning of ``prompt`` among ``owner``'s rows (at least one block, never
        the whole prompt), or None."""
        usable = (len(prompt) - 1) // BLOCK
        if not self.max_bytes or usable == 0:
            return None
        found = None
        for depth in _chain(owner, prompt, usable):
            holders = self._by_block.get(depth)
            if not holders:
                break
            found = next(reversed(holders))
        if found is None:
            return None
        entry = self._entries[found]
        if entry.owner != owner:
            return None  # a hash collision: another owner's rows are never reused
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

    def store(self, owner: str, prompt: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep ``prompt``'s rows for ``owner`` (``layers``: per layer keys and values [1, heads,
        len(prompt), dim], copied here) when it has a full block and takes at most a quarter of the
        bound (one long prompt does not empty the cache of everyone else's)."""
        blocks = len(prompt) // BLOCK
        if not self.max_bytes or blocks == 0:
            return
        key = (owner, tuple(prompt))
        if key in self._numbers:
            self._entries.move_to_end(self._numbers[key])
            return
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if nbytes > self.max_bytes // 4:
            return
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        number, self._next = self._next, self._next + 1
        hashes = _chain(owner, prompt, blocks)
        self._entries[number] = _Entry(owner, key[1], [(k.clone(), v.clone()) for k, v in layers], hashes, nbytes)
        self._numbers[key] = number
        self.nbytes += nbytes
        for depth in hashes:
            self._by_block.setdefault(depth, {})[number] = None

    def _drop(self, number: int) -> None:
        entry = self._entries.pop(number)
        del self._numbers[(entry.owner, entry.tokens)]
        self.nbytes -= entry.nbytes
        for depth in entry.hashes:
            holders = self._by_block[depth]
            del holders[number]
            if not holders:
                del self._by_block[depth]
