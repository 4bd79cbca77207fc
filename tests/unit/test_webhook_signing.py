"""Webhook signing and URL checks: what the official SDK verifies, and which
addresses openft refuses to call."""

from __future__ import annotations

import json
import random

import openai
import pytest

from openft.scheduler.webhooks import UnsafeURL, check_url, retry_delay, signed_headers
from openft.services.webhooks import new_secret

BODY = json.dumps({"id": "evt_1", "object": "event", "created_at": 1, "type": "fine_tuning.job.succeeded",
                   "data": {"id": "ftjob-1"}}, separators=(",", ":"))


def test_the_openai_sdk_verifies_openft_signatures() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    headers = signed_headers([secret], BODY)
    assert headers["webhook-id"] == "evt_1"
    event = openai.OpenAI(api_key="unused").webhooks.unwrap(BODY, headers, secret=secret)
    assert event.type == "fine_tuning.job.succeeded" and event.data.id == "ftjob-1"

    sdk = openai.OpenAI(api_key="unused").webhooks
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.verify_signature(BODY.replace("ftjob-1", "ftjob-2"), headers, secret=secret)  # body changed
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.verify_signature(BODY, headers, secret=new_secret())  # another secret
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.verify_signature(BODY, signed_headers([secret], BODY, now=1_000), secret=secret)  # replayed
    # After a rotation that keeps the old secret, both verify.
    old, new = new_secret(), new_secret()
    both = signed_headers([new, old], BODY)
    sdk.verify_signature(BODY, both, secret=old)
    sdk.verify_signature(BODY, both, secret=new)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook", "http://10.1.2.3/hook",
    "http://192.168.0.10/hook", "http://172.16.5.5/hook", "http://169.254.169.254/latest/meta-data",
    "http://[fd00:ec2::254]/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[::ffff:127.0.0.1]/",
    "http://224.0.0.1/",
])
def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UnsafeURL, match="OPENFT_WEBHOOKS_ALLOW_PRIVATE"):
        check_url(url, allow_private=False)
    check_url(url, allow_private=True)


def test_only_http_urls_with_a_host() -> None:
    check_url("https://8.8.8.8/hook", allow_private=False)
    for url in ("ftp://8.8.8.8/x", "file:///etc/passwd", "https:///nohost", "gopher://8.8.8.8/"):
        with pytest.raises(UnsafeURL, match="http"):
            check_url(url, allow_private=True)


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    rng = random.Random(0)
    delays = [retry_delay(n, 5, 3600, rng) for n in range(1, 14)]
    assert 4 <= delays[0] <= 6 and 8 <= delays[1] <= 12 and 16 <= delays[2] <= 24
    assert all(d <= 3600 * 1.2 for d in delays) and delays[-1] >= 3600 * 0.8
