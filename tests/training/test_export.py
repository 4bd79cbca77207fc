"""Weights out: a fine-tuned model or checkpoint exports as a Hugging Face
folder (route and ``openft models export``), loads in plain transformers +
PEFT, and answers exactly as openft serves it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import httpx
import pytest
import torch

from support import REPO, Tenant, chat_file
from test_jobs_train import TINY, wait_for

pytestmark = pytest.mark.training

QUESTIONS = ["Question number 1?", "Question number 7?"]


@pytest.fixture(scope="module")
def tuned(training_server) -> tuple[Tenant, object]:
    """A LoRA job that learnt its answers well (so greedy output is decided by the training)."""
    tenant = Tenant(training_server, "default", training_server.api_key)
    data = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(
        model=TINY, training_file=data, suffix="export", seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 12, "batch_size": 5, "learning_rate_multiplier": 20}}})
    done = wait_for(tenant, job.id, {"succeeded", "failed"})
    assert done.status == "succeeded", done.error
    return tenant, done


def served(tenant: Tenant, model: str) -> list[str]:
    return [tenant.sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=8,
    ).choices[0].message.content for q in QUESTIONS]


def generated(model, tokenizer) -> list[str]:
    answers = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


def export(server, model: str, directory, *extra: str) -> dict:
    env = {**server.env, "OPENFT_BASE_URL": f"{server.url}/v1", "OPENFT_API_KEY": server.api_key}
    result = subprocess.run([sys.executable, "-m", "openft", "models", "export", model, str(directory), *extra,
                             "--json"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_lora_export_loads_in_transformers_and_peft_and_answers_as_served(tuned, tmp_path, tiny_model_dir) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tenant, job = tuned
    expected = served(tenant, job.fine_tuned_model)
    assert all(a.startswith("Answer") for a in expected)  # the training decides the greedy answer

    shown = export(tenant.server, job.fine_tuned_model, tmp_path / "adapter")
    assert shown["kind"] == "adapter"
    folder = tmp_path / "adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY  # the base's id, not the server's folder
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, folder).eval()
    assert generated(model, AutoTokenizer.from_pretrained(folder)) == expected

    merged = tmp_path / "merged"
    assert export(tenant.server, job.fine_tuned_model, merged, "--merged")["kind"] == "merged"
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert generated(plain, AutoTokenizer.from_pretrained(merged)) == expected


def test_the_export_route_streams_a_tar_of_a_checkpoint(tuned) -> None:
    tenant, job = tuned
    checkpoint = tenant.sdk.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    with tenant.http() as http:
        response = http.get(f"/models/{checkpoint}/export")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-tar"
        assert response.headers["content-disposition"].startswith('attachment; filename="ft_local_tiny_default_export_')
        names = tarfile.open(fileobj=io.BytesIO(response.content)).getnames()
        assert {n.split("/", 1)[1] for n in names} >= {"adapter_config.json", "adapter_model.safetensors",
                                                        "tokenizer.json"}

        assert http.get(f"/models/{TINY}/export").json()["error"]["code"] == "model_not_exportable"
        missing = http.get("/models/ft:local/tiny:default::nothing/export")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    stranger = httpx.get(f"{tenant.server.url}/v1/models/{job.fine_tuned_model}/export",
                         headers={"Authorization": f"Bearer {tenant.server.new_key('stranger')}"})
    assert stranger.status_code == 404 and stranger.json()["error"]["param"] == "model"
