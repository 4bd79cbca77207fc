"""End to end on the bundled SmolLM2-135M-Instruct: the README quick start,
run as printed (CLI), then the job checked through the API as a user would:
a few dozen chat examples, 2 epochs, and a changed model."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from support import REPO, SMOLLM, Tenant, run_readme_python, share_bundled_model

pytestmark = pytest.mark.training

PIRATE = ("matey", "arr", "yo ho", "hearty")
QUESTION = "What is the capital of Italy?"


def quick_start_block() -> str:
    readme = (REPO / "README.md").read_text()
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S) if "openft jobs follow" in b]
    return block


def test_readme_quick_start_teaches_the_bundled_model(make_training_server, bundled_model_dir) -> None:
    # Training takes both cores here (nothing else runs while the quick start trains).
    server = share_bundled_model(make_training_server(OPENFT_TRAINING_THREADS="2"), bundled_model_dir)
    env = {**server.env, "OPENFT_BASE_URL": f"{server.url}/v1", "OPENFT_API_KEY": server.api_key}
    script = "set -euo pipefail\n" + quick_start_block() + '\necho "JOB=$JOB"\n'
    result = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    lines = result.stdout.splitlines()
    before, after, job_id = lines[0], lines[-2], lines[-1].removeprefix("JOB=")
    print(f"\nbase:  {before!r}\ntuned: {after!r}")
    assert not any(word in before.lower() for word in PIRATE)
    assert any(word in after.lower() for word in PIRATE)
    assert f"Job {job_id} succeeded" in result.stdout

    tenant = Tenant(server, "default", server.api_key)
    done = tenant.sdk.fine_tuning.jobs.retrieve(job_id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{SMOLLM}:default:pirate:{job_id[-8:]}"
    assert done.trained_tokens > 0 and len(done.result_files) == 1
    assert done.hyperparameters.n_epochs == 2 and done.seed == 1
    assert [c.step_number for c in tenant.sdk.fine_tuning.jobs.checkpoints.list(job_id)] == [60, 30]
    listed = list(tenant.sdk.fine_tuning.jobs.list_events(job_id, limit=100))  # auto-paginates
    events = [e.message for e in listed]
    assert "The job has successfully completed" in events
    assert sum(m.startswith("Step ") for m in events) == 60

    # The estimate of the same job (`openft jobs create --dry-run`) counts the
    # tokens it trained and foresees its duration within 30%.
    dry = subprocess.run(
        [sys.executable, "-m", "openft", "jobs", "create", "--model", SMOLLM, "--training-file",
         "examples/tiny-chat.jsonl", "--epochs", "2", "--suffix", "pirate", "--seed", "1", "--dry-run", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert dry.returncode == 0, dry.stderr
    shown = json.loads(dry.stdout)
    assert shown["trained_tokens"] == done.trained_tokens and shown["total_steps"] == 60
    started = next(e.created_at for e in listed if e.message == "Fine-tuning job started")
    measured = done.finished_at - started
    print(f"\nestimated {shown['estimated_duration_seconds']} s, measured {measured} s "
          f"({shown['estimated_duration_seconds'] / measured - 1:+.0%}); calibration {shown['calibration']}")
    assert abs(shown["estimated_duration_seconds"] - measured) <= 0.3 * measured

    ask = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": QUESTION}]
    for model in (done.fine_tuned_model, f"{done.fine_tuned_model}:ckpt-step-60"):
        reply = tenant.sdk.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=256)
        assert reply.choices[0].message.content == after
    base = tenant.sdk.chat.completions.create(model=SMOLLM, messages=ask, temperature=0, max_tokens=24)
    text = base.choices[0].message.content
    assert text and text[:len(before)] == before[:len(text)]  # what the CLI printed first, greedy again


@pytest.mark.example
def test_first_job_on_a_fresh_home_trains_like_every_later_one(make_training_server) -> None:
    """A run is a function of seed, data and hyperparameters only: the first
    job on a fresh home (whose training process converts the bundled model)
    reports exactly the per-step losses of an identical second job."""
    import io

    from support import chat_file
    from test_jobs_train import wait_for

    server = make_training_server()
    assert not (server.home / "models").exists()
    tenant = Tenant(server, "default", server.api_key)
    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id

    def losses() -> list[float]:
        job = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training, seed=5, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
        done = wait_for(tenant, job.id, {"succeeded", "failed"}, timeout=600)
        assert done.status == "succeeded", done.error
        events = tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=100)
        metrics = sorted((e.data for e in events if e.type == "metrics"), key=lambda d: d["step"])
        return [d["train_loss"] for d in metrics]

    first = losses()
    assert (server.home / "models").is_dir()  # the first job converted the bundled model
    second = losses()
    assert len(first) == 3
    assert first == second  # bit for bit, from step 1 to the last
    server.stop()


FUNCTION_CALLING = REPO / "examples" / "function-calling"


@pytest.mark.example
def test_fine_tuned_bundled_model_calls_the_function_it_was_shown(make_training_server, bundled_model_dir) -> None:
    """README "Fine-tune for function calling", its Python block run as
    printed: the bundled model, trained on
    examples/function-calling/train.jsonl, answers every request of
    held-out.jsonl (cities it never saw) with a call to the right function
    and the right arguments, through the SDK's tools interface, streamed and
    not; the base model does not."""
    import json

    server = share_bundled_model(make_training_server(OPENFT_TRAINING_THREADS="2"), bundled_model_dir)
    tenant = Tenant(server, "default", server.api_key)
    status, model = run_readme_python(server, "function-calling/train", timeout=1500).splitlines()[0].split()
    assert status == "succeeded" and model.startswith(f"ft:{SMOLLM}:default:tools:")

    held_out = [json.loads(line) for line in (FUNCTION_CALLING / "held-out.jsonl").read_text().splitlines()]
    named, exact, base_exact = 0, 0, 0
    for index, example in enumerate(held_out):
        ask, expected = example["messages"][:1], example["messages"][1]["tool_calls"][0]["function"]
        want = (expected["name"], json.loads(expected["arguments"]))
        reply = tenant.sdk.chat.completions.create(model=model, messages=ask,
                                                   tools=example["tools"], temperature=0, max_tokens=60)
        calls = reply.choices[0].message.tool_calls or []
        got = [(c.function.name, json.loads(c.function.arguments)) for c in calls]
        print(f"tuned: {ask[0]['content']!r} -> {got or reply.choices[0].message.content!r}")
        assert reply.choices[0].finish_reason == "tool_calls" and len(got) == 1, got
        named += got[0][0] == want[0]
        exact += got == [want]
        if index < 3:  # the base model, for contrast (it answers in prose)
            base = tenant.sdk.chat.completions.create(model=SMOLLM, messages=ask, tools=example["tools"],
                                                      temperature=0, max_tokens=40)
            base_calls = base.choices[0].message.tool_calls or []
            base_exact += [(c.function.name, json.loads(c.function.arguments)) for c in base_calls] == [want]
    print(f"held-out: right function {named}/{len(held_out)}, exact arguments {exact}/{len(held_out)}; "
          f"base model exact {base_exact}/3")
    assert named == len(held_out)
    # Measured: 8 of 9 exact; the miss spells an unseen city from sub-word
    # pieces wrongly ("Manila" -> "M Manila"), a 135M model's limit.
    assert exact >= len(held_out) - 1
    assert base_exact == 0

    example = held_out[0]
    with tenant.sdk.chat.completions.stream(model=model, messages=example["messages"][:1],
                                            tools=example["tools"], temperature=0, max_tokens=60) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == example["messages"][1]["tool_calls"][0]["function"]["name"]
    server.stop()



@pytest.mark.example
@pytest.mark.filterwarnings("ignore:The Evals API is deprecated")
def test_the_evals_tutorial_finds_the_pirate_model_better_at_pirate_speech(make_training_server,
                                                                          bundled_model_dir) -> None:
    """docs/tutorials/evaluate-a-fine-tune.md, its Python block run as
    printed: the same eval on the bundled model and on the quick start's
    pirate model; the pirate model passes the pirate criterion far more often
    and keeps most of the base's right answers."""
    import re

    server = share_bundled_model(make_training_server(OPENFT_TRAINING_THREADS="2"), bundled_model_dir)
    stdout = run_readme_python(server, "examples/pirate-eval.jsonl", timeout=1500)
    found = {who: tuple(int(n) for n in re.search(
        rf"^{who}: completed, passed \d+/16 items \(pirate (\d+)/16, correct (\d+)/16\)", stdout, re.M).groups())
        for who in ("base", "pirate")}
    (base_pirate, base_correct), (pirate_pirate, pirate_correct) = found["base"], found["pirate"]
    assert pirate_pirate >= base_pirate + 8 and pirate_correct >= base_correct - 4, found
    server.stop()
