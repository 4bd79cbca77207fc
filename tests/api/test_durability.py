"""Nothing is lost: a restart keeps every object; uploads stream in flat
memory; concurrent create-job and delete-file never both succeed."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import SMOLLM, GeneratedJsonl, Server, Tenant, chat_file, download_sha256, rss_growth_during

pytestmark = pytest.mark.api


def snapshot(tenant: Tenant) -> dict:
    with tenant.http() as http:
        files = http.get("/files").json()
        jobs = http.get("/fine_tuning/jobs", params={"limit": 100}).json()
        return {
            "files": files,
            "contents": {f["id"]: http.get(f"/files/{f['id']}/content").content for f in files["data"]},
            "jobs": jobs,
            "events": {j["id"]: http.get(f"/fine_tuning/jobs/{j['id']}/events", params={"limit": 100}).json()
                       for j in jobs["data"]},
        }


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_restart_keeps_every_object(make_server, kind: str) -> None:
    server: Server = make_server(kind)
    tenant = Tenant(server, "acme", server.new_key("acme"))
    sdk = tenant.sdk
    training = sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    sdk.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="user_data")
    queued = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training, metadata={"k": "v"}).id
    paused = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training).id
    sdk.fine_tuning.jobs.pause(paused)
    cancelled = sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training, suffix="x").id
    sdk.fine_tuning.jobs.cancel(cancelled)
    before = snapshot(tenant)

    server.restart()

    after = snapshot(tenant)
    assert after == before
    assert {j["id"]: j["status"] for j in after["jobs"]["data"]} == {
        queued: "queued", paused: "paused", cancelled: "cancelled"}
    assert sdk.fine_tuning.jobs.resume(paused).status == "queued"


def test_upload_memory_stays_flat(make_server) -> None:
    server: Server = make_server("sqlite")
    tenant = Tenant(server, "default", server.api_key)
    tenant.sdk.files.create(file=("warm.jsonl", io.BytesIO(chat_file(50))), purpose="fine-tune")
    big = GeneratedJsonl(128 * 1024 * 1024)
    with tenant.http() as http:
        response, growth = rss_growth_during(server.process.pid, lambda: http.post(
            "/files", files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"}, timeout=300))
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == big.size
    print(f"\nupload of {big.size / 2**20:.0f} MiB: server RSS grew {growth / 2**20:.1f} MiB")
    assert growth < 32 * 1024 * 1024, f"server memory grew {growth / 2**20:.1f} MiB"
    assert download_sha256(f"{server.url}/v1/files/{response.json()['id']}/content", server.api_key) == \
        big.digest.hexdigest()


def test_create_job_and_delete_file_never_both_win(tenant: Tenant) -> None:
    outcomes = []
    with ThreadPoolExecutor(max_workers=2) as pool, tenant.http() as http:
        for _ in range(15):
            file_id = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id
            create = pool.submit(http.post, "/fine_tuning/jobs", json={"model": SMOLLM, "training_file": file_id})
            delete = pool.submit(http.delete, f"/files/{file_id}")
            outcomes.append((create.result().status_code, delete.result().status_code))
    assert set(outcomes) <= {(200, 409), (400, 200)}, outcomes
