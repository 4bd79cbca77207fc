"""The bundled model's one-time conversion from GGUF to safetensors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from openft.weights import MARKER, _gguf_read_once, bundled_gguf

pytestmark = pytest.mark.training


def test_models_pull_converts_the_bundled_model_faithfully(bundled_model_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = bundled_model_dir
    assert (folder / MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert "dequantizing" in folder.with_name("pull-output.txt").read_text().lower()  # progress shown

    gguf = bundled_gguf()
    with _gguf_read_once():  # the file parsed once, as the conversion does (bit-identical results)
        reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits)

    home = folder.parent.parent
    again = subprocess.run([sys.executable, "-m", "openft", "models", "pull"],
                           env={**os.environ, "OPENFT_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "dequantizing" not in again.stderr.lower()  # converted once
