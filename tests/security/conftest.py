"""Fixtures of the security tier: one ``openft serve`` with two organisations,
an attacker and a victim. The victim has data an escape would reach for (an
uploaded file, a webhook endpoint with its signing secret, its key); after
every test the server must be healthy and the victim's data unchanged.

The server runs with short limits so that each hostile case ends quickly:
python graders get 3 s a call, 1.5 s of CPU and 512 MiB; a request body
that stalls for 2 s is refused; grader runs are capped at 4, 2 a tenant.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require
from support import Server, Tenant

SECURITY_ENV = {
    "OPENFT_PYTHON_GRADER_TIMEOUT_SECONDS": "3",
    "OPENFT_PYTHON_GRADER_CPU_SECONDS": "1.5",
    "OPENFT_PYTHON_GRADER_MEMORY_MB": "512",
    "OPENFT_BODY_TIMEOUT_SECONDS": "2",
    "OPENFT_GRADER_CONCURRENCY": "4",
    "OPENFT_GRADER_CONCURRENCY_PER_ORG": "2",
    "OPENFT_WEBHOOKS_ALLOW_PRIVATE": "false",
}
VICTIM_FILE = b"".join(json.dumps({"messages": [
    {"role": "user", "content": f"secret question {i}"},
    {"role": "assistant", "content": f"secret answer {i}"}]}).encode() + b"\n" for i in range(10))


@dataclass
class Victim:
    tenant: Tenant
    file_id: str
    file_path: Path
    """Where the file's bytes lie in the server's blob folder."""
    webhook_id: str
    files_digest: str

    def state(self) -> tuple[int, str, list[str], list[str]]:
        """What an attack must not change: the key works, the file's bytes, the
        file list and the webhook endpoints."""
        with self.tenant.http() as http:
            me = http.get("/me")
            content = http.get(f"/files/{self.file_id}/content").content
            files = sorted(f["id"] for f in http.get("/files").json()["data"])
            hooks = sorted(h["id"] for h in http.get("/webhook_endpoints").json()["data"])
        return me.status_code, hashlib.sha256(content).hexdigest(), files, hooks


@pytest.fixture(scope="session")
def hostile_server(make_server, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The tier's server (API only); its model list holds ``local/tiny``, a tiny
    model whose context is 512 tokens, for chat cases."""
    from support import build_tiny_model

    require("sandbox")
    folder = tmp_path_factory.mktemp("security-models")
    tiny = build_tiny_model(folder / "tiny", positions=512)
    models = folder / "models.json"
    models.write_text(json.dumps({"local/tiny": str(tiny)}))
    return make_server("sqlite", OPENFT_MODELS_FILE=str(models), **SECURITY_ENV)


@pytest.fixture(scope="session")
def attacker(hostile_server: Server) -> Tenant:
    org = f"attacker-{secrets.token_hex(3)}"
    return Tenant(hostile_server, org, hostile_server.new_key(org))


@pytest.fixture(scope="session")
def victim(hostile_server: Server) -> Victim:
    org = f"victim-{secrets.token_hex(3)}"
    tenant = Tenant(hostile_server, org, hostile_server.new_key(org))
    uploaded = tenant.sdk.files.create(file=("secret.jsonl", io.BytesIO(VICTIM_FILE)), purpose="fine-tune")
    [path] = (hostile_server.home / "blobs").rglob(uploaded.id)
    with tenant.http() as http:
        hook = http.post("/webhook_endpoints", json={"url": "https://93.184.216.34/hook",
                                                  "event_types": ["fine_tuning.job.succeeded"], "name": "victim hook"})
    assert hook.status_code == 200, hook.text
    return Victim(tenant, uploaded.id, path, hook.json()["id"], hashlib.sha256(VICTIM_FILE).hexdigest())


@pytest.fixture(autouse=True)
def contained(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the server: it is healthy, and the victim's data is as before."""
    if "hostile_server" not in request.fixturenames and "attacker" not in request.fixturenames:
        yield
        return
    server: Server = request.getfixturevalue("hostile_server")
    victim: Victim = request.getfixturevalue("victim")
    before = victim.state()
    assert before[:2] == (200, victim.files_digest)
    yield
    assert server.process is not None and server.process.poll() is None, server.log()
    assert victim.state() == before
