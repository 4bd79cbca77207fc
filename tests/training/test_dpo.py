"""DPO on a tiny model raises the preference margin on its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft.domain import Method, MethodType
from openft.store.blobs import BlobStore
from openft.training.config import RunConfig
from openft.training.data import tokenize_preferences
from openft.training.recipes.dpo import pair_logprobs
from openft.training.report import ListReporter
from openft.training.run import run

from support import IN_PROCESS_THREADS

pytestmark = pytest.mark.training

PAIRS = [
    {"input": {"messages": [{"role": "user", "content": f"Greet person {i}."}]},
     "preferred_output": [{"role": "assistant", "content": "Hello, friend!"}],
     "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
    for i in range(12)
]


def logprobs(model, pairs) -> torch.Tensor:
    with torch.no_grad():
        return pair_logprobs(model.eval(), pairs, torch.device("cpu"))


def margins(model, pairs) -> torch.Tensor:
    both = logprobs(model, pairs)
    return both[:, 0] - both[:, 1]


def test_dpo_raises_the_preference_margin(tmp_path: Path, tiny_model_dir: Path) -> None:
    lines = [json.dumps(p) for p in PAIRS]
    blobs = BlobStore(str(tmp_path / "blobs"))
    with blobs.writer("files/prefs.jsonl") as out:
        out.write(("\n".join(lines) + "\n").encode())
    config = RunConfig(
        job_id="ftjob-dpo", base={"id": "local/tiny", "kind": "local", "path": str(tiny_model_dir)},
        models_dir=str(tmp_path / "models"), storage_url=str(tmp_path / "blobs"),
        training_file_key="files/prefs.jsonl", validation_file_key="files/prefs.jsonl",
        method=Method(MethodType.DPO, {"n_epochs": 3, "batch_size": 4, "beta": 0.5, "learning_rate_multiplier": 50.0}),
        seed=3, threads=IN_PROCESS_THREADS,
    )
    reporter = ListReporter()
    run(config, reporter)
    assert reporter.of("done"), reporter.records[-1]
    resolved = reporter.of("hyperparameters")[0]["resolved"]
    assert (resolved["beta"], resolved["rpo_alpha"]) == (0.5, 1.0)  # the RPO term is on by default
    assert "train_reward_accuracy" in reporter.of("metrics")[0]["data"]
    losses = [r["data"]["train_loss"] for r in reporter.of("metrics")]
    assert losses[-1] < losses[0]

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs, _ = tokenize_preferences(tokenizer, lines, max_seq_length=512)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = margins(base, pairs)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      tmp_path / "blobs" / "models" / "ftjob-dpo")
    after = margins(tuned, pairs)
    assert after.mean() > before.mean() + 1.0, (before.mean(), after.mean())
    # With the RPO term the preferred answers themselves became more likely,
    # not just relatively more likely than the rejected ones.
    assert logprobs(tuned, pairs)[:, 0].mean() > logprobs(base, pairs)[:, 0].mean()
