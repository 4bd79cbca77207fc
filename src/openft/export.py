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
import os
import stat
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


def tar_stream(folder: Path, prefix: str, rewrite: dict[str, bytes] | None = None) -> Iterator[bytes]:
    """The regular files of ``folder`` as an uncompressed tar under ``prefix/``;
    ``rewrite`` replaces the content of the named files. Symbolic links (to
    files or folders), devices and pipes are left out, and each file is
    opened without following a link, so nothing outside ``folder`` can be
    read through it."""
    rewrite = rewrite or {}
    for path in regular_files(folder):
        relative = path.relative_to(folder).as_posix()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # replaced by a link (or removed) since it was listed
            continue
        with os.fdopen(fd, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                continue
            info = tarfile.TarInfo(f"{prefix}/{relative}")
            replaced = rewrite.get(relative)
            info.size = len(replaced) if replaced is not None else status.st_size
            info.mtime, info.mode = int(status.st_mtime), 0o644
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            if replaced is not None:
                yield replaced
            else:
                left = info.size  # exactly the size in the header, even if the file grows meanwhile
                while left and (piece := handle.read(min(CHUNK, left))):
                    left -= len(piece)
                    yield piece
                if left:  # it shrank: pad to the size the header promised
                    yield b"\0" * left
        if remainder := info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - remainder)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def regular_files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` (not hidden ones), sorted, found without
    following any symbolic link."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and stat.S_ISREG(path.lstat().st_mode):
                found.append(path)
    return sorted(found)


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
