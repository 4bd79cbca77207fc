"""Entry point of a training process: ``python -m openft.training.run CONFIG.json``.

Runs the recipe of the job's method and turns every way it can fail into one
``failed`` record with an OpenAI error code: ``invalid_training_file`` (with
the line), ``model_load_failed``, ``out_of_memory`` or ``internal_error``.
The exit status is 0 whenever an outcome record was written.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from openft.training.config import RunConfig
from openft.training.report import PipeReporter, Reporter


def run(config: RunConfig, reporter: Reporter) -> None:
    from openft.training.common import ModelLoadError
    from openft.training.data import DataError

    try:
        recipe = _recipe(config.method_type)
        recipe(config, reporter)
    except DataError as exc:
        reporter.emit("failed", code=exc.code, message=str(exc), param="training_file")
    except ModelLoadError as exc:
        reporter.emit("failed", code="model_load_failed", message=str(exc), param="model")
    except MemoryError:
        reporter.emit("failed", code="out_of_memory", message="Training ran out of memory; "
                      "try a smaller batch_size or max_seq_length.", param=None)
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            reporter.emit("failed", code="out_of_memory", message=f"GPU out of memory: {exc}; "
                          "try a smaller batch_size or max_seq_length.", param=None)
            return
        traceback.print_exc()
        reporter.emit("failed", code="internal_error",
                      message=f"Training failed: {type(exc).__name__}: {exc}", param=None)


def _recipe(method: str):  # type: ignore[no-untyped-def]
    if method == "supervised":
        from openft.training.recipes import sft

        return sft.run
    if method == "dpo":
        from openft.training.recipes import dpo

        return dpo.run
    raise ValueError(f"no recipe for method {method!r}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    reporter = PipeReporter.from_stdout()
    run(RunConfig.load(Path(sys.argv[1])), reporter)


if __name__ == "__main__":
    main()
