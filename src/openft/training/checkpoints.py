"""Training state and model weights in blob storage, written atomically.

Two kinds of folders, both built locally and then uploaded under a temporary
name and renamed (``BlobStore.put_dir``), so a process killed mid-save leaves
only a ``.partial-*`` folder that nothing ever reads:

* **state** (``jobs/{job}/state/step-{N}``): what resuming needs and nothing
  else: the trainable parameters, optimizer and LR-schedule state, the torch
  RNG state, and ``meta.json`` (step, tokens trained, result rows so far).
* **model** (``jobs/{job}/checkpoints/step-{N}``, ``models/{org}/{job}``): a
  usable model: the LoRA adapter (or full weights) plus the tokenizer.

``OPENFT_FAULT_STALL_SAVE`` (seconds) stalls a state save half-way, after its
first file is written: a test hook for killing a process during a save.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from openft.store.blobs import BlobStore

META = "meta.json"


def state_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/state/step-{step}"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_state(
    blobs: BlobStore,
    key: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    meta: dict[str, Any],
) -> None:
    with tempfile.TemporaryDirectory(prefix="openft-state-") as local:
        folder = Path(local)
        save_file(trainable_state(model), folder / "trainable.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            folder / "training.pt",
        )
        (folder / META).write_text(json.dumps(meta))
        blobs.put_dir(local, key, after_each_file=_fault_stall)


def _fault_stall(_relative: str) -> None:
    stall = float(os.environ.get("OPENFT_FAULT_STALL_SAVE", "0") or 0)
    if stall:
        time.sleep(stall)


def load_state(
    blobs: BlobStore,
    key: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore a saved state into freshly built objects; returns its meta."""
    with tempfile.TemporaryDirectory(prefix="openft-state-") as local:
        blobs.get_dir(key, local)
        folder = Path(local)
        weights = load_file(folder / "trainable.safetensors")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if unexpected or expected - set(weights):
            raise RuntimeError(f"checkpoint {key} does not fit the model: {unexpected or expected - set(weights)}")
        training = torch.load(folder / "training.pt", weights_only=False)
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        torch.set_rng_state(training["rng"])
        if training["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(training["cuda_rng"])
        return dict(json.loads((folder / META).read_text()))


RESULT_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


def results_csv(results: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in results:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in RESULT_COLUMNS})
    return out.getvalue()


def save_final(
    blobs: BlobStore, job_id: str, *, model: Any, tokenizer: Any, results: list[dict[str, Any]]
) -> tuple[str, str]:
    """The finished model and the result CSV; returns (model key, results key)."""
    model_key, results_key = f"models/{job_id}", f"jobs/{job_id}/results.csv"
    save_model(blobs, model_key, model=model, tokenizer=tokenizer)
    with blobs.writer(results_key) as out:
        out.write(results_csv(results).encode())
    return model_key, results_key


def save_model(blobs: BlobStore, key: str, *, model: Any, tokenizer: Any) -> None:
    """A usable model folder: adapter (LoRA) or full weights, plus the tokenizer."""
    with tempfile.TemporaryDirectory(prefix="openft-model-") as local:
        model.save_pretrained(local, safe_serialization=True)
        tokenizer.save_pretrained(local)
        blobs.put_dir(local, key)
