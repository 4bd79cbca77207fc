"""Webhook deliveries go to the address that was checked (DNS rebinding
cannot swap in another) and IPv6 forms that embed an IPv4 address are
judged by it; exports carry regular files only, never what a symbolic link
points at."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from openft.config import load_settings
from openft.export import tar_stream
from openft.scheduler import webhooks
from openft.scheduler.webhooks import UnsafeURL, check_url, post

pytestmark = pytest.mark.security


class Listener:
    """An HTTP server on loopback that records every request it gets."""

    def __init__(self) -> None:
        seen: list[tuple[str, str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- the stdlib's name
                self.rfile.read(int(self.headers["content-length"]))
                seen.append((self.path, self.headers["host"], self.headers["webhook-id"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.seen = seen
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.server.shutdown()


BODY = '{"id": "evt_1", "type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-1"}}'
SECRET = "whsec_" + "A" * 43 + "="


def test_a_name_that_rebinds_to_loopback_after_the_check_is_not_delivered(
        listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver answers a public address first and loopback after it."""
    real = socket.getaddrinfo
    answers = iter(["1.1.1.1"])

    def rebinding(host: object, port: object, *args: object, **kwargs: object) -> list:
        if (host.decode() if isinstance(host, bytes) else host) != "rebind.test":  # anyio passes bytes
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    settings = load_settings(webhook_timeout_seconds=1.0)
    status, error = asyncio.run(post(settings, f"http://rebind.test:{listener.port}/internal-admin", [SECRET], BODY))
    assert listener.seen == [] and status is None and error is not None


def test_the_request_goes_to_the_checked_address_with_the_urls_host(
        listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "is_public", lambda ip: True)  # let loopback stand in for a public address
    settings = load_settings(webhook_timeout_seconds=5.0)
    url = f"http://hooks.example.test:{listener.port}/deliver?x=1"
    status, error = asyncio.run(post(settings, url, [SECRET], BODY, resolver=lambda host, port: ["127.0.0.1"]))
    assert (status, error) == (200, None)
    assert listener.seen == [("/deliver?x=1", f"hooks.example.test:{listener.port}", "evt_1")]


@pytest.mark.parametrize("address", [
    "::127.0.0.1", "::ffff:127.0.0.1", "::ffff:0:7f00:1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a00:1", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:80ff:fffe",
])
def test_ipv6_forms_that_embed_a_private_ipv4_address_are_refused(address: str) -> None:
    with pytest.raises(UnsafeURL, match="non-public"):
        check_url("https://hooks.example.test/x", allow_private=False, resolver=lambda host, port: [address])


def test_ipv6_forms_that_embed_a_public_ipv4_address_pass() -> None:
    for address in ("64:ff9b::101:101", "2002:101:101::1", "2606:4700:4700::1111"):
        target = check_url("https://hooks.example.test/x", allow_private=False, resolver=lambda h, p, a=address: [a])
        assert target.address == address and target.request_url() == f"https://[{address}]/x"


def test_an_export_holds_regular_files_only(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("root:password-hash")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key.pem").write_text("PRIVATE KEY")
    model = tmp_path / "model"
    model.mkdir()
    (model / "adapter_config.json").write_text("{}")
    (model / "tokenizer.json").symlink_to(secret)
    (model / "linked-folder").symlink_to(tmp_path / "secrets")
    os.mkfifo(model / "pipe")
    archive = tarfile.open(fileobj=io.BytesIO(b"".join(tar_stream(model, "m"))))
    assert archive.getnames() == ["m/adapter_config.json"]
