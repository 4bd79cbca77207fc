"""The serving engine's prefix cache on its own: which stored beginning a prompt gets, under which
adapter, and what leaves first when the bound is reached."""

from __future__ import annotations

import torch

from openft.serving import prefix_cache
from openft.serving.prefix_cache import BLOCK, PrefixCache

LAYERS = 2


def rows(prompt: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values whose every column names its token (so a hit's columns can be checked)."""
    column = torch.tensor(prompt, dtype=torch.float32).view(1, 1, -1, 1)
    return [(column + layer, -column - layer) for layer in range(LAYERS)]


def test_the_longest_stored_beginning_is_reused_never_the_whole_prompt() -> None:
    cache = PrefixCache(2**20)
    system = list(range(1000, 1000 + 2 * BLOCK + 5))  # two blocks and a bit: a chat's system prompt
    first = system + [1, 2, 3]
    cache.store("base", first, rows(first))
    second = system + [7, 8]
    hit = cache.lookup("base", second)
    assert hit is not None and hit.length == len(system)  # counted token by token past the last full block
    assert [k[0, 0, :, 0].tolist() for k, _ in hit.layers] == [[t + layer for t in system] for layer in range(LAYERS)]
    again = cache.lookup("base", first)  # the same prompt again: all but its last token
    assert again is not None and again.length == len(first) - 1
    assert cache.lookup("base", system[:BLOCK - 1] + [5]) is None  # less than a block in common
    assert cache.lookup("base", [5] + first) is None  # same tokens, another beginning
    assert (cache.hits, cache.tokens_reused) == (2, len(system) + len(first) - 1)


def test_rows_are_kept_per_adapter() -> None:
    cache = PrefixCache(2**20)
    prompt = list(range(3 * BLOCK))
    cache.store("adapter-a", prompt, rows(prompt))
    assert cache.lookup("adapter-b", prompt + [1]) is None  # an adapter changes the keys and values
    assert cache.lookup("adapter-a", prompt + [1]) is not None


def test_least_recently_used_prompts_leave_first_within_the_bound() -> None:
    prompts = [[p] * (2 * BLOCK) for p in range(5)]
    size = sum(k.nbytes + v.nbytes for k, v in rows(prompts[0]))
    cache = PrefixCache(4 * size)
    for prompt in prompts[:4]:
        cache.store("base", prompt, rows(prompt))
    assert cache.lookup("base", prompts[0] + [9]) is not None  # the oldest is used again
    cache.store("base", prompts[4], rows(prompts[4]))  # over the bound: the least recently used leaves
    assert cache.nbytes == 4 * size and len(cache) == 4
    assert cache.lookup("base", prompts[1] + [9]) is None
    assert all(cache.lookup("base", prompts[p] + [9]) is not None for p in (0, 2, 3, 4))
    longer = [7] * 3 * BLOCK  # over a quarter of the bound: not kept, nothing else leaves for it
    cache.store("base", longer, rows(longer))
    assert len(cache) == 4 and cache.lookup("base", longer + [9]) is None


def test_a_shared_beginning_outlives_the_prompt_that_registered_it_last() -> None:
    cache = PrefixCache(2**20)
    system = list(range(2 * BLOCK))
    first, second = system + [1] * BLOCK, system + [2] * BLOCK
    cache.store("base", first, rows(first))
    cache.store("base", second, rows(second))
    cache._drop(cache._numbers[("base", tuple(second))])
    hit = cache.lookup("base", system + [3])
    assert hit is not None and hit.length == len(system)


def test_a_hash_collision_never_gives_another_prompts_or_owners_rows(monkeypatch) -> None:
    cache = PrefixCache(2**20)
    monkeypatch.setattr(prefix_cache, "_chain", lambda owner, tokens, blocks: list(range(blocks)))
    stored = list(range(2 * BLOCK))
    cache.store("org-a/base", stored, rows(stored))
    assert cache.lookup("org-a/base", [9] * (2 * BLOCK + 1)) is None  # same hashes, other tokens
    assert cache.lookup("org-b/base", stored + [1]) is None  # same hashes and tokens, another owner
    assert cache.lookup("org-a/base", stored + [1]) is not None


def test_a_zero_bound_keeps_nothing() -> None:
    cache = PrefixCache(0)
    prompt = list(range(3 * BLOCK))
    cache.store("base", prompt, rows(prompt))
    assert len(cache) == 0 and cache.lookup("base", prompt) is None
