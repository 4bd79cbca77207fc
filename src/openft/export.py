"""Weights out: a fine-tuned model or checkpoint as a Hugging Face folder,
streamed as a tar archive.

* A LoRA model exports as its adapter folder (``adapter_config.json``,
  ``adapter_model.safetensors``, the tokenizer), with
  ``base_model_name_or_path`` set to the base model's id, so
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)``
  loads it anywhere the base is.
* ``merged``: the adapter folded into the base weights
  (``merge_and_unload``), a plain transformers folder. The merge runs in a
  child process (``python -m openft.export BASE ADAPTER OUT``), so the API
  process neither imports torch nor holds a second copy of the weights.
* A full fine-tune is already a plain folder; ``merged`` changes nothing.

The archive is written as it is read: a tar header, then the file in 1 MiB
pieces, so memory stays flat whatever the model's size.
"""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


def tar_stream(folder: Path, prefix: str, rewrite: dict[str, bytes] | None = None) -> Iterator[bytes]:
    """The files of ``folder`` as an uncompressed tar under ``prefix/``;
    ``rewrite`` replaces the content of the named files."""
    rewrite = rewrite or {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = path.relative_to(folder).as_posix()
        info = tarfile.TarInfo(f"{prefix}/{relative}")
        replaced = rewrite.get(relative)
        info.size = len(replaced) if replaced is not None else path.stat().st_size
        info.mtime, info.mode = int(path.stat().st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        if replaced is not None:
            yield replaced
        else:
            with path.open("rb") as handle:
                while piece := handle.read(CHUNK):
                    yield piece
        if remainder := info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - remainder)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def adapter_config(adapter: Path, base_model: str) -> bytes:
    """The adapter's config with the base model named by its id, not by the
    training machine's folder."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_model
    return json.dumps(config, indent=2).encode()


def merge(base: Path, adapter: Path, out: Path) -> None:
    """Fold the LoRA adapter into the base weights and save a plain folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)


if __name__ == "__main__":  # python -m openft.export BASE ADAPTER OUT
    merge(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
