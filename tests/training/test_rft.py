"""Reinforcement fine-tuning: the recipe raises the reward on a task built for
it, and RFT jobs keep the job contract (metrics, checkpoints, result file,
pause/resume with equal results, graders that fail without harming the job,
requests refused with the field named)."""

from __future__ import annotations

import io
from pathlib import Path

import openai
import pytest
import torch

from openft.domain import Method
from openft.store.blobs import BlobStore
from openft.training.config import RunConfig
from openft.training.report import ListReporter
from openft.training.run import run

from support import IN_PROCESS_THREADS, Server, Tenant, jsonl
from test_jobs_train import TINY, wait_for
from test_recovery import adapter, assert_same_weights, gone_within, training_process, wait_for_event

pytestmark = pytest.mark.training

CLOSE = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
         "reference": "{{item.target}}", "evaluation_metric": "fuzzy_match"}


def prompts(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Say hello number {i}."}], "target": "hello there"}
            for i in range(start, start + n)]


def method(grader: dict = CLOSE, **hyperparameters) -> dict:
    hp = {"n_epochs": 2, "batch_size": 4, "max_completion_tokens": 8, "compute_multiplier": 0.5, **hyperparameters}
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp}}


def upload(tenant: Tenant, lines: list[dict]) -> str:
    return tenant.sdk.files.create(file=("rl.jsonl", io.BytesIO(jsonl(lines))), purpose="fine-tune").id


@pytest.fixture(scope="module")
def trainer(training_server: Server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


@pytest.fixture(scope="module")
def files(trainer: Tenant) -> tuple[str, str]:
    return upload(trainer, prompts(16)), upload(trainer, prompts(4, start=100))


@pytest.fixture(scope="module")
def finished(trainer: Tenant, files) -> object:
    """An uninterrupted RFT job (seed 5): the run the other tests compare with."""
    training, validation = files
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=training, validation_file=validation,
                                              seed=5, method=method(), suffix="rl")
    done = wait_for(trainer, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    return done


def metrics_of(tenant: Tenant, job_id: str) -> list[dict]:
    events = tenant.sdk.fine_tuning.jobs.list_events(job_id, limit=100).data
    return sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])


def test_rft_job_reports_rewards_checkpoints_and_a_usable_model(trainer: Tenant, finished) -> None:
    job = finished
    hp = job.method.reinforcement.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.compute_multiplier) == (2, 4, 0.5)
    resolved = trainer.http().get(f"/fine_tuning/jobs/{job.id}").json()["method"]["reinforcement"]
    assert resolved["grader"] == CLOSE
    assert {k: resolved["hyperparameters"][k] for k in ("group_size", "eval_interval", "eval_samples", "beta")} == {
        "group_size": 4, "eval_interval": 2, "eval_samples": 1, "beta": 0.04}
    assert resolved["hyperparameters"]["reasoning_effort"] == "default"

    rows = metrics_of(trainer, job.id)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row in rows:
        assert {"train_loss", "train_reward_mean", "train_reward_std", "kl", "grader_errors",
                "completion_tokens_mean"} <= row.keys()
        assert 0 <= row["train_reward_mean"] <= 1 and row["grader_errors"] == 0
    assert [r["step"] for r in rows if "valid_reward_mean" in r] == [2, 4, 6, 8]
    messages = [e.message for e in trainer.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Validation reward before training: mean=") for m in messages)

    checkpoints = trainer.sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [4, 8]
    assert {"train_reward_mean", "valid_reward_mean", "kl"} <= checkpoints[0].metrics.model_dump().keys()

    [result] = job.result_files
    header, *lines = trainer.sdk.files.content(result).text.splitlines()
    assert header == ("step,train_loss,train_reward_mean,train_reward_std,kl,grader_errors,"
                      "completion_tokens_mean,valid_reward_mean,valid_reward_std")
    assert len(lines) == 8
    assert job.trained_tokens > 8 * 4 * 4  # every sampled sequence's prompt and completion tokens

    for model in (job.fine_tuned_model, checkpoints[-1].fine_tuned_model_checkpoint):
        answer = trainer.sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=0)
        assert answer.choices[0].message.content is not None


def test_rft_pause_then_resume_equals_an_uninterrupted_run(trainer: Tenant, files, finished) -> None:
    training, validation = files
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=training, validation_file=validation,
                                              seed=5, method=method(), suffix="rl")
    wait_for_event(trainer, job.id, "Step 3/")
    process = training_process(job.id)
    assert trainer.sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    assert gone_within(process) < 5
    wait_for_event(trainer, job.id, "Training state saved at step")
    assert trainer.sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_for(trainer, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    assert_same_weights(adapter(trainer.server, job.id), adapter(trainer.server, finished.id))
    assert done.trained_tokens == finished.trained_tokens
    # Same samples, same grades, step by step (the result file holds every step's rewards).
    def results(of) -> str:
        return trainer.sdk.files.content(of.result_files[0]).text

    assert results(done) == results(finished)
    # The history has every step, the ones finished after the pause request included.
    assert [r["step"] for r in metrics_of(trainer, job.id)] == list(range(1, 9))


def test_cancel_stops_an_rft_job_in_the_middle_of_a_long_step(trainer: Tenant, files) -> None:
    """A step of 128 completions of up to 200 tokens takes longer than the
    worker's grace time (4 s, then SIGKILL); cancelled as the first step
    starts, the process still ends on its own, before that grace runs out
    (usually within 1 s; a SIGKILL would come only after 4 s)."""
    training, validation = files
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=training, validation_file=validation,
                                              method=method(n_epochs=20, batch_size=16, compute_multiplier=1,
                                                            max_completion_tokens=200))
    wait_for_event(trainer, job.id, "Validation reward before training")  # step 1 is sampling now
    process = training_process(job.id)
    assert trainer.sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert gone_within(process) < 4
    assert trainer.sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_model_graders_judge_with_a_served_model_inside_the_training_process(trainer: Tenant, files, finished) -> None:
    """The judges: a base model and a fine-tuned one (its adapter fetched from blob storage)."""
    judged = {"type": "multi", "name": "judged", "calculate_output": "0.4 * close + 0.3 * polite + 0.3 * rated",
              "graders": {"close": CLOSE, "rated": {
                  "type": "label_model", "name": "rated", "model": finished.fine_tuned_model,
                  "input": [{"role": "user", "content": "Good or bad? {{sample.output_text}}"}],
                  "labels": ["good", "bad"], "passing_labels": ["good"]}, "polite": {
                  "type": "label_model", "name": "polite", "model": TINY,
                  "input": [{"role": "user", "content": "Is this polite? {{sample.output_text}}"}],
                  "labels": ["polite", "rude"], "passing_labels": ["polite"]}}}
    training, validation = files
    job = trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=training, validation_file=validation,
                                              method=method(judged, n_epochs=1))
    done = wait_for(trainer, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    rows = metrics_of(trainer, job.id)
    assert len(rows) == 4 and all(r["grader_errors"] == 0 for r in rows)  # every judge call answered


def test_reinforcement_requests_are_checked_field_by_field(trainer: Tenant, files) -> None:
    training, validation = files
    chat = trainer.sdk.files.create(file=("c.jsonl", io.BytesIO(jsonl([
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 10))),
        purpose="fine-tune").id
    cases = [
        (dict(training_file=training, method=method()), "validation_file", "needs a validation file"),
        (dict(training_file=training, validation_file=validation, method=method(dict(CLOSE, evaluation_metric="cos"))),
         "method.reinforcement.grader.evaluation_metric", "must be one of"),
        (dict(training_file=training, validation_file=validation, method={"type": "reinforcement"}),
         "method.reinforcement.grader", "needs a grader"),
        (dict(training_file=training, validation_file=validation, method=method({
            "type": "score_model", "name": "judge", "model": "ft:nope", "input": [{"role": "user", "content": "x"}]})),
         "method.reinforcement.grader.model", "does not exist"),
        (dict(training_file=training, validation_file=validation, method=method(eval_samples=0)),
         "method.reinforcement.hyperparameters.eval_samples", "between 1 and 64"),
        (dict(training_file=chat, validation_file=validation, method=method()), "training_file",
         "reinforcement format"),
    ]
    for body, param, text in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            trainer.sdk.fine_tuning.jobs.create(model=TINY, **body)
        error = refused.value.body
        assert error["param"] == param and text in error["message"], error
    with pytest.raises(openai.BadRequestError) as refused:  # prompts are not a supervised file
        trainer.sdk.fine_tuning.jobs.create(model=TINY, training_file=training)
    assert refused.value.body["code"] == "invalid_file_format"


# ----------------------------------------------------------- the recipe itself
YES_NO = [{"messages": [{"role": "user", "content": f"Pick one ({i})"}, {"role": "assistant", "content": word}]}
          for i in range(8) for word in ("yes", "no")]
WANT_YES = [{"messages": [{"role": "user", "content": f"Pick one ({i})"}], "answer": "yes"} for i in range(8)]


def in_process(tmp_path: Path, job_id: str, base: dict, training: list[dict], validation: list[dict] | None,
               method: dict, seed: int = 1) -> ListReporter:
    blobs = BlobStore(str(tmp_path / "blobs"))
    for name, lines in (("train", training), ("valid", validation)):
        if lines:
            with blobs.writer(f"files/{job_id}-{name}.jsonl") as out:
                out.write(jsonl(lines))
    config = RunConfig(
        job_id=job_id, base=base, models_dir=str(tmp_path / "models"), storage_url=str(tmp_path / "blobs"),
        training_file_key=f"files/{job_id}-train.jsonl",
        validation_file_key=f"files/{job_id}-valid.jsonl" if validation else None,
        method=Method.from_wire(method), seed=seed, device="cpu", threads=IN_PROCESS_THREADS,
    )
    reporter = ListReporter()
    run(config, reporter)
    assert reporter.of("done"), reporter.records[-1]
    return reporter


def test_rft_raises_the_mean_reward_on_a_task_built_for_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A tiny model first taught to answer 'yes' or 'no' at random (a full
    fine-tune), then rewarded for 'yes': it learns to say yes."""
    torch.manual_seed(0)
    in_process(tmp_path, "ftjob-yesno", {"id": TINY, "kind": "local", "path": str(tiny_model_dir)}, YES_NO, None,
               {"type": "supervised", "supervised": {"hyperparameters": {
                   "n_epochs": 60, "batch_size": 16, "training_type": "full", "learning_rate_multiplier": 300.0}}})
    start = {"id": "local/yes-or-no", "kind": "local", "path": str(tmp_path / "blobs" / "models" / "ftjob-yesno")}
    says_yes = {"type": "string_check", "name": "yes", "input": "{{sample.output_text}}",
                "reference": "{{item.answer}}", "operation": "like"}
    reporter = in_process(tmp_path, "ftjob-rft", start, WANT_YES, WANT_YES, {
        "type": "reinforcement", "reinforcement": {"grader": says_yes, "hyperparameters": {
            "n_epochs": 4, "batch_size": 4, "max_completion_tokens": 8, "eval_samples": 4, "beta": 0.0,
            "training_type": "full", "learning_rate_multiplier": 1000.0}}})
    before = reporter.of("event")[0]["data"]["valid_reward_mean"]
    rows = [r["data"] for r in reporter.of("metrics")]
    after = rows[-1]["valid_reward_mean"]
    assert 0.3 < before < 0.8, before  # a coin flip to start with
    assert after >= before + 0.2, (before, after)
    assert sum(r["train_reward_mean"] for r in rows[-2:]) > sum(r["train_reward_mean"] for r in rows[:2])


@pytest.mark.example
def test_readme_rft_example_raises_the_bundled_models_validation_reward(make_training_server,
                                                                       bundled_model_dir) -> None:
    """README "Reinforcement fine-tuning", its Python block run as printed:
    the bundled model's mean validation reward after one epoch is clearly
    above its own before training (the baseline event, same sampling)."""
    import re

    from support import SMOLLM, run_readme_python, share_bundled_model

    server = share_bundled_model(make_training_server(OPENFT_TRAINING_THREADS="2"), bundled_model_dir)
    stdout = run_readme_python(server, "examples/sentiment", timeout=900)
    lines = stdout.splitlines()
    assert lines[0] == "1.0"
    status, model = lines[1].split()
    assert status == "succeeded" and model.startswith(f"ft:{SMOLLM}:default:sentiment:")
    before = float(re.search(r"before training: mean=([\d.]+)", stdout).group(1))
    after = float(re.findall(r"validation reward=([\d.]+)", stdout)[-1])
    assert after >= before + 0.3 and after >= 0.8, (before, after)


def test_a_pause_in_the_middle_of_a_step_drops_it_and_resumes_to_the_same_run(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    """A pause that arrives while a step is being graded and trained ends the
    process at once with the state of the step before; resuming from it gives
    the uninterrupted run's weights and result rows."""
    from safetensors.torch import load_file

    from openft.training.recipes import rft

    base = {"id": TINY, "kind": "local", "path": str(tiny_model_dir)}
    rl = method(n_epochs=2)
    in_process(tmp_path, "ftjob-whole", base, prompts(8), None, rl, seed=9)

    reporter = ListReporter()
    calls = []
    real_grade = rft.grade

    def grade_then_pause(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # step 3: graded, not yet trained
            reporter.request_stop("pause")
        return real_grade(*args, **kwargs)

    monkeypatch.setattr(rft, "grade", grade_then_pause)
    blobs = BlobStore(str(tmp_path / "blobs"))
    with blobs.writer("files/ftjob-cut-train.jsonl") as out:
        out.write(jsonl(prompts(8)))
    config = RunConfig(job_id="ftjob-cut", base=base, models_dir=str(tmp_path / "models"),
                       storage_url=str(tmp_path / "blobs"), training_file_key="files/ftjob-cut-train.jsonl",
                       validation_file_key=None, method=Method.from_wire(rl), seed=9, device="cpu")
    run(config, reporter)
    [paused] = reporter.of("paused")
    assert paused["step"] == 2 and [r["data"]["step"] for r in reporter.of("metrics")] == [1, 2]
    monkeypatch.setattr(rft, "grade", real_grade)
    config.resume_state_key = paused["state_key"]
    resumed = ListReporter()
    run(config, resumed)
    assert resumed.of("done") and [r["data"]["step"] for r in resumed.of("metrics")] == [3, 4]

    def final(job: str) -> dict:
        return load_file(tmp_path / "blobs" / "models" / job / "adapter_model.safetensors")

    assert_same_weights(final("ftjob-cut"), final("ftjob-whole"))
    csv = {job: (tmp_path / "blobs" / "jobs" / job / "results.csv").read_text() for job in ("ftjob-cut", "ftjob-whole")}
    assert csv["ftjob-cut"] == csv["ftjob-whole"]
