"""Model families: what openft knows of the architectures users bring, and
what a registered base model supports, read from its folder.

One registry serves three readers: the jobs API (a combination a model
cannot train is a 400 at create time, naming the model and the reason),
``/v1/models`` and ``openft models add`` (what a model supports, and why
not), and ``make docs`` (the table in ``docs/reference/model-families.md``).
The suite builds a tiny random model of every family in :data:`FAMILIES`.

The API side reads only ``config.json``, the chat template and safetensors
headers (no torch). The training side adds two choices made on the loaded
model: :func:`attention_implementation` (what the architecture supports,
fastest first) and :func:`lora_targets` (every linear layer but the output
head and MoE routers, plus the fused expert weights of a mixture-of-experts
model through PEFT's ``target_parameters``; PEFT applies those without
dropout, so such a model's ``lora_dropout`` resolves to 0
(``hyperparameters.resolve(experts=True)``) and :func:`refusal` refuses
another value).

What the serving engine does for each layout is in
:mod:`openft.serving.engine`: sliding-window and hybrid attention run on a
full-layer cache, adapters on expert weights one pass per adapter. Models
whose decoder keeps recurrent state (Mamba or linear-attention layers) are
not served: the engine batches attention caches only.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openft import tool_format

if TYPE_CHECKING:
    import torch

    from openft.ml_types import Model


@dataclass(frozen=True)
class Family:
    """A family openft has shown end to end (the suite trains and serves a
    tiny random model of each)."""

    name: str
    model_type: str  # config.json's model_type
    traits: tuple[str, ...] = ()  # layout features the engine and trainer handle
    tools: str = "none"  # the tool-call convention of the family's published chat template
    reasoning: str = "none"  # how its published template shows reasoning (tool_format.reasoning_style)


FAMILIES: tuple[Family, ...] = (
    Family("Llama 3.x / SmolLM2", "llama", tools="llama3_json"),
    Family("Qwen2 / Qwen2.5", "qwen2", tools="hermes"),
    Family("Qwen3", "qwen3", ("qk-norm",), tools="hermes", reasoning="think"),
    Family("Qwen3-MoE", "qwen3_moe", ("moe",), tools="hermes", reasoning="think"),
    Family("Mistral", "mistral", ("sliding-window",), tools="mistral"),
    Family("Mixtral", "mixtral", ("moe",), tools="mistral"),
    Family("Phi-3 / Phi-4", "phi3", ("fused-projections",)),
    Family("OLMo 2", "olmo2", ("qk-norm",)),
    Family("SmolLM3", "smollm3", ("nope-layers",), tools="hermes", reasoning="think"),
    Family("GLM-4", "glm4", ("fused-projections",), tools="glm4"),
    Family("Gemma 2", "gemma2", ("sliding-window", "soft-capping")),
    Family("Gemma 3", "gemma3_text", ("sliding-window", "hybrid-cache")),
    Family("gpt-oss", "gpt_oss", ("moe", "sliding-window", "attention-sinks"), tools="harmony",
           reasoning="harmony"),
)
BY_TYPE = {f.model_type: f for f in FAMILIES}

RECURRENT_LAYERS = frozenset({"linear_attention", "mamba", "mamba2", "conv", "recurrent", "rwkv"})
"""``layer_types`` whose state is not a key/value cache (hybrid recurrent models)."""

BYTES_PER_PARAMETER = {"lora": 4, "full": 16}
"""Training keeps fp32 weights (bf16 autocast on a GPU); a full fine-tune adds
fp32 gradients and AdamW's two moments. Activations come on top."""


@dataclass(frozen=True)
class Capabilities:
    """What one base model supports, and why not where it does not."""

    model: str
    architecture: str
    model_type: str
    family: str | None  # the registry's name; None: an architecture the suite has not shown
    context_length: int | None
    parameters: int | None
    traits: tuple[str, ...]
    methods: tuple[str, ...]  # "supervised", "dpo", "reinforcement"
    training_types: tuple[str, ...]  # "lora", "full"
    serving: bool
    tool_format: str  # "hermes", "none", ... (from the chat template)
    reasoning: str  # "think" (<think> blocks), "harmony" (gpt-oss's analysis channel) or "none"
    refusals: dict[str, str] = field(default_factory=dict)  # what -> why not
    memory_bytes: dict[str, int] = field(default_factory=dict)  # training type -> weights + optimizer state

    @property
    def experts(self) -> bool:
        return "moe" in self.traits

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture, "model_type": self.model_type, "family": self.family,
            "context_length": self.context_length, "parameters": self.parameters, "traits": list(self.traits),
            "methods": list(self.methods), "training_types": list(self.training_types),
            "serving": self.serving, "tool_format": self.tool_format, "reasoning": self.reasoning,
            "refusals": dict(self.refusals), "training_memory_bytes": dict(self.memory_bytes),
        }


class UnreadableModel(Exception):
    """The folder's config.json or weights' headers cannot be read."""


def describe(model_id: str, folder: Path) -> Capabilities:
    """The capabilities of the model in ``folder`` (a Hugging Face folder);
    :class:`UnreadableModel` when its files cannot be read (the job that
    loads it fails with ``model_load_failed``, as before)."""
    try:
        return _describe(model_id, folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error, MemoryError, OverflowError,
            RecursionError) as exc:
        raise UnreadableModel(f"cannot read the model folder {folder}: {exc}") from exc


def _describe(model_id: str, folder: Path) -> Capabilities:
    config = json.loads((folder / "config.json").read_text())
    if not isinstance(config, dict):
        raise ValueError("config.json is not an object")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    model_type = str(text.get("model_type") or config.get("model_type") or "unknown")
    family = BY_TYPE.get(model_type)
    traits = list(family.traits) if family else []
    layer_types = set(text.get("layer_types") or [])
    if (text.get("num_experts") or text.get("num_local_experts")) and "moe" not in traits:
        traits.append("moe")
    if layer_types & RECURRENT_LAYERS:
        traits.append("recurrent-layers")
    refusals: dict[str, str] = {}
    serving = "recurrent-layers" not in traits
    methods = ["supervised", "dpo"]
    if serving:
        methods.append("reinforcement")
    else:
        reason = (f"its decoder has recurrent layers ({', '.join(sorted(layer_types & RECURRENT_LAYERS))}), "
                  "and openft's serving engine batches attention caches only")
        refusals["serving"] = reason
        refusals["reinforcement"] = "reinforcement fine-tuning samples through the serving engine, and " + reason
    if "moe" in traits:
        refusals["lora_dropout"] = ("LoRA on its fused expert weights (PEFT's target_parameters) has no dropout, "
                                    "so lora_dropout must be 0 (the default for this model)")
    template = chat_template(folder)
    parameters = parameter_count(folder)
    return Capabilities(
        model=model_id,
        architecture=str((config.get("architectures") or [model_type])[0]),
        model_type=model_type,
        family=family.name if family else None,
        context_length=_count(text.get("max_position_embeddings")),
        parameters=parameters,
        traits=tuple(traits),
        methods=tuple(methods),
        training_types=("lora", "full"),
        serving=serving,
        tool_format=tool_format.convention_name(template),
        reasoning={"native": "think"}.get(style := tool_format.reasoning_style(template), style),
        refusals=refusals,
        memory_bytes={kind: parameters * size for kind, size in BYTES_PER_PARAMETER.items()} if parameters else {},
    )


def _count(value: Any) -> int | None:
    """A config value that should be a count, or None when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def refusal(capabilities: Capabilities, method: str, hyperparameters: dict[str, Any]) -> tuple[str | None, str] | None:
    """(the hyperparameter at fault or None for the method, reason) when a
    job of ``method`` with ``hyperparameters`` cannot run on the model;
    None when it can."""
    if method not in capabilities.methods:
        return None, capabilities.refusals.get(method, f"it does not support {method} fine-tuning")
    dropout = hyperparameters.get("lora_dropout")
    if capabilities.experts and dropout not in (None, "auto", 0, 0.0) and \
            hyperparameters.get("training_type") in (None, "auto", "lora"):
        return "lora_dropout", capabilities.refusals["lora_dropout"]
    return None


def chat_template(folder: Path) -> str | None:
    """The chat template a tokenizer in ``folder`` would use (file or config)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(value, list):  # named templates: the default one
        value = next((t.get("template") for t in value if t.get("name") == "default"), None)
    return value if isinstance(value, str) else None


def parameter_count(folder: Path) -> int | None:
    """Parameters in the folder's safetensors files, from their headers only."""
    total, files = 0, sorted(folder.glob("*.safetensors"))
    for path in files:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > min(path.stat().st_size - 8, 100 * 2**20):  # not a safetensors file (an LFS pointer, say)
                raise ValueError(f"{path.name} is not a safetensors file")
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    if _count(dim) is None:
                        raise ValueError(f"{path.name}: tensor {name} has a shape that is not integers")
                    count *= dim
                total += count
    return total or None


# ------------------------------------------------------------ training side
def attention_implementation(model_class: type, device: torch.device) -> str:
    """The fastest attention the architecture supports: FlashAttention 2 on a
    GPU where the package is installed (not for attention sinks, which need
    gpt-oss's own kernels), then PyTorch's SDPA, then eager (Gemma 2's
    soft-capping, gpt-oss's sinks)."""
    sinks = getattr(model_class, "__name__", "").startswith("GptOss")
    if device.type == "cuda" and not sinks and getattr(model_class, "_supports_flash_attn", False) \
            and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if getattr(model_class, "_supports_sdpa", False):
        return "sdpa"
    return "eager"


def lora_targets(model: Model) -> tuple[list[str], list[str]]:
    """(module names, parameter names) for LoRA: every ``nn.Linear`` but the
    output head and MoE routers, and the 3-D fused expert weights."""
    import torch

    head = model.get_output_embeddings()
    modules: set[str] = set()
    parameters: set[str] = set()
    for name, module in model.named_modules():
        parent_name, _, leaf = name.rpartition(".")
        if isinstance(module, torch.nn.Linear) and module is not head:
            parent = model.get_submodule(parent_name)
            if not (leaf in ("gate", "router") and hasattr(parent, "experts")):  # a router keeps the base's choices
                modules.add(leaf)
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() == 3 and leaf == "experts":
                parameters.add(f"experts.{param_name}")
    return sorted(modules), sorted(parameters)


def has_fused_experts(model: Model) -> bool:
    return bool(lora_targets(model)[1])
