"""The SFT recipe, run in-process on a tiny model: it learns, LoRA leaves the
base alone, runs are deterministic, and pause + resume changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openft.domain import Method, MethodType
from openft.store.blobs import BlobStore
from openft.training.config import RunConfig
from openft.training.report import ListReporter
from openft.training.run import run

from support import IN_PROCESS_THREADS, chat_example

pytestmark = pytest.mark.training

DATA = [
    {"messages": [{"role": "user", "content": f"Say the word number {i}."},
                  {"role": "assistant", "content": ["alpha", "bravo", "charlie", "delta"][i % 4]}]}
    for i in range(16)
]


def make_config(root: Path, model_dir: Path, **hyper) -> RunConfig:
    blobs = BlobStore(str(root / "blobs"))
    with blobs.writer("files/train.jsonl") as out:
        out.write("".join(json.dumps(e) + "\n" for e in DATA).encode())
    return RunConfig(
        job_id="ftjob-unit", base={"id": "local/tiny", "kind": "local", "path": str(model_dir)},
        models_dir=str(root / "models"), storage_url=str(root / "blobs"),
        training_file_key="files/train.jsonl", validation_file_key=None,
        method=Method(MethodType.SUPERVISED, {"n_epochs": 4, "batch_size": 4, **hyper}),
        seed=7, threads=IN_PROCESS_THREADS,
    )


class PauseAt(ListReporter):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def _emit(self, record):
        super()._emit(record)
        if record["type"] == "metrics" and record["data"]["step"] == self.step:
            self.request_stop("pause")


def losses(reporter: ListReporter) -> list[float]:
    return [r["data"]["train_loss"] for r in reporter.of("metrics")]


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    folder = root / "blobs" / "models" / "ftjob-unit"
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(folder / name)


def test_lora_learns_and_leaves_base_weights_untouched(tmp_path, tiny_model_dir) -> None:
    reporter = ListReporter()
    run(make_config(tmp_path, tiny_model_dir, learning_rate_multiplier=5.0), reporter)
    assert reporter.of("done"), reporter.records[-1]
    values = losses(reporter)
    # A random tiny model starts at ln(vocab) ~ 10.8 nats; LoRA must move it clearly.
    assert sum(values[-4:]) / 4 < sum(values[:4]) / 4 - 0.3, values

    adapter = final_weights(tmp_path)
    assert adapter and all("lora_" in name for name in adapter)
    assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)  # B starts at zero
    base = load_file(tiny_model_dir / "model.safetensors")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      tmp_path / "blobs" / "models" / "ftjob-unit")
    for name, tensor in tuned.get_base_model().state_dict().items():
        plain = name.replace(".base_layer", "")
        if "lora_" not in name and plain in base:
            torch.testing.assert_close(tensor, base[plain], rtol=0, atol=0)


def test_full_fine_tuning_changes_the_weights(tmp_path, tiny_model_dir) -> None:
    reporter = ListReporter()
    config = make_config(tmp_path, tiny_model_dir, training_type="full", n_epochs=1, learning_rate_multiplier=50.0)
    run(config, reporter)
    assert reporter.of("done")
    tuned = final_weights(tmp_path)
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(tuned[n], base[n]) for n in base if n in tuned)


def test_same_seed_same_losses(tmp_path, tiny_model_dir) -> None:
    first, second = ListReporter(), ListReporter()
    run(make_config(tmp_path / "a", tiny_model_dir, n_epochs=2), first)
    run(make_config(tmp_path / "b", tiny_model_dir, n_epochs=2), second)
    assert losses(first) == losses(second)


def test_pause_and_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir) -> None:
    straight = ListReporter()
    run(make_config(tmp_path / "straight", tiny_model_dir), straight)

    paused = PauseAt(step=6)  # mid-epoch: epoch 2 of 4, 4 steps per epoch
    config = make_config(tmp_path / "paused", tiny_model_dir)
    run(config, paused)
    [pause] = paused.of("paused")
    assert pause["step"] == 6 and not paused.of("done")
    config.resume_state_key = pause["state_key"]
    resumed = ListReporter()
    run(config, resumed)
    assert resumed.of("done")

    assert losses(paused) + losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    for name, tensor in final_weights(tmp_path / "straight").items():
        torch.testing.assert_close(final_weights(tmp_path / "paused")[name], tensor, rtol=1e-5, atol=1e-6)
    assert resumed.of("done")[0]["trained_tokens"] == straight.of("done")[0]["trained_tokens"]


def test_bad_training_data_fails_with_line(tmp_path, tiny_model_dir) -> None:
    config = make_config(tmp_path, tiny_model_dir)
    with BlobStore(config.storage_url).writer(config.training_file_key) as out:
        out.write((json.dumps(chat_example(0)) + "\n" + json.dumps({"text": "x"}) + "\n").encode())
    reporter = ListReporter()
    run(config, reporter)
    [failed] = reporter.of("failed")
    assert failed["code"] == "invalid_training_file" and "Line 2" in failed["message"]
