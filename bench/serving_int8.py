"""What int8 serving (``OPENFT_SERVING_DTYPE=int8``) costs in answers and gives in speed.

On the bundled SmolLM2-135M, in-process (``openft.serving.Generator``, 2 threads):

* **speed**: tokens/s of float32 and int8, one request after another (4) and
  16 at once, greedy, ``max_tokens`` 48;
* **agreement**: of 32 prompts (16 topics, two phrasings), how many greedy
  answers of int8 equal float32's, token for token, and after how many tokens
  the others part on average;
* **a fine-tuned format**: a LoRA adapter trained here (PEFT, 60 steps) to
  answer ``TOPIC: <topic> | MOOD: <word>`` is served on both, on 16 topics it
  never saw; how many answers of each follow the format.

docs/serving-profile.md holds a run's output.

    .venv/bin/python bench/serving_int8.py [--home ~/.openft]
"""

from __future__ import annotations

import argparse
import queue
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TOPICS = ["the sea", "a lighthouse", "winter", "a robot", "a library", "the moon", "a garden", "a train",
          "a mountain", "a city at night", "a storm", "a fox", "a violin", "a desert", "a river", "a market"]
UNSEEN = ["a bridge", "autumn", "a cat", "a volcano", "a bakery", "the stars", "a forest", "a ship",
          "a castle", "rain", "a clock", "a bicycle", "an island", "a museum", "snow", "a harbour"]
MOODS = ["calm", "bright", "quiet", "warm"]
FORMAT = re.compile(r"^TOPIC: [^|\n]+ \| MOOD: (calm|bright|quiet|warm)\b")
TOKENS = 48


def rates(generator, ref, prompts: list[list[int]]) -> tuple[float, float, list[list[int]]]:
    """Tokens/s one after another (the first 4) and 16 at once; every prompt's greedy answer."""
    from openft.serving.generator import collect
    from openft.serving.types import GenerationParams, StopSignal

    params = GenerationParams(max_new_tokens=TOKENS, temperature=0)
    generator.generate(ref, [0] * 4, GenerationParams(max_new_tokens=2, temperature=0), StopSignal(600))
    began, made = time.perf_counter(), 0
    for prompt in prompts[:4]:
        made += generator.generate(ref, prompt, params, StopSignal(600))[0].completion_tokens
    alone = made / (time.perf_counter() - began)
    answers, batched = [], 0.0
    for start in range(0, len(prompts), 16):
        sinks = []
        began = time.perf_counter()
        for prompt in prompts[start:start + 16]:
            sink: queue.SimpleQueue[object] = queue.SimpleQueue()
            generator.submit(ref, prompt, params, StopSignal(600), sink.put)
            sinks.append(sink)
        chunk = [collect(sink.get, 1)[0].tokens for sink in sinks]
        if start == 0:
            batched = sum(map(len, chunk)) / (time.perf_counter() - began)
        answers += chunk
    return alone, batched, answers


def train_format(folder: Path, out: Path) -> None:
    """A LoRA adapter that answers in the bench's format (plain PEFT, seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    rows = []
    for i, topic in enumerate(TOPICS):
        messages = [{"role": "user", "content": f"Write two sentences about {topic}."}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        answer = tokenizer(f"TOPIC: {topic} | MOOD: {MOODS[i % 4]}<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, len(prompt)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id or 0] * (width - len(r)) for r, _ in rows])
    labels = ids.clone()
    for row, (tokens, start) in enumerate(rows):
        labels[row, :start] = -100
        labels[row, len(tokens):] = -100
    mask = (labels != -100) | (torch.arange(width) < torch.tensor([len(r) for r, _ in rows])[:, None])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"format adapter trained: final loss {loss.item():.3f}")
    model.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("~/.openft").expanduser())
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)  # the child process that trains
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from openft.serving.generator import Generator
    from openft.serving.types import GenerationParams, ModelRef, StopSignal
    from openft.weights import ensure_bundled

    folder = ensure_bundled(args.home / "models")
    if args.train:
        train_format(folder, args.train)
        return
    tokenizer = AutoTokenizer.from_pretrained(folder)

    def ids(text: str) -> list[int]:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]

    prompts = [ids(f"Write two sentences about {t}.") for t in TOPICS] + [ids(f"What do you know about {t}?")
                                                                          for t in TOPICS]
    scratch = Path(tempfile.mkdtemp(prefix="serving-int8-"))
    # Trained in a child process: a thread that has computed leaves its OpenMP workers spinning on the
    # cores, which would slow the engines' own threads (openft.serving.engine's docstring).
    subprocess.run([sys.executable, __file__, "--home", str(args.home), "--train", str(scratch / "format")],
                   check=True)
    results = {}
    for dtype in ("float32", "int8"):  # one generator at a time: each computes on its own engine thread
        generator = Generator(2**34, device="cpu", max_batch=16, dtype=dtype)
        base, tuned = ModelRef("base", folder), ModelRef("ft:format", folder, scratch / "format")
        alone, batched, answers = rates(generator, base, prompts)
        formatted = [generator.generate(tuned, ids(f"Write two sentences about {t}."),
                                        GenerationParams(max_new_tokens=24, temperature=0), StopSignal(600))[0].text
                     for t in UNSEEN]
        results[dtype] = (alone, batched, answers, formatted)
        generator.close()
    exact, approximate = results["float32"][2], results["int8"][2]
    same = sum(a == b for a, b in zip(exact, approximate, strict=True))
    parted = [next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
              for a, b in zip(exact, approximate, strict=True) if a != b]
    print(f"SmolLM2-135M, torch {torch.__version__}, {torch.get_num_threads()} threads, greedy, max_tokens {TOKENS}")
    for dtype, (alone, batched, _, formatted) in results.items():
        follows = sum(bool(FORMAT.match(text)) for text in formatted)
        print(f"{dtype:>8}: one at a time {alone:6.1f} tok/s, 16 at once {batched:6.1f} tok/s; fine-tuned format "
              f"followed on unseen topics: {follows} of {len(formatted)}")
    print(f"int8 / float32: {results['int8'][0] / results['float32'][0]:.2f}x one at a time, "
          f"{results['int8'][1] / results['float32'][1]:.2f}x at 16")
    print(f"greedy answers identical to float32's: {same} of {len(exact)}"
          + (f"; the others part after {sum(parted) / len(parted):.1f} tokens on average" if parted else ""))
    print("examples (int8, fine-tuned):", *results["int8"][3][:3], sep="\n  ")


if __name__ == "__main__":
    main()
