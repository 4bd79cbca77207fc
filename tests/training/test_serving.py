"""Serving for real traffic, against a real server with the official SDK:
requests for a base and three of its adapters share batches and still get
their own answers; a full queue answers 503; a client that leaves frees its
slot; logprobs, JSON schemas and tool calls in OpenAI's shapes, streamed and
not."""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from test_chat import ASK, say, train_on

from support import Tenant, texts_checking_calls
from test_jobs_train import TINY

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def tenant(training_server) -> Tenant:
    return Tenant(training_server, "default", training_server.api_key)


@pytest.fixture(scope="module")
def adapters(tenant: Tenant) -> dict[str, str]:
    return {word: train_on(tenant, word)[0] for word in ("apple", "zebra", "mango")}


def engine_stats(tenant: Tenant) -> dict[str, int]:
    response = httpx.get(f"{tenant.server.url}/v1/serving/stats", headers={"Authorization": f"Bearer {tenant.key}"})
    response.raise_for_status()
    # The tiny model's engine (the shared server may also serve other bases of other tests).
    [stats] = [stats for name, stats in response.json()["engines"].items() if name.startswith("tiny-model")]
    return stats


class LongStream:
    """A streamed generation of thousands of tokens, kept open until closed."""

    def __init__(self, tenant: Tenant, model: str = TINY):
        self._context = httpx.stream(
            "POST", f"{tenant.server.url}/v1/chat/completions", timeout=60,
            headers={"Authorization": f"Bearer {tenant.key}"},
            json={"model": model, "messages": ASK, "stream": True, "temperature": 1.0, "seed": 3,
                  "max_tokens": 4096})

    def __enter__(self) -> LongStream:
        response = self._context.__enter__()
        self._lines = response.iter_lines()  # kept: a collected iterator would close the response
        for line in self._lines:
            if '"content":"' in line and '"content":""' not in line:
                return self  # generating now
        raise AssertionError("the stream ended before generating")

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)


def test_base_and_three_adapters_share_batches_and_keep_their_answers(tenant, adapters) -> None:
    models = [TINY, *adapters.values()] * 2
    expected = {m: say(tenant, m) for m in set(models)}
    for word, model in adapters.items():
        assert word in expected[model]
    before = engine_stats(tenant)
    with LongStream(tenant), ThreadPoolExecutor(max_workers=8) as pool:
        # The long generation keeps the engine busy: the eight requests join
        # its batch, and each finishes while it is still running.
        answers = list(pool.map(lambda m: say(tenant, m), models))
        during = engine_stats(tenant)
        assert during["running"] == 1
    assert answers == [expected[m] for m in models]
    assert during["mixed_steps"] > before["mixed_steps"]  # base and adapters in one forward pass
    assert during["joined_running"] >= before["joined_running"] + 8
    assert during["largest_batch"] >= 2
    # The asks above stored each model's prompt: these reused its rows (the prefix cache), same answers.
    assert during["prefix_cache_hits"] >= before["prefix_cache_hits"] + len(set(models))
    assert 0 < during["prefix_cache_bytes"] <= during["prefix_cache_limit_bytes"]


def test_logprobs_in_openai_shape(tenant) -> None:
    reply = tenant.sdk.chat.completions.create(model=TINY, messages=ASK, temperature=0, max_tokens=5,
                                               logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy takes the best
    streamed = [lp for chunk in tenant.sdk.chat.completions.create(
        model=TINY, messages=ASK, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3, stream=True)
        if chunk.choices and chunk.choices[0].logprobs for lp in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]
    plain = tenant.sdk.chat.completions.create(model=TINY, messages=ASK, max_tokens=2)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as caught:
        tenant.sdk.chat.completions.create(model=TINY, messages=ASK, top_logprobs=21, logprobs=True)
    assert caught.value.body["param"] == "top_logprobs"


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0,
                                                                         "maximum": 99}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_structured_output_parses_and_validates(tenant) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    reply = tenant.sdk.chat.completions.create(model=TINY, messages=ASK, temperature=1.0, seed=4, n=4,
                                               max_tokens=60, response_format=fmt)
    for choice in reply.choices:
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    streamed = "".join(c.choices[0].delta.content or "" for c in tenant.sdk.chat.completions.create(
        model=TINY, messages=ASK, temperature=1.0, seed=4, max_tokens=60, response_format=fmt, stream=True)
        if c.choices)
    jsonschema.validate(json.loads(streamed), PERSON)
    anything = tenant.sdk.chat.completions.create(model=TINY, messages=ASK, temperature=1.0, seed=1,
                                                  max_tokens=80, response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError) as caught:
        tenant.sdk.chat.completions.create(model=TINY, messages=ASK, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "contains": {}}}})
    assert caught.value.body["param"] == "response_format.json_schema.schema"
    assert "contains" in caught.value.body["message"]


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "strict": True, "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}}, "required": ["zone"]}}}
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_calls_round_trip_through_the_sdk(tenant, choice) -> None:
    reply = tenant.sdk.chat.completions.create(model=TINY, messages=WEATHER_ASK, tools=[WEATHER, TIME],
                                               tool_choice=choice, temperature=0, max_tokens=80)
    [call] = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    assert call.id.startswith("call_") and call.type == "function"
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)

    # Streamed: the SDK's accumulator rebuilds the same call from the deltas.
    with tenant.sdk.chat.completions.stream(model=TINY, messages=WEATHER_ASK, tools=[WEATHER, TIME],
                                            tool_choice=choice, temperature=0, max_tokens=80) as stream:
        final = stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)

    # The call and its result go back in as history; the model answers on.
    history = WEATHER_ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    after = tenant.sdk.chat.completions.create(model=TINY, messages=history, tools=[WEATHER, TIME],
                                               tool_choice="none", temperature=0, max_tokens=5)
    assert after.choices[0].message.tool_calls is None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_call_cut_by_max_tokens_comes_back_as_a_call(tenant, choice) -> None:
    """As OpenAI answers: the unfinished arguments in ``tool_calls`` with
    ``finish_reason: "length"``, and no call markup in ``content``."""
    whole = tenant.sdk.chat.completions.create(model=TINY, messages=WEATHER_ASK, tools=[WEATHER, TIME],
                                               tool_choice=choice, temperature=0, max_tokens=80)
    [complete] = whole.choices[0].message.tool_calls
    cut = tenant.sdk.chat.completions.create(model=TINY, messages=WEATHER_ASK, tools=[WEATHER, TIME],
                                             tool_choice=choice, temperature=0, max_tokens=12)
    [call] = cut.choices[0].message.tool_calls
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content is None
    assert call.function.name == complete.function.name
    assert complete.function.arguments.replace(" ", "").startswith(call.function.arguments.replace(" ", ""))
    assert len(call.function.arguments) < len(complete.function.arguments)

    chunks = [c.choices[0] for c in tenant.sdk.chat.completions.create(
        model=TINY, messages=WEATHER_ASK, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=12,
        stream=True) if c.choices]
    assert chunks[-1].finish_reason == "length" and not "".join(c.delta.content or "" for c in chunks)
    [streamed] = [d for c in chunks for d in c.delta.tool_calls or []]
    assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)


def test_auto_tool_choice_answers_text_or_calls_that_parse(tenant) -> None:
    """With ``auto`` the model may answer in text; whatever starts a call is
    held to the call grammar, so sampled answers are text or valid calls."""
    reply = tenant.sdk.chat.completions.create(model=TINY, messages=WEATHER_ASK, tools=[WEATHER, TIME], n=8,
                                               temperature=1.0, seed=2, max_tokens=60)
    for text in texts_checking_calls(reply, [WEATHER, TIME]):
        assert not text.lstrip().startswith("<tool_call>")


def test_a_model_without_a_tool_format_is_refused(make_training_server, tiny_model_dir, tmp_path) -> None:
    plain = tmp_path / "plain-template"
    shutil.copytree(tiny_model_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)  # where transformers 5 saves a template
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"local/tiny": str(tiny_model_dir), "local/plain": str(plain)}))
    server = make_training_server(OPENFT_MODELS_FILE=str(models), OPENFT_WORKER="false")
    try:
        user = Tenant(server, "default", server.api_key)
        assert say(user, "local/plain") is not None  # chat without tools works
        with pytest.raises(openai.BadRequestError) as caught:
            user.sdk.chat.completions.create(model="local/plain", messages=WEATHER_ASK, tools=[WEATHER])
        assert caught.value.body["param"] == "tools" and "local/plain" in caught.value.body["message"]
        assert caught.value.body["code"] == "tools_not_supported"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def narrow(make_training_server) -> Tenant:
    """A server whose engine runs one sequence at a time with one waiting."""
    server = make_training_server(OPENFT_SERVING_MAX_BATCH="1", OPENFT_SERVING_MAX_QUEUE="1", OPENFT_WORKER="false")
    yield Tenant(server, "default", server.api_key)
    server.stop()


class TestCapacity:
    """One sequence at a time and one waiting request: a full queue is a 503
    envelope, a client that leaves frees its slot at once, and every
    generation is bounded by a server-side limit."""

    def wait_for_stats(self, tenant: Tenant, ready, timeout: float = 30) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = engine_stats(tenant)
            if ready(stats):
                return stats
            time.sleep(0.05)  # polling the server's counters for a state, bounded by the deadline
        raise AssertionError(f"engine never reached the state: {engine_stats(tenant)}")

    def test_full_queue_answers_503_and_a_closed_stream_frees_its_slot(self, narrow) -> None:
        say(narrow, TINY)  # the model is loaded
        result: dict[str, str] = {}
        with LongStream(narrow):
            waiting = threading.Thread(target=lambda: result.update(answer=say(narrow, TINY)))
            waiting.start()
            self.wait_for_stats(narrow, lambda s: s["waiting"] == 1)
            refused = httpx.post(f"{narrow.server.url}/v1/chat/completions",
                                 headers={"Authorization": f"Bearer {narrow.key}"},
                                 json={"model": TINY, "messages": ASK, "max_tokens": 2})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "server_overloaded"
            assert "OPENFT_SERVING_MAX_QUEUE" in refused.json()["error"]["message"]
            assert "answer" not in result  # still waiting behind the long stream
        # The stream closed: its slot goes to the waiting request at the next step.
        waiting.join(timeout=60)
        assert result["answer"] == say(narrow, TINY)
        assert engine_stats(narrow)["cancelled"] >= 1

    def test_client_that_times_out_frees_its_slot(self, narrow) -> None:
        say(narrow, TINY)
        cancelled = engine_stats(narrow)["cancelled"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{narrow.server.url}/v1/chat/completions", timeout=1.0,
                       headers={"Authorization": f"Bearer {narrow.key}"},
                       json={"model": TINY, "messages": ASK, "temperature": 1.0, "seed": 3, "max_tokens": 4096})
        self.wait_for_stats(narrow, lambda s: s["cancelled"] > cancelled and s["running"] == 0)
        assert say(narrow, TINY)

    def test_generation_time_limit(self, make_training_server) -> None:
        server = make_training_server(OPENFT_GENERATION_TIMEOUT_SECONDS="0.5", OPENFT_WORKER="false")
        tenant = Tenant(server, "default", server.api_key)
        reply = tenant.sdk.chat.completions.create(
            model=TINY, messages=ASK, temperature=1.0, seed=3, max_tokens=4096)
        assert reply.choices[0].finish_reason == "length"
        assert 0 < reply.usage.completion_tokens < 4096
        server.stop()


def test_unsupported_fields_are_refused_not_ignored(tenant) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        tenant.sdk.chat.completions.create(model=TINY, messages=ASK, presence_penalty=0.5)
    assert caught.value.body["param"] == "presence_penalty"
    assert tenant.sdk.chat.completions.create(model=TINY, messages=ASK, presence_penalty=0, max_tokens=1)

