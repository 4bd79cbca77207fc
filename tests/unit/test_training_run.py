"""training.run maps every way a recipe fails to one ``failed`` record."""

from __future__ import annotations

import pytest

from openft.domain import Method, MethodType
from openft.training import run as run_module
from openft.training.common import ModelLoadError
from openft.training.config import RunConfig
from openft.training.data import DataError
from openft.training.report import ListReporter


def config() -> RunConfig:
    return RunConfig(job_id="j", base={"id": "m", "kind": "local", "path": "/x"}, models_dir="/x",
                     storage_url="/x", training_file_key="k", validation_file_key=None,
                     method=Method(MethodType.SUPERVISED), seed=0)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (matched by name)."""


@pytest.mark.parametrize("error,code,param", [
    (DataError("bad", line=4), "invalid_training_file", "training_file"),
    (ModelLoadError("nope"), "model_load_failed", "model"),
    (MemoryError(), "out_of_memory", None),
    (OutOfMemoryError("CUDA out of memory"), "out_of_memory", None),
    (ZeroDivisionError("boom"), "internal_error", None),
])
def test_failures_become_one_record(monkeypatch, error, code, param) -> None:
    def recipe(config, reporter, team):
        raise error

    monkeypatch.setattr(run_module, "_recipe", lambda method: recipe)
    reporter = ListReporter()
    run_module.run(config(), reporter)
    [failed] = reporter.records
    assert (failed["type"], failed["code"], failed["param"]) == ("failed", code, param)
    assert failed["message"]
    if code == "invalid_training_file":
        assert failed["message"].startswith("Line 4:")
