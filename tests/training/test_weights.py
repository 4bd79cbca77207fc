"""The bundled model's one-time conversion from GGUF to safetensors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from openft.weights import BUNDLED_MODEL, MARKER, bundled_gguf, cache_folder

pytestmark = pytest.mark.training


def test_models_pull_converts_the_bundled_model_faithfully(tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = {"OPENFT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "openft", "models", "pull"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    folder = cache_folder(tmp_path / "models", BUNDLED_MODEL)
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert "Dequantizing" in result.stderr or "dequantizing" in result.stderr  # progress shown

    gguf = bundled_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits)

    again = subprocess.run([sys.executable, "-m", "openft", "models", "pull"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "dequantizing" not in again.stderr.lower()  # converted once
