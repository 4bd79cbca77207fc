"""The README's examples run as printed against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from support import REPO, Tenant

pytestmark = pytest.mark.api

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_quick_start(tenant: Tenant) -> None:
    code = blocks("python")[0].replace("http://127.0.0.1:8000", tenant.server.url)
    env = {**os.environ, "OPENFT_API_KEY": tenant.key}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ftjob-\w+ queued$", result.stdout, flags=re.M)
    assert "Created fine-tuning job: ftjob-" in result.stdout


def test_curl_quick_start(tenant: Tenant) -> None:
    [curl] = [b for b in blocks("bash") if "curl -s http://127.0.0.1:8000/v1/files" in b]
    upload, create = curl.strip().split("\n\n")
    env = {**os.environ, "OPENFT_API_KEY": tenant.key}
    run = lambda cmd: subprocess.run(  # noqa: E731
        ["bash", "-c", cmd.replace("http://127.0.0.1:8000", tenant.server.url)],
        cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    file_id = re.search(r'"id":"(file-\w+)"', run(upload)).group(1)
    created = run(create.replace("file-...", file_id))
    assert '"status":"queued"' in created
