"""Chat completions against a real server: base, fine-tuned and checkpoint
models, streaming, and two adapters of one base served concurrently."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from support import Tenant, jsonl
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training

ASK = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def chat_tenant(storage_training_server) -> Tenant:
    """Blobs local or on S3 (where chat loads weights through its local cache)."""
    return Tenant(storage_training_server, "default", storage_training_server.api_key)


@pytest.fixture(scope="module")
def base_tenant(training_server) -> Tenant:
    """For what does not depend on where fine-tuned weights are stored."""
    return Tenant(training_server, "default", training_server.api_key)


_TRAINED: dict[tuple[str, str], tuple[str, str]] = {}


def train_on(tenant: Tenant, word: str) -> tuple[str, str]:
    """A tiny model fine-tuned hard to answer ``word``: (model id, a checkpoint id).
    Trained once per server and word; modules on one server share them."""
    key = (tenant.server.url, word)
    if key not in _TRAINED:
        _TRAINED[key] = _train(tenant, word)
    return _TRAINED[key]


def _train(tenant: Tenant, word: str) -> tuple[str, str]:
    data = jsonl([{"messages": [{"role": "user", "content": "Say something."},
                                {"role": "assistant", "content": f"{word} {word} {word}"}]}] * 12)
    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(data)), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(model=TINY, training_file=training, seed=0, method={
        "type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10.0}}})
    done = wait_for(tenant, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    checkpoint = tenant.sdk.fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    return done.fine_tuned_model, checkpoint


@pytest.fixture(scope="module")
def tuned(chat_tenant: Tenant) -> dict[str, tuple[str, str]]:
    return {word: train_on(chat_tenant, word) for word in ("apple", "zebra")}


def say(tenant: Tenant, model: str, **extra) -> str:
    response = tenant.sdk.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=8, **extra)
    return response.choices[0].message.content


def test_base_model_completion(base_tenant: Tenant) -> None:
    response = base_tenant.sdk.chat.completions.create(model=TINY, messages=ASK, temperature=0, max_tokens=5)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.model == TINY and len(response.choices) == 1
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens <= 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert say(base_tenant, TINY) == say(base_tenant, TINY)  # temperature 0 is greedy


def test_fine_tuned_and_checkpoint_models_answer_what_they_learned(chat_tenant, tuned) -> None:
    for word, (model, checkpoint) in tuned.items():
        assert word in say(chat_tenant, model)
        assert say(chat_tenant, checkpoint)  # a usable model
    assert "apple" not in say(chat_tenant, TINY) and "zebra" not in say(chat_tenant, TINY)


def test_streaming_matches_the_plain_answer(chat_tenant, tuned) -> None:
    model = tuned["apple"][0]
    pieces = [c.choices[0].delta.content or "" for c in chat_tenant.sdk.chat.completions.create(
        model=model, messages=ASK, temperature=0, max_tokens=8, stream=True) if c.choices]
    assert "".join(pieces) == say(chat_tenant, model)
    with httpx.stream("POST", f"{chat_tenant.server.url}/api/llm/chat/completions",
                      headers={"Authorization": f"Bearer {chat_tenant.key}"},
                      json={"model": model, "messages": ASK, "stream": True, "max_tokens": 4,
                            "stream_options": {"include_usage": True}}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_two_adapters_of_one_base_served_concurrently(chat_tenant, tuned) -> None:
    models = [tuned["apple"][0], tuned["zebra"][0]] * 4
    expected = {m: say(chat_tenant, m) for m in set(models)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda m: say(chat_tenant, m), models))
    assert answers == [expected[m] for m in models]


def test_errors(base_tenant) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        say(base_tenant, "nobody/nothing")
    assert caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        say(base_tenant, TINY, top_p=2)
    assert caught.value.body["param"] == "top_p"
    with pytest.raises(openai.BadRequestError) as caught:
        base_tenant.sdk.chat.completions.create(model=TINY, messages=[])
    assert caught.value.body["param"] == "messages"


def test_other_organisations_fine_tuned_model_is_404(chat_tenant, tuned) -> None:
    server = chat_tenant.server
    stranger = Tenant(server, "stranger", server.new_key("stranger"))
    with pytest.raises(openai.NotFoundError):
        say(stranger, tuned["apple"][0])


def test_sampling_parameters(base_tenant) -> None:
    sdk = base_tenant.sdk.chat.completions
    three = sdk.create(model=TINY, messages=ASK, temperature=1.0, seed=5, n=3, max_completion_tokens=6)
    assert [c.index for c in three.choices] == [0, 1, 2]
    again = sdk.create(model=TINY, messages=ASK, temperature=1.0, seed=5, n=3, max_completion_tokens=6)
    assert [c.message.content for c in again.choices] == [c.message.content for c in three.choices]  # seeded
    assert three.usage.completion_tokens <= 3 * 7


def test_stop_strings_cut_the_answer(chat_tenant, tuned) -> None:
    model = tuned["apple"][0]
    whole = say(chat_tenant, model)
    assert "apple apple" in whole
    cut = chat_tenant.sdk.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=8,
                                                  stop=[" apple"])
    assert cut.choices[0].message.content == whole[: whole.index(" apple")]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat_tenant.sdk.chat.completions.create(
        model=model, messages=ASK, temperature=0, max_tokens=8, stop=[" apple"], stream=True) if c.choices)
    assert streamed == cut.choices[0].message.content


def test_health_stays_responsive_during_generation(base_tenant) -> None:
    import time

    done = threading.Event()

    def generate() -> None:
        base_tenant.sdk.chat.completions.create(model=TINY, messages=ASK, temperature=0, max_tokens=400)
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    latencies = []
    while not done.is_set():
        started = time.monotonic()
        assert httpx.get(f"{base_tenant.server.url}/health", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
    worker.join()
    assert latencies and max(latencies) < 0.5, latencies


@pytest.mark.parametrize("which", ["base", "fine-tuned", "checkpoint"])
def test_stream_and_plain_agree_for_every_kind_of_model(chat_tenant, tuned, which) -> None:
    model = {"base": TINY, "fine-tuned": tuned["zebra"][0], "checkpoint": tuned["zebra"][1]}[which]
    plain = say(chat_tenant, model)
    chunks = list(chat_tenant.sdk.chat.completions.create(
        model=model, messages=ASK, temperature=0, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
