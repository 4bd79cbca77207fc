"""S3 storage for real (SeaweedFS): a 256 MiB upload streams as multipart with
flat server memory, an aborted upload leaves nothing, and a missing bucket,
refused credentials or an unreachable Ray cluster stop start-up with one
clear line."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading

import psutil
import pytest

from conftest import require
from support import Server, Tenant, free_port

pytestmark = pytest.mark.s3

MiB = 1024 * 1024


def _start_fails(server: Server, command: str = "serve") -> str:
    """Run ``openft <command>`` on the server's settings; it must exit non-zero. Its output."""
    server.home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "openft", command], env=server.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_a_256_mib_upload_streams_to_s3_with_flat_memory(make_server) -> None:
    server = make_server("s3")
    tenant = Tenant(server, "default", server.api_key)
    process = psutil.Process(server.process.pid)
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def watch() -> None:  # samples the server's resident memory while the upload runs
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, process.memory_info().rss)

    chunk = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    def body():  # a multipart body streamed from the client, so only the server's memory counts
        yield (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
               b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n')
        for _ in range(256):
            digest.update(chunk)
            yield chunk
        yield b"\r\n--B--\r\n"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with tenant.http() as http:
            response = http.post(
                "/files", content=body(), headers={"Content-Type": "multipart/form-data; boundary=B"}, timeout=300
            )
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["bytes"] == 256 * MiB
    growth = peak - baseline
    assert growth < 64 * MiB, f"server memory grew {growth / MiB:.0f} MiB for a 256 MiB upload"

    received = hashlib.sha256()
    with tenant.http() as http, http.stream("GET", f"/files/{created['id']}/content") as download:
        for part in download.iter_bytes():
            received.update(part)
    assert received.hexdigest() == digest.hexdigest()
    print(f"256 MiB upload to S3: server memory +{growth / MiB:.1f} MiB")


def test_an_aborted_upload_leaves_nothing_in_the_bucket(make_server) -> None:
    server = make_server("s3", OPENFT_MAX_FILE_BYTES=str(20 * MiB))
    tenant = Tenant(server, "default", server.api_key)
    with tenant.http() as http:
        response = http.post("/files", files={"file": ("big.bin", b"x" * (24 * MiB))}, data={"purpose": "user_data"})
    assert response.status_code == 413
    assert server.blob_names("files") == []


def test_a_missing_bucket_or_refused_credentials_stop_start_up(s3_storage, tmp_path) -> None:
    env = s3_storage()
    missing = _start_fails(Server(home=tmp_path / "a", extra_env={**env, "OPENFT_STORAGE_URL": "s3://no-such-bucket/x"}))
    assert "bucket 'no-such-bucket' does not exist" in missing and "Traceback" not in missing
    refused = _start_fails(Server(home=tmp_path / "b", extra_env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"}))
    assert "access denied" in refused and "Traceback" not in refused


def test_an_unreachable_ray_cluster_stops_a_ray_worker_at_once(tmp_path) -> None:
    require("ray")
    server = Server(home=tmp_path, extra_env={"OPENFT_EXECUTOR": "ray",
                                              "OPENFT_RAY_ADDRESS": f"127.0.0.1:{free_port()}"})
    output = _start_fails(server, "worker")
    assert "Cannot reach the Ray cluster" in output and "Traceback" not in output
