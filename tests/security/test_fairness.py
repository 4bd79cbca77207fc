"""One organisation cannot slow another down: grader runs have their own
bounded capacity with a share per organisation (a 429 with Retry-After
past it) and their own threads, and grader sources are parsed in a sandbox,
not on the event loop. Timings are ratios against the same server unloaded,
measured in the same run."""

from __future__ import annotations

import ast
import json
import secrets
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from support import Server, Tenant

pytestmark = pytest.mark.security

FLOOD = textwrap.dedent("""
    import json, sys, threading, httpx
    url, key, body, threads = sys.argv[1], sys.argv[2], json.loads(open(sys.argv[3]).read()), int(sys.argv[4])
    seen, stop = {}, threading.Event()
    lock = threading.Lock()
    def hammer():
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            while not stop.is_set():
                response = client.post(url, json=body)
                label = f"{response.status_code} retry-after={response.headers.get('retry-after')}"
                with lock:
                    seen[label] = seen.get(label, 0) + 1
                if response.status_code == 429:
                    stop.wait(0.5)  # backs off, but far less than it is asked to
    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    print("flooding", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    for worker in workers:
        worker.join()
    print(json.dumps(seen), flush=True)
""")


@contextmanager
def flood(server: Server, tenant: Tenant, route: str, body: dict, threads: int) -> Iterator[dict[str, int]]:
    """Another process posting ``body`` to ``route`` from ``threads`` threads
    until the block ends; the statuses it saw are filled in then."""
    seen: dict[str, int] = {}
    request = server.home / f"flood-{secrets.token_hex(4)}.json"
    request.write_text(json.dumps(body))
    process = subprocess.Popen([sys.executable, "-c", FLOOD, f"{server.url}/v1{route}", tenant.key,
                                str(request), str(threads)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "flooding"
    try:
        yield seen
    finally:
        out, _ = process.communicate("", timeout=120)
        seen.update(json.loads(out.strip().splitlines()[-1]))


def timings(call: Callable[[], None], seconds: float) -> list[float]:
    """How long each call took, calling one after another for ``seconds``."""
    found: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        found.append(time.perf_counter() - started)
    return found


@pytest.fixture(scope="module")
def bystander(hostile_server: Server) -> Tenant:
    org = f"bystander-{secrets.token_hex(3)}"
    return Tenant(hostile_server, org, hostile_server.new_key(org))


def test_a_flood_of_slow_grader_runs_does_not_slow_another_organisations_downloads(
        hostile_server: Server, attacker: Tenant, bystander: Tenant) -> None:
    uploaded = bystander.sdk.files.create(file=("big.bin", b"x" * (1 << 20)), purpose="batch")
    slow = {"grader": {"type": "python", "name": "slow", "source": "import time\ndef grade(sample, item):\n"
                       "    time.sleep(2.5)\n    return 1.0\n"}, "model_sample": "x"}
    with httpx.Client(base_url=f"{hostile_server.url}/v1", headers={"Authorization": f"Bearer {bystander.key}"},
                      timeout=60) as http:

        def download() -> None:
            response = http.get(f"/files/{uploaded.id}/content")
            assert response.status_code == 200 and len(response.content) == 1 << 20

        unloaded = timings(download, 1)
        with flood(hostile_server, attacker, "/fine_tuning/alpha/graders/run", slow, threads=40) as seen:
            time.sleep(1)  # let the flood fill the attacker's share
            loaded = timings(download, 3)
    ratio = statistics.median(loaded) / statistics.median(unloaded)
    print(f"\ndownload median unloaded {statistics.median(unloaded) * 1000:.1f} ms, during the flood "
          f"{statistics.median(loaded) * 1000:.1f} ms (x{ratio:.1f}); the flood saw {seen}")
    assert ratio < 5
    refused = sum(n for label, n in seen.items() if label.startswith("429 retry-after=5"))
    admitted = sum(n for label, n in seen.items() if label.startswith("200"))
    assert refused > 40 and admitted >= 2, seen
    assert set(seen) <= {"200 retry-after=None", "429 retry-after=5"}, seen


def test_big_grader_sources_are_not_parsed_on_the_event_loop(hostile_server: Server, attacker: Tenant) -> None:
    source = "def grade(sample, item):\n    return 1.0\n" + "x = [1, 2, 3]\n" * 17_000  # 240 KB
    body = {"grader": {"type": "python", "name": "big", "source": source}}
    with httpx.Client(base_url=hostile_server.url, timeout=60) as http:

        def health() -> None:
            assert http.get("/health").status_code == 200

        unloaded = timings(health, 1)
        with flood(hostile_server, attacker, "/fine_tuning/alpha/graders/validate", body, threads=6) as seen:
            loaded = timings(health, 3)
    started = time.perf_counter()
    ast.parse(source)
    one_parse = time.perf_counter() - started
    worst, typical = max(loaded), statistics.median(unloaded)
    print(f"\n/health unloaded {typical * 1000:.1f} ms, worst while 6 clients validate 240 KB sources "
          f"{worst * 1000:.1f} ms (one parse here {one_parse * 1000:.0f} ms); they saw {seen}")
    # Parsed on the event loop, /health waited for several parses back to back: 4.1 s (x4000). A single
    # slow answer on this busy 2-core machine must not fail it, so the bound is the larger of x100 and
    # two parses measured in this run.
    assert worst < max(100 * typical, 2 * one_parse)
    assert any(label.startswith("200") for label in seen), seen
