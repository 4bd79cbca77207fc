"""Entry point of a training process: ``python -m openft.training.run CONFIG.json``.

Runs the recipe of the job's method and turns every way it can fail into one
``failed`` record with an OpenAI error code: ``invalid_training_file`` (with
the line), ``model_load_failed``, ``out_of_memory`` or ``internal_error``.
The exit status is 0 whenever an outcome record was written.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from openft.training.config import RunConfig
from openft.training.records import FailedRecord
from openft.training.report import PipeReporter, Reporter
from openft.training.team import SOLO, Team


def run(config: RunConfig, reporter: Reporter, team: Team = SOLO) -> None:
    """Run the job's recipe as one rank of ``team`` (a Ray Train worker) or alone."""
    from openft.graders.grader import GraderUnavailable
    from openft.training.common import ModelLoadError
    from openft.training.data import DataError

    try:
        recipe = _recipe(config.method_type)
        recipe(config, reporter, team)
    except DataError as exc:
        reporter.emit(FailedRecord(exc.code, str(exc), "training_file"))
    except GraderUnavailable as exc:
        reporter.emit(FailedRecord("python_grader_unavailable", f"Python graders cannot run on this worker: {exc}.",
                                   "method.reinforcement.grader"))
    except ModelLoadError as exc:
        reporter.emit(FailedRecord("model_load_failed", str(exc), "model"))
    except MemoryError:
        reporter.emit(FailedRecord("out_of_memory", "Training ran out of memory; "
                                   "try a smaller batch_size or max_seq_length."))
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            reporter.emit(FailedRecord("out_of_memory", f"GPU out of memory: {exc}; "
                                       "try a smaller batch_size or max_seq_length."))
            return
        traceback.print_exc()
        reporter.emit(FailedRecord("internal_error", f"Training failed: {type(exc).__name__}: {exc}"))


def _recipe(method: str):  # type: ignore[no-untyped-def]
    if method == "supervised":
        from openft.training.recipes import sft

        return sft.run
    if method == "dpo":
        from openft.training.recipes import dpo

        return dpo.run
    if method == "reinforcement":
        from openft.training.recipes import rft

        return rft.run
    raise ValueError(f"no recipe for method {method!r}")


def die_with_parent() -> None:
    """If the worker that launched us dies, die too (its job will be re-queued and
    resumed elsewhere; an orphan would train on and write the same keys)."""
    parent = int(os.environ.get("OPENFT_PARENT_PID", "0") or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def reproducible_math() -> None:
    """Same seed, data and hyperparameters give the same run, bit for bit. torch's CPU matrix products
    (Intel MKL) may otherwise round differently between two runs of one process on AVX-512 CPUs: on a
    Xeon, RFT's KL differed in its fourth digit between a run and the same run paused and resumed.
    MKL's strict conditional reproducibility fixes it (training steps cost 1% more, measured); MKL reads
    it when it starts, so each training, estimate and eval process sets it before its first product.
    The API server's chat serving does not (single rows would take twice as long)."""
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def main() -> None:
    reproducible_math()
    die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    reporter = PipeReporter.from_stdout()
    config = RunConfig.load(Path(sys.argv[1]))
    if config.nice:
        os.nice(config.nice)  # before torch starts its threads, which inherit it
    run(config, reporter)


if __name__ == "__main__":
    main()
