"""Python graders in their sandbox, used as the graders API and the RFT
recipe use them (in process, through :class:`Grader`): rewards, one
sandbox reused across samples, errors that leave the grader working, the
source checked in a sandbox with the error's line named."""

from __future__ import annotations

import os
import time

import pytest

from openft.graders import spec
from openft.graders.grader import Grader, GradingContext
from openft.graders.sandbox import PythonSandbox, SandboxError, SandboxLimits
from openft.graders.templates import sample_namespace
from openft.sandbox import SandboxConfig

from conftest import require
from support import Tenant

pytestmark = pytest.mark.security

LIMITS = SandboxLimits(timeout_seconds=2)
EXACT = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['label'] else 0.0\n"


@pytest.fixture(autouse=True)
def sandbox_tier() -> None:
    require("sandbox")


def grader(source: str, limits: SandboxLimits = LIMITS) -> Grader:
    return Grader(spec.validate({"type": "python", "name": "py", "source": source}), GradingContext(limits))


def test_rewards_come_from_one_sandbox_reused_across_samples() -> None:
    with grader(EXACT) as built:
        rewards = [built.grade(sample_namespace(out), {"label": "yes"}).reward for out in ("yes", "no", "yes")]
        assert rewards == [1.0, 0.0, 1.0]
        started = time.perf_counter()
        for _ in range(50):
            built.grade(sample_namespace("yes"), {"label": "yes"})
        per_sample = (time.perf_counter() - started) / 50
    with PythonSandbox(EXACT, LIMITS) as box:  # what starting a sandbox costs
        started = time.perf_counter()
        box.grade({"output_text": "yes"}, {"label": "yes"})
        start_cost = time.perf_counter() - started
    assert per_sample < start_cost / 5


@pytest.mark.parametrize(("source", "reason"), [
    ("def grade(sample, item):\n    return 'yes'\n", "must return a finite number"),
    ("def grade(sample, item):\n    return float('nan')\n", "must return a finite number"),
    ("def grade(sample, item):\n    raise ValueError('bad sample')\n", "ValueError: bad sample"),
    ("def grade(sample, item):\n    while True:\n        pass\n", "within 2 s"),
])
def test_a_failing_grade_is_a_zero_reward_and_the_grader_goes_on(source: str, reason: str) -> None:
    with grader(source + "grade_calls = 0\n") as built:
        graded = built.grade(sample_namespace("yes"), {"label": "yes"})
        assert graded.reward == 0.0 and graded.errors["python_grader_runtime_error"] is True
        assert reason in graded.errors["python_grader_runtime_error_details"]
        again = built.grade(sample_namespace("yes"), {"label": "yes"})
        assert again.errors["python_grader_runtime_error"] is True  # answered again, by a working sandbox


def lives(source: str, calls: int, limits: SandboxLimits = LIMITS) -> list[float]:
    """What each call returns; the source returns BORN, a random number drawn
    when its sandbox loaded it, so equal values mean the same sandbox."""
    with PythonSandbox("import random\nBORN = random.random()\n" + source, limits) as box:
        return [box.grade({}, {}) for _ in range(calls)]


def test_the_sandbox_is_replaced_once_it_has_spent_half_its_cpu_time() -> None:
    spin = ("import time\ndef grade(sample, item):\n    end = time.process_time() + 0.3\n"
            "    while time.process_time() < end:\n        pass\n    return BORN\n")
    seen = lives(spin, 4, SandboxLimits(timeout_seconds=5, sandbox=SandboxConfig(cpu_seconds=1)))
    assert seen[0] == seen[1] != seen[2] == seen[3]  # a fresh sandbox once 0.5 s of CPU is spent


@pytest.mark.parametrize("leftover", [
    "import threading, time\ndef grade(sample, item):\n"
    "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n    return BORN\n",
    "import os, time\ndef grade(sample, item):\n    if os.fork() == 0:\n        time.sleep(60)\n"
    "        os._exit(0)\n    return BORN\n",
], ids=["a thread", "a child process"])
def test_nothing_a_call_starts_outlives_it(leftover: str) -> None:
    first, second = lives(leftover, 2)
    assert first != second  # the sandbox with the leftover was killed after the call


def test_a_well_behaved_grader_keeps_its_sandbox() -> None:
    assert len(set(lives("def grade(sample, item):\n    return BORN\n", 5))) == 1


def test_the_server_environment_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFT_SECRET_FOR_TEST", "hunter2")
    source = "import os\ndef grade(sample, item):\n    return float('OPENFT_SECRET_FOR_TEST' in os.environ)\n"
    with grader(source) as built:
        assert built.grade(sample_namespace("x"), {}).reward == 0.0
    assert os.environ["OPENFT_SECRET_FOR_TEST"] == "hunter2"


def test_the_standard_library_and_numpy_import() -> None:
    source = ("import json, math, re\nimport numpy as np\n"
              "def grade(sample, item):\n    return float(np.mean([math.sqrt(4), len(re.findall('a', 'aa'))]))\n")
    with grader(source) as built:
        assert built.grade(sample_namespace("x"), {}).reward == 2.0


@pytest.mark.parametrize(("source", "text"), [
    ("def grade(sample, item)\n    return 1", "is not valid Python: expected ':' (line 1)"),
    ("def other():\n    return 1\n", "must define a top-level function grade(sample, item)"),
    ("import os\nos.kill(1, 9)\ndef grade(sample, item):\n    return 1\n", None),  # checking runs nothing
])
def test_a_source_is_checked_in_a_sandbox_with_its_line_named(attacker: Tenant, source: str, text: str | None) -> None:
    with attacker.http() as http:
        response = http.post("/fine_tuning/alpha/graders/validate",
                             json={"grader": {"type": "python", "name": "p", "source": source}})
    if text is None:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400 and response.json()["error"]["param"] == "grader.source"
    assert text in response.json()["error"]["message"]


STALL = """
import fcntl, os, stat, time
def grade(sample, item):
    if item.get('stall'):
        fcntl.fcntl(0, 1031, 4096)  # F_SETPIPE_SZ: the request pipe holds one page
        for fd in range(3, 16):  # a reply of its own, then it never reads again
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, b'{"reward": 1.0}\\n')
            except OSError:
                pass
        time.sleep(3600)
    return 0.5
"""


def test_a_sandbox_that_stops_reading_cannot_hold_the_server() -> None:
    """The second request does not fit the pipe the first call left unread:
    writing it is bounded by the call's time limit too."""
    with PythonSandbox(STALL, LIMITS) as box:
        assert box.grade({}, {"stall": True}) == 1.0
        started = time.perf_counter()
        with pytest.raises(SandboxError) as stalled:
            box.grade({"output_text": "x" * 100_000}, {})
        assert stalled.value.kind == "timeout" and time.perf_counter() - started < LIMITS.timeout_seconds + 2
        assert box.grade({}, {}) == 0.5  # and a fresh sandbox serves the next sample


def test_graders_work_when_the_server_holds_more_than_1024_files(tmp_path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with grader(EXACT) as built:
            assert built.grade(sample_namespace("yes"), {"label": "yes"}).reward == 1.0
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
