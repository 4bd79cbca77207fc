"""The openft CLI, run as a user runs it, against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from conftest import require
from support import REPO, Tenant, chat_file
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def cli(training_server):
    env = {**training_server.env, "OPENFT_BASE_URL": f"{training_server.url}/v1",
           "OPENFT_API_KEY": training_server.api_key}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "openft", *args], env=env, capture_output=True,
                                text=True, timeout=300, cwd=REPO)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_files_upload_and_list(cli, tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_file(12))
    uploaded = json.loads(cli("files", "upload", str(path), "--json").stdout)
    assert uploaded["id"].startswith("file-") and uploaded["purpose"] == "fine-tune"
    table = cli("files", "list").stdout
    assert "ID" in table.splitlines()[0] and uploaded["id"] in table and "train.jsonl" in table
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    failed = cli("files", "upload", str(bad), check=False)
    assert failed.returncode != 0 and "Line 1" in failed.stderr and "(file)" in failed.stderr


def test_jobs_create_follow_get_list_and_chat(cli, tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_file(12))
    created = json.loads(cli("jobs", "create", "--model", TINY, "--training-file", str(path),
                             "--epochs", "2", "--batch-size", "4", "--suffix", "cli", "--json").stdout)
    assert created["status"] == "queued" and created["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    followed = cli("jobs", "follow", created["id"], "--interval", "0.2")
    assert "Fine-tuning job started" in followed.stdout
    assert f"Job {created['id']} succeeded: ft:{TINY}:default:cli:" in followed.stdout
    shown = json.loads(cli("jobs", "get", created["id"], "--json").stdout)
    assert shown["status"] == "succeeded"
    assert created["id"] in cli("jobs", "list").stdout
    model = shown["fine_tuned_model"]
    assert model in cli("models", "list").stdout
    answer = cli("chat", model, "Question number 3?", "--max-tokens", "5")  # streamed
    as_json = json.loads(cli("chat", model, "Question number 3?", "--max-tokens", "5", "--json").stdout)
    assert as_json["object"] == "chat.completion" and as_json["usage"]["completion_tokens"] > 0
    assert answer.stdout == as_json["choices"][0]["message"]["content"] + "\n"


def test_follow_exits_non_zero_on_cancel_and_failure(cli, training_server, tmp_path) -> None:
    tenant = Tenant(training_server, "default", training_server.api_key)
    training = tenant.sdk.files.create(file=("t.jsonl", chat_file(12)), purpose="fine-tune").id
    job = json.loads(cli("jobs", "create", "--model", TINY, "--training-file", training,
                         "--epochs", "40", "--json").stdout)
    canceller = threading.Timer(3.0, lambda: tenant.sdk.fine_tuning.jobs.cancel(job["id"]))
    canceller.start()
    followed = cli("jobs", "follow", job["id"], "--interval", "0.2", check=False)
    canceller.join()
    assert followed.returncode == 2 and "cancelled" in followed.stdout

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    cli("models", "add", "local/broken-cli", str(broken))
    failing = json.loads(cli("jobs", "create", "--model", "local/broken-cli", "--training-file", training,
                             "--json").stdout)
    followed = cli("jobs", "follow", failing["id"], "--interval", "0.2", check=False)
    assert followed.returncode == 1 and "failed" in followed.stdout


def test_pause_resume_cancel_commands(cli, training_server) -> None:
    tenant = Tenant(training_server, "default", training_server.api_key)
    training = tenant.sdk.files.create(file=("t.jsonl", chat_file(12)), purpose="fine-tune").id
    job = json.loads(cli("jobs", "create", "--model", TINY, "--training-file", training, "--epochs", "40",
                         "--json").stdout)["id"]
    assert json.loads(cli("jobs", "pause", job, "--json").stdout)["status"] == "paused"
    assert json.loads(cli("jobs", "resume", job, "--json").stdout)["status"] == "queued"
    assert "cancelled" in cli("jobs", "cancel", job).stdout
    again = cli("jobs", "cancel", job, check=False)
    assert again.returncode != 0 and "409" in again.stderr
    assert wait_for(tenant, job, {"cancelled"}).status == "cancelled"


def test_jobs_create_reinforcement_with_a_python_grader_file(cli, tmp_path) -> None:
    require("sandbox")  # python graders run only in it
    prompts = [{"messages": [{"role": "user", "content": f"Say hi {i}."}], "target": "hi"} for i in range(10)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    grader = tmp_path / "short.py"
    grader.write_text("def grade(sample, item):\n    return 1.0 if len(sample['output_text']) < 20 else 0.0\n")
    created = json.loads(cli("jobs", "create", "--model", TINY, "--training-file", str(data),
                             "--validation-file", str(data), "--method", "reinforcement", "--grader", str(grader),
                             "--epochs", "1", "--batch-size", "5", "--reasoning-effort", "low", "--json").stdout)
    shown = {k: v for k, v in created["method"]["reinforcement"]["grader"].items() if v is not None}
    assert shown == {"type": "python", "name": "short", "source": grader.read_text()}
    assert "succeeded" in cli("jobs", "follow", created["id"], "--interval", "0.2").stdout
    missing = cli("jobs", "create", "--model", TINY, "--training-file", str(data), "--method", "reinforcement",
                  check=False)
    assert missing.returncode != 0 and "--grader" in missing.stderr


def test_evals_create_run_get_and_items(cli, tmp_path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"input": {"type": "string"}},
                                  "required": ["input"]}))
    exact = tmp_path / "exact.json"
    exact.write_text(json.dumps({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                                 "reference": "{{item.input}}", "operation": "eq"}))
    created = json.loads(cli("evals", "create", "--name", "echo", "--item-schema", str(schema),
                             "--criterion", str(exact), "--json").stdout)
    assert created["name"] == "echo" and created["testing_criteria"][0]["name"] == "exact"
    assert created["id"] in cli("evals", "list").stdout

    samples = tmp_path / "graded.jsonl"
    samples.write_text("".join(json.dumps({"item": {"input": word}, "sample": {"output_text": out}}) + "\n"
                               for word, out in (("a", "a"), ("b", "c"), ("d", "d"))))
    followed = cli("evals", "run", created["id"], "--data", str(samples), "--follow")
    assert "2/3 (67%) passed" in followed.stdout and "exact-" in followed.stdout
    run_id = followed.stdout.split()[1]
    assert "2/3" in cli("evals", "get", created["id"]).stdout
    failing = cli("evals", "items", created["id"], run_id, "--status", "fail").stdout.splitlines()
    assert len(failing) == 2 and failing[1].split()[:3] == ["1", "fail", "c"]

    questions = tmp_path / "items.jsonl"  # a completions run's items carry no sample: the model writes it
    questions.write_text("".join(json.dumps({"item": {"input": word}}) + "\n" for word in "abd"))
    sampled = cli("evals", "run", created["id"], "--data", str(questions), "--model", TINY, "--max-tokens", "2",
                  "--temperature", "0", "--follow")
    assert f"on {TINY}" in sampled.stdout
    missing = cli("evals", "run", created["id"], "--data", str(questions), "--model", "no/such", check=False)
    assert missing.returncode != 0 and "(data_source.model)" in missing.stderr
