"""An eval run survives kill -9 of the server (with its co-located worker)
and then of a standalone worker: it completes with every item recorded
exactly once. (Its own server, so it runs beside the served stories.)"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from test_evals import CONFIG, EXACT, all_items, eval_process, finished, graded, slow

from support import Tenant

pytestmark = [pytest.mark.training, pytest.mark.filterwarnings("ignore:The Evals API is deprecated")]


def test_a_run_survives_kill_9_of_the_server_and_of_the_worker(make_training_server) -> None:
    # A jsonl run needs no model: without the warm start, a worker and a run's process start in a second.
    server = make_training_server(OPENFT_LEASE_SECONDS="1.5", OPENFT_WARM_START="false")
    tenant = Tenant(server, "default", server.api_key)
    evaluation = tenant.sdk.evals.create(data_source_config=CONFIG, testing_criteria=[EXACT, slow(0.1)])
    rows = [{"item": {"prompt": f"p{i}", "expected": "x"}, "sample": {"output_text": "x" if i % 2 else "y"}}
            for i in range(24)]
    run = tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        "type": "jsonl", "source": {"type": "file_content", "content": rows}})
    seen = graded(tenant, evaluation.id, run.id, 3)
    child = eval_process(run.id)
    server.process.send_signal(signal.SIGKILL)  # the API and its worker die at once
    server.process.wait()
    child.wait(timeout=10)  # the run's process does not outlive its worker
    server.extra_env["OPENFT_WORKER"] = "false"
    server.start()
    env = {**server.env, "OPENFT_WORKER": "true"}

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "openft", "worker"], env=env, stdout=subprocess.DEVNULL,
                                stderr=(server.home / "worker.log").open("ab"))

    standalone = worker()
    try:
        seen = graded(tenant, evaluation.id, run.id, seen + 3)  # resumed after the lease expired
        standalone.send_signal(signal.SIGKILL)
        standalone.wait()
        assert tenant.sdk.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "in_progress"
        standalone = worker()
        done = finished(tenant, evaluation.id, run.id)
    finally:
        standalone.send_signal(signal.SIGTERM)
        standalone.wait(timeout=30)
    assert done.status == "completed", done.error
    items = all_items(tenant, evaluation.id, run.id)
    assert sorted(i.datasource_item_id for i in items) == list(range(24))  # each once, none lost
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed) == (24, 12, 12)
    assert [c.passed + c.failed for c in done.per_testing_criteria_results] == [24, 24]
