"""Loss masks and padding-free packing on the bundled tokenizer and a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft.training.data import IGNORE, pack, tokenize

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def labelled_text(tokenizer, example) -> str:
    pairs = zip(example.input_ids, example.labels, strict=True)
    return tokenizer.decode([token for token, label in pairs if label != IGNORE])


def lines(*examples) -> list[str]:
    return [json.dumps(e) for e in examples]


class TestLabels:
    def test_only_assistant_turns_carry_loss(self, tokenizer) -> None:
        [example], _ = tokenize(tokenizer, lines({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]}), max_seq_length=512)
        assert labelled_text(tokenizer, example) == "Paris.<|im_end|>\n"

    def test_weight_zero_turns_carry_no_loss(self, tokenizer) -> None:
        [example], _ = tokenize(tokenizer, lines({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Wrong answer", "weight": 0},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Right answer"},
        ]}), max_seq_length=512)
        assert labelled_text(tokenizer, example) == "Right answer<|im_end|>\n"
        assert "Wrong answer" in tokenizer.decode(example.input_ids)  # still context

    def test_tool_calls_carry_loss_as_the_model_writes_them(self, tokenizer) -> None:
        from openft.tool_format import parse_tool_calls

        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]
        call = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        [example], _ = tokenize(tokenizer, lines({"tools": tools, "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
            {"role": "assistant", "content": "It is 21 C."},
        ]}), max_seq_length=512)
        learned = labelled_text(tokenizer, example)
        first, second = learned.split("<|im_end|>\n", 1)
        [parsed] = parse_tool_calls(first, {"get_weather"})  # what serving will read back
        assert (parsed.name, json.loads(parsed.arguments)) == ("get_weather", {"city": "Oslo"})
        assert second == "It is 21 C.<|im_end|>\n"
        context = tokenizer.decode(example.input_ids)
        assert "<tools>" in context and '"name": "get_weather"' in context  # the signatures, in the system turn
        assert "<tool_response>\n21 C\n</tool_response>" in context  # the result, not learned

    def test_tools_on_a_template_without_a_tool_format_name_the_line(self, tokenizer) -> None:
        from copy import copy

        from openft.training.data import DataError

        plain = copy(tokenizer)
        plain.chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
        example = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}
        with pytest.raises(DataError, match="Line 2: has tools or tool calls"):
            tokenize(plain, ["", json.dumps(example)], max_seq_length=512)

    def test_prompt_completion(self, tokenizer) -> None:
        [example], _ = tokenize(tokenizer, lines({"prompt": "2+2=", "completion": " 4"}), max_seq_length=512)
        assert labelled_text(tokenizer, example) == " 4" + tokenizer.eos_token

    def test_truncation_names_the_lines(self, tokenizer) -> None:
        long = {"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok " * 50}]}
        short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
        examples, truncated = tokenize(tokenizer, ["", json.dumps(short), json.dumps(long)], max_seq_length=340)
        assert truncated == [3]
        assert len(examples[1].input_ids) == 340


class TestPacking:
    def test_packed_logits_equal_unpadded(self, tokenizer, tiny_model_dir) -> None:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        examples, _ = tokenize(tokenizer, lines(*[
            {"messages": [{"role": "user", "content": "x " * n}, {"role": "assistant", "content": "y " * (n + 3)}]}
            for n in (3, 17, 8)
        ]), max_seq_length=512)
        row = pack(examples)
        assert row["input_ids"].shape[1] == sum(len(e.input_ids) for e in examples)  # no padding
        with torch.no_grad():
            packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits[0]
            start = 0
            for example in examples:
                alone = model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]
                torch.testing.assert_close(packed[start:start + len(example.input_ids)], alone, atol=1e-5, rtol=1e-4)
                start += len(example.input_ids)

    def test_no_label_crosses_an_example_boundary(self, tokenizer) -> None:
        examples, _ = tokenize(tokenizer, lines(*[{"prompt": "a", "completion": "b"}] * 3), max_seq_length=64)
        row = pack(examples)
        starts = [i for i, p in enumerate(row["position_ids"][0].tolist()) if p == 0]
        assert all(row["labels"][0, s] == IGNORE for s in starts)
