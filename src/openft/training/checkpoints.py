"""Training state and model weights in blob storage, written atomically.

Two kinds of folders, both built locally and then uploaded under a temporary
name and renamed (``BlobStore.put_dir``), so a process killed mid-save leaves
only a ``.partial-*`` folder that nothing ever reads:

* **state** (``jobs/{job}/state/step-{N}``): what resuming needs and nothing
  else: the trainable parameters, optimizer and LR-schedule state, the torch
  RNG state, and ``meta.json`` (step, tokens trained, result rows so far).
* **model** (``jobs/{job}/checkpoints/step-{N}``, ``models/{org}/{job}``): a
  usable model: the LoRA adapter (or full weights) plus the tokenizer.

:class:`RunProgress` is the part of a recipe's loop that is the same for
every method: where the run is (step, tokens, result rows), resuming from a
saved state, per-step metrics, the end-of-epoch checkpoint, honouring pause
and cancel, and the final save. A recipe keeps only what is its own: the
model, the data and the loss.

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
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from openft.store.blobs import BlobStore
from openft.training.records import CheckpointRecord, DoneRecord, MetricsRecord, PausedRecord
from openft.training.report import Reporter
from openft.training.team import SOLO, Team

if TYPE_CHECKING:
    from openft.ml_types import Model, Tokenizer

META = "meta.json"


def state_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/state/step-{step}"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"jobs/{job_id}/checkpoints/step-{step}"


def best_key(job_id: str, step: int) -> str:
    """The weights of a validation that lowered the loss (``fine_tuned_model_from: best_valid_loss``)."""
    return f"jobs/{job_id}/best/step-{step}"


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


RESULT_COLUMNS = {  # OpenAI's result-file header -> key of a result row
    "step": "step",
    "train_loss": "train_loss",
    "train_accuracy": "train_accuracy",
    "valid_loss": "valid_loss",
    "valid_mean_token_accuracy": "valid_accuracy",
}


def results_csv(results: list[dict[str, Any]], columns: dict[str, str] = RESULT_COLUMNS) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in results:
        writer.writerow("" if row.get(key) is None else row[key] for key in columns.values())
    return out.getvalue()


def save_final(
    blobs: BlobStore, job_id: str, *, model: Model, tokenizer: Tokenizer, results: list[dict[str, Any]],
    columns: dict[str, str] = RESULT_COLUMNS,
) -> tuple[str, str]:
    """The finished model and the result CSV; returns (model key, results key)."""
    model_key, results_key = f"models/{job_id}", f"jobs/{job_id}/results.csv"
    save_model(blobs, model_key, model=model, tokenizer=tokenizer)
    with blobs.writer(results_key) as out:
        out.write(results_csv(results, columns).encode())
    return model_key, results_key


def save_model(blobs: BlobStore, key: str, *, model: Model, tokenizer: Tokenizer) -> None:
    """A usable model folder: adapter (LoRA) or full weights, plus the tokenizer."""
    with tempfile.TemporaryDirectory(prefix="openft-model-") as local:
        model.save_pretrained(local, safe_serialization=True)
        tokenizer.save_pretrained(local)
        blobs.put_dir(local, key)


class RunProgress:
    """Step, tokens and result rows of one run, and everything persisted about them."""

    def __init__(
        self,
        blobs: BlobStore,
        job_id: str,
        reporter: Reporter,
        *,
        model: Model,
        tokenizer: Tokenizer,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        total_steps: int,
        steps_per_epoch: int,
        accuracy_name: str,
        team: Team = SOLO,
        result_columns: dict[str, str] = RESULT_COLUMNS,
        early_stopping_patience: int | None = None,
        keep_best: bool = False,
    ):
        self.blobs, self.job_id, self.reporter = blobs, job_id, reporter
        self.team = team
        """Data-parallel ranks of the run: only rank 0 saves (every rank resumes)."""
        self.model, self.tokenizer, self.optimizer, self.scheduler = model, tokenizer, optimizer, scheduler
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.accuracy_name = accuracy_name
        """What the accuracy is (``mean_token_accuracy``, ``reward_accuracy``, ``reward_mean``): names it in events."""
        self.result_columns = result_columns
        """Header of the result CSV -> key of a result row."""
        self.step, self.tokens = 0, 0
        self.results: list[dict[str, Any]] = []
        self._started, self._first_step = time.monotonic(), 0
        self.patience, self.keep_best = early_stopping_patience, keep_best
        """Early stopping: validations without a lower loss before the run stops
        (None: never); keep_best: the final model is the best validation's weights."""
        self.best: dict[str, Any] = {"loss": None, "step": None, "since": 0, "stopped": False}
        """The lowest validation loss so far, its step, validations since, and
        whether the run stopped early (saved with the state, so resuming keeps it)."""

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps or self.best["stopped"]

    @property
    def epoch_and_index(self) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of the next step."""
        return divmod(self.step, self.steps_per_epoch)

    def resume(self, key: str | None) -> None:
        """Continue from a saved state (same weights, optimizer, schedule, RNG)."""
        if key is None:
            return
        meta = load_state(self.blobs, key, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        self.step, self.tokens, self.results = meta["step"], meta["tokens"], meta["results"]
        self.best = meta.get("best", self.best)
        self._started, self._first_step = time.monotonic(), self.step
        self.reporter.event(f"Resuming training from step {self.step}/{self.total_steps}")

    def stepped(self, tokens: int, row: dict[str, Any], summary: str = "") -> None:
        """One optimizer step is done: count it and report its metrics.
        ``row`` holds ``train_loss`` and ``train_accuracy``, optionally
        ``valid_loss`` / ``valid_accuracy``, and any recipe-specific metrics
        (reported under their own names); ``summary`` ends the event's message."""
        self.step += 1
        self.tokens += tokens
        row = {"step": self.step, **row}
        self.results.append(row)
        rate = (time.monotonic() - self._started) / (self.step - self._first_step)
        message = f"Step {self.step}/{self.total_steps}: training loss={row['train_loss']:.4f}"
        if "valid_loss" in row:
            message += f", validation loss={row['valid_loss']:.4f}"
        self.reporter.emit(MetricsRecord(
            message + summary, data={"total_steps": self.total_steps, **self._named(row)},
            estimated_finish=time.time() + rate * (self.total_steps - self.step),
        ))
        if "valid_loss" in row and (self.patience or self.keep_best):
            self._validated(float(row["valid_loss"]))
        if self.patience and self.team.size > 1:  # rank 0 validates; every rank stops with it
            self.best["stopped"] = bool(self.team.gather(self.best["stopped"])[0])

    def _validated(self, loss: float) -> None:
        """Track the best validation loss (saving its weights when the final
        model is to be the best one) and stop after ``patience`` validations
        in a row without improvement."""
        best = self.best
        if best["loss"] is None or loss < best["loss"]:
            best.update(loss=loss, step=self.step, since=0)
            if self.keep_best and self.team.is_main:
                save_model(self.blobs, best_key(self.job_id, self.step), model=self.model, tokenizer=self.tokenizer)
            return
        best["since"] += 1
        if self.patience and best["since"] >= self.patience and self.step < self.total_steps:
            best["stopped"] = True
            self.reporter.event(
                f"Early stopping at step {self.step}/{self.total_steps}: the validation loss has not "
                f"improved for {best['since']} validations (best {best['loss']:.4f} at step {best['step']}).",
                data={"early_stopping": {"step": self.step, "best_step": best["step"],
                                         "best_valid_loss": best["loss"], "patience": self.patience}},
            )

    def _named(self, row: dict[str, Any]) -> dict[str, Any]:
        """A result row with the accuracy named (``train_mean_token_accuracy``...)."""
        names = {"train_accuracy": f"train_{self.accuracy_name}", "valid_accuracy": f"valid_{self.accuracy_name}"}
        return {names.get(key, key): value for key, value in row.items() if value is not None}

    @property
    def at_epoch_end(self) -> bool:
        return self.step % self.steps_per_epoch == 0

    def checkpoint(self, full_valid: tuple[float, float] | None = None) -> None:
        """Save the training state and a usable model; report both, with the
        last step's metrics (and a full validation pass's, when given).
        Rank 0 only; the other ranks go straight on to the next step."""
        if not self.team.is_main:
            return
        name = self.accuracy_name
        metrics = self._named(self.results[-1])
        if full_valid is not None:
            metrics.update({"full_valid_loss": full_valid[0], f"full_valid_{name}": full_valid[1]})
        state = self.save_state()
        model_key = checkpoint_key(self.job_id, self.step)
        save_model(self.blobs, model_key, model=self.model, tokenizer=self.tokenizer)
        self.reporter.emit(CheckpointRecord(
            step=self.step, state_key=state, model_key=model_key,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        ))

    def save_state(self) -> str:
        key = state_key(self.job_id, self.step)
        meta = {"step": self.step, "tokens": self.tokens, "results": self.results, "best": self.best}
        save_state(self.blobs, key, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, meta=meta)
        return key

    def should_exit(self) -> bool:
        """Honour a stop request between steps: cancel exits at once, pause
        saves the state first (there is nothing to pause after the last step).
        All ranks follow rank 0's decision at the same step."""
        stop = self.team.agree(self.reporter.stop_requested())
        if stop == "cancel":
            return True
        if stop == "pause" and not self.done:
            if self.team.is_main:
                self.reporter.emit(PausedRecord(step=self.step, state_key=self.save_state()))
            return True
        return False

    def finish(self) -> None:
        """Save the final model and the result CSV, and report the run done (rank 0)."""
        if not self.team.is_main:
            return
        model_key, results_key = save_final(
            self.blobs, self.job_id, model=self.model, tokenizer=self.tokenizer, results=self.results,
            columns=self.result_columns,
        )
        if self.keep_best and self.best["step"] is not None:
            self._use_best(model_key)
        self.reporter.emit(DoneRecord(model_key=model_key, results_key=results_key, trained_tokens=self.tokens))

    def _use_best(self, model_key: str) -> None:
        """Make the best validation's weights the fine-tuned model."""
        step, loss = self.best["step"], self.best["loss"]
        if step != self.step:
            with tempfile.TemporaryDirectory(prefix="openft-best-") as local:
                self.blobs.get_dir(best_key(self.job_id, step), local)
                self.blobs.put_dir(local, model_key)
        self.blobs.delete_tree(f"jobs/{self.job_id}/best")
        self.reporter.event(
            f"The fine-tuned model has the weights of step {step}, which had the lowest validation "
            f"loss ({loss:.4f}); the last step was {self.step}.",
            data={"fine_tuned_model_from": "best_valid_loss", "step": step, "valid_loss": loss},
        )
