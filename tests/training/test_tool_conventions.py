"""Tool calls in each family's own convention (Hermes, Llama 3.x JSON,
Mistral), detected from the chat template: a training file puts the loss on
exactly the call as the template writes it, and a served model's calls come
back as ``tool_calls``, streamed and not, with ``tool_choice`` auto, required
and named, also when ``max_tokens`` cuts them. And reasoning (Qwen3's
``<think>``): ``reasoning_content`` round-trips through training and serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import openai
import pytest
from test_rft import in_process

from openft import tool_format
from openft.training.data import IGNORE, DataError, chat_example

from support import (
    LLAMA3_TEMPLATE,
    MISTRAL_TEMPLATE,
    QWEN3_TEMPLATE,
    Server,
    Tenant,
    build_harmony_model,
    bundled_tokenizer,
    harmony_tokenizer,
    texts_checking_calls,
    with_chat_template,
)

pytestmark = pytest.mark.training

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}

MARKERS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]", "[TOOL_CALLS]",
           "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"]
"""Control tokens of the Llama 3 and Mistral tokenizers (the bundled one reads them as text)."""

CONVENTIONS = {
    # convention: (template or None for the bundled ChatML one, the call as the model writes it, end of turn)
    "hermes": (None, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
               "<|im_end|>"),
    "llama3_json": (LLAMA3_TEMPLATE, '{"name": "get_weather", "parameters": {"city": "Oslo"}}', "<|eot_id|>"),
    "mistral": (MISTRAL_TEMPLATE, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}]',
                "<|im_end|>"),
}


def tokenizer_with(template: str | None, *, markers: bool = False):  # type: ignore[no-untyped-def]
    import copy

    tokenizer = copy.deepcopy(bundled_tokenizer())
    if template is not None:
        tokenizer.chat_template = template
    if markers:  # as the families' own tokenizers have them: a turn's tokens start where its text does
        tokenizer.add_special_tokens({"additional_special_tokens": MARKERS})
    return tokenizer


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_training_puts_the_loss_on_exactly_the_call_as_the_template_writes_it(convention: str) -> None:
    template, call, end = CONVENTIONS[convention]
    tokenizer = tokenizer_with(template, markers=True)
    assert tool_format.convention_of(tokenizer).name == convention
    example = chat_example(tokenizer, {"messages": [*ASK, {"role": "assistant", "content": None,
                                                           "tool_calls": [CALL]}], "tools": [WEATHER]}, 1)
    labelled = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True)
                                 if label != IGNORE])
    assert labelled.strip() == call + end
    parsed = tool_format.convention_of(tokenizer).parse(call, {"get_weather"})
    assert parsed is not None and [(c.name, json.loads(c.arguments)) for c in parsed] == [
        ("get_weather", {"city": "Oslo"})]


def test_a_template_without_a_tool_convention_names_its_refusal() -> None:
    tokenizer = tokenizer_with("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    assert tool_format.convention_name(tokenizer.chat_template) == "none"
    with pytest.raises(tool_format.ToolFormatError):
        tool_format.template_input(tokenizer, ASK, [WEATHER])


@pytest.fixture(scope="module")
def served(training_server: Server, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Tenant:
    """The tiny model registered once per convention (``openft models add``)."""
    root = tmp_path_factory.mktemp("conventions")
    for convention, (template, _, _) in CONVENTIONS.items():
        if template is not None:
            folder = with_chat_template(tiny_model_dir, root / convention, template)
            added = subprocess.run([sys.executable, "-m", "openft", "models", "add", f"local/{convention}",
                                    str(folder)], env=training_server.env, capture_output=True, text=True,
                                   timeout=120)
            assert added.returncode == 0 and f"tools: {convention}" in added.stdout, added.stdout + added.stderr
    return Tenant(training_server, "conventions", training_server.new_key("conventions"))


def model_of(convention: str) -> str:
    from test_jobs_train import TINY

    return TINY if CONVENTIONS[convention][0] is None else f"local/{convention}"


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_served_calls_come_back_as_tool_calls_in_each_convention(served: Tenant, convention: str) -> None:
    model, schemas = model_of(convention), {"get_weather": WEATHER, "get_time": TIME}
    assert served.sdk.models.retrieve(model).model_extra["capabilities"]["tool_format"] == convention
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        reply = served.sdk.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],
                                                   tool_choice=choice, temperature=0, max_tokens=200)
        [call] = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name]["function"]["parameters"])

        chunks = [c.choices[0] for c in served.sdk.chat.completions.create(
            model=model, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=200,
            stream=True) if c.choices]
        [streamed] = [d for c in chunks for d in c.delta.tool_calls or []]
        assert chunks[-1].finish_reason == "tool_calls"
        assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)

        cut = served.sdk.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],
                                                 tool_choice=choice, temperature=0, max_tokens=9)
        assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content is None
        partial = cut.choices[0].message.tool_calls or []  # none when cut before the name is certain
        if choice == named:  # the name is certain from the first token
            assert [c.function.name for c in partial] == ["get_weather"]
        assert all(c.function.name in schemas and call.function.arguments.replace(" ", "").startswith(
            c.function.arguments.replace(" ", "")) for c in partial if c.function.name == call.function.name)

    # auto: text that does not start a call, or calls that parse (sampled, eight answers)
    reply = served.sdk.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME], n=8,
                                               temperature=1.0, seed=2, max_tokens=40)
    for text in texts_checking_calls(reply, [WEATHER, TIME]):
        assert tool_format.CONVENTIONS[convention].parse(text, set(schemas)) is None


# ------------------------------------------------------------------ reasoning
THOUGHT, ANSWER = "I add two and two.", "Four."
REASONED = {"messages": [{"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT}]}


def test_reasoning_is_trained_the_templates_way_or_refused() -> None:
    tokenizer = tokenizer_with(QWEN3_TEMPLATE)
    example = chat_example(tokenizer, REASONED, 1)
    labelled = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True)
                                 if label != IGNORE])
    assert labelled == f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}<|im_end|>"
    with pytest.raises(DataError) as refused:  # the bundled ChatML template has no place for reasoning
        chat_example(tokenizer_with(None), REASONED, 3)
    assert refused.value.code == "invalid_reasoning" and "Line 3" in str(refused.value)


def teach_to_think(served: Tenant, base: Path, tmp_path: Path, model_id: str) -> str:
    """Fully fine-tune ``base`` until it answers REASONED word for word (50
    steps), register it as ``model_id``; what ``openft models add`` printed."""
    job = "ftjob-" + model_id.rpartition("/")[2]
    in_process(tmp_path, job, {"id": model_id, "kind": "local", "path": str(base)},
               [REASONED] * 200, None, {"type": "supervised", "supervised": {"hyperparameters": {
                   "n_epochs": 1, "batch_size": 4, "training_type": "full", "learning_rate_multiplier": 300.0}}})
    added = subprocess.run([sys.executable, "-m", "openft", "models", "add", model_id,
                            str(tmp_path / "blobs" / "models" / job)],
                           env=served.server.env, capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stdout + added.stderr
    return added.stdout


def test_reasoning_content_round_trips_through_training_and_serving(
    served: Tenant, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A model taught to think before answering: its thinking comes back in
    ``reasoning_content`` and only the answer in ``content``, streamed and
    not; ``reasoning_effort: "none"`` turns the thinking off."""
    base = with_chat_template(tiny_model_dir, tmp_path / "qwen3-style", QWEN3_TEMPLATE)
    assert "reasoning: think" in teach_to_think(served, base, tmp_path, "local/thinker")

    ask = REASONED["messages"][:1]
    reply = served.sdk.chat.completions.create(model="local/thinker", messages=ask, temperature=0, max_tokens=40)
    message = reply.choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == (THOUGHT, ANSWER)

    chunks = [c.choices[0].delta for c in served.sdk.chat.completions.create(
        model="local/thinker", messages=ask, temperature=0, max_tokens=40, stream=True) if c.choices]
    streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in chunks)
    assert (streamed, "".join(d.content or "" for d in chunks)) == (THOUGHT, ANSWER)

    off = served.sdk.chat.completions.create(model="local/thinker", messages=ask, temperature=0, max_tokens=8,
                                             reasoning_effort="none")
    assert off.choices[0].message.model_extra["reasoning_content"] is None
    assert "<think>" not in (off.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError) as refused:
        served.sdk.chat.completions.create(model="local/thinker", messages=ask, reasoning_effort="high")
    assert refused.value.body["param"] == "reasoning_effort"


# -------------------------------------------------------------------- harmony
def test_harmony_training_labels_cover_the_channels_the_model_writes() -> None:
    tokenizer = harmony_tokenizer()
    assert tool_format.convention_of(tokenizer).name == "harmony"
    assert tool_format.reasoning_style(tokenizer.chat_template) == "harmony"
    expected = {
        "answer": (REASONED, f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
                             f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>"),
        "call": ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
                  "tools": [WEATHER]},
                 '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}<|call|>'),
    }
    for example, labelled in expected.values():
        tokens = chat_example(tokenizer, example, 1)
        assert tokenizer.decode([t for t, label in zip(tokens.input_ids, tokens.labels, strict=True)
                                 if label != IGNORE]) == labelled


def test_a_harmony_model_answers_thinks_and_calls_through_its_channels(
    served: Tenant, tmp_path: Path
) -> None:
    """A tiny gpt-oss taught to think on the analysis channel and answer on
    the final one: the thinking comes back as ``reasoning_content``, the
    answer as ``content``; forced calls go out on the commentary channel and
    come back as ``tool_calls``, streamed and not, also when cut."""
    assert "tools: harmony" in teach_to_think(served, build_harmony_model(tmp_path / "gpt-oss"), tmp_path,
                                              "local/harmony")

    ask = REASONED["messages"][:1]
    message = served.sdk.chat.completions.create(model="local/harmony", messages=ask, temperature=0,
                                                 max_tokens=40).choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == (THOUGHT, ANSWER)
    chunks = [c.choices[0].delta for c in served.sdk.chat.completions.create(
        model="local/harmony", messages=ask, temperature=0, max_tokens=40, stream=True) if c.choices]
    assert ("".join((d.model_extra or {}).get("reasoning_content") or "" for d in chunks),
            "".join(d.content or "" for d in chunks)) == (THOUGHT, ANSWER)

    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        reply = served.sdk.chat.completions.create(model="local/harmony", messages=ASK, tools=[WEATHER, TIME],
                                                   tool_choice=choice, temperature=0, max_tokens=200)
        [call] = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
        schema = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)
        chunks = [c.choices[0] for c in served.sdk.chat.completions.create(
            model="local/harmony", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice, temperature=0,
            max_tokens=200, stream=True) if c.choices]
        [streamed] = [d for c in chunks for d in c.delta.tool_calls or []]
        assert chunks[-1].finish_reason == "tool_calls" and not "".join(c.delta.content or "" for c in chunks)
        assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
    # auto: no grammar (the model may think first); answers are text or calls that parse, never channel markup
    for choice in served.sdk.chat.completions.create(model="local/harmony", messages=ASK, tools=[WEATHER, TIME], n=4,
                                                     temperature=1.0, seed=3, max_tokens=30).choices:
        assert "<|" not in (choice.message.content or "") and "<|" not in (
            choice.message.model_extra.get("reasoning_content") or "")
        for call in choice.message.tool_calls or []:
            json.loads(call.function.arguments)
    cut = served.sdk.chat.completions.create(model="local/harmony", messages=ASK, tools=[WEATHER, TIME],
                                             tool_choice="required", temperature=0, max_tokens=12)
    [partial] = cut.choices[0].message.tool_calls
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content is None
    assert partial.function.name in ("get_weather", "get_time")


def test_hostile_conversations_are_400s_or_plain_data(served: Tenant, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Call ids and results are data to a template, never template code; a
    template's own refusal (``raise_exception``) is a 400 naming it; reasoning
    on a user's turn is refused, not dropped."""
    hostile = "{{ 7*7 }}{% raise %}" * 500
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{**CALL, "id": hostile}]},
               {"role": "tool", "tool_call_id": hostile, "content": "{{ 7*7 }} \u0000 " * 200}]
    for model in ("local/mistral", "local/llama3_json"):
        reply = served.http().post("/chat/completions", json={
            "model": model, "messages": history, "tools": [WEATHER], "max_tokens": 2, "temperature": 0})
        assert reply.status_code == 200, reply.text

    strict = with_chat_template(tiny_model_dir, tmp_path / "strict", (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System messages are not "
        "supported.') }}{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"))
    subprocess.run([sys.executable, "-m", "openft", "models", "add", "local/strict", str(strict)],
                   env=served.server.env, capture_output=True, check=True, timeout=120)
    refused = served.http().post("/chat/completions", json={
        "model": "local/strict", "messages": [{"role": "system", "content": "x"}, *ASK]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_messages"
    assert "System messages are not supported" in refused.json()["error"]["message"]

    reasoning_user = served.http().post("/chat/completions", json={
        "model": "local/strict", "messages": [{**ASK[0], "reasoning_content": "no"}]})
    assert reasoning_user.status_code == 400 and "reasoning_content" in reasoning_user.text
