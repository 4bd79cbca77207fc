"""Hostile python graders, run by an ordinary organisation's key through the
real server (``/fine_tuning/alpha/graders/run``), against the operating
system's sandbox. Each case tries one escape; the grader's result says what
stopped it, and after each the server is healthy and the victim's data is
unchanged (``conftest.contained``)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import psutil
import pytest

from support import Server, Tenant

pytestmark = pytest.mark.security

SANDBOX_UID = 61000


def run(tenant: Tenant, source: str, item: dict | None = None) -> dict:
    with tenant.http() as http:
        response = http.post("/fine_tuning/alpha/graders/run", json={
            "grader": {"type": "python", "name": "attack", "source": source}, "model_sample": "x",
            "item": item or {}})
    assert response.status_code == 200, response.text
    return response.json()


def failure(result: dict) -> str:
    """The runtime error a contained attack ended with (its reward is 0)."""
    errors = result["metadata"]["errors"]
    assert result["reward"] == 0.0 and errors["python_grader_runtime_error"] is True, result
    return str(errors["python_grader_runtime_error_details"])


def succeeded(result: dict) -> float:
    """The reward of a grader that ran to its end (its own verdict)."""
    assert not result["metadata"]["errors"]["python_grader_runtime_error"], result
    return float(result["reward"])


@pytest.fixture(scope="module")
def host(hostile_server: Server, victim) -> dict:
    """What an attacker would aim at, by its path or pid on the host."""
    assert hostile_server.process is not None
    return {"home": str(hostile_server.home), "db": str(hostile_server.home / "openft.db"),
            "key_file": str(hostile_server.home / "api-key"), "blob": str(victim.file_path),
            "pid": hostile_server.process.pid, "port": hostile_server.port,
            "src": str(Path(__file__).resolve().parents[2] / "src"),
            # Python's own folders are bound where they are, under /tmp too (a fresh clone's venv)
            "python_under_tmp": sorted({Path(p).parts[2] for p in (sys.prefix, sys.base_prefix)
                                        if Path(p).parts[1:2] == ("tmp",)})}


READS = {
    "the database with open()": (
        "def grade(sample, item):\n    return float(len(open(item['db'], 'rb').read()))\n", "FileNotFoundError"),
    "the database with sqlite3, which opens it in C": (
        "import sqlite3\ndef grade(sample, item):\n"
        "    db = sqlite3.connect('file:' + item['db'] + '?mode=ro', uri=True)\n"
        "    return float(len(db.execute('select key_hash from api_keys').fetchall()))\n",
        "OperationalError: unable to open database file"),
    "another organisation's upload with os.open": (
        "import os\ndef grade(sample, item):\n"
        "    return float(len(os.read(os.open(item['blob'], os.O_RDONLY), 100)))\n", "FileNotFoundError"),
    "the server's first key": (
        "def grade(sample, item):\n    return float(len(open(item['key_file']).read()))\n", "FileNotFoundError"),
    "/etc/shadow through mmap": (
        "import mmap\ndef grade(sample, item):\n    with open('/etc/shadow', 'rb') as f:\n"
        "        return float(len(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)))\n", "FileNotFoundError"),
    "the server's environment in /proc": (
        "def grade(sample, item):\n    return float(len(open(f\"/proc/{item['pid']}/environ\", 'rb').read()))\n",
        "FileNotFoundError"),
    "the host through /proc/1/root": (
        "def grade(sample, item):\n    return float(len(open('/proc/1/root' + item['db'], 'rb').read()))\n",
        "FileNotFoundError"),
    "a listing of the server's home": (
        "import os\ndef grade(sample, item):\n    return float(len(os.listdir(item['home'])))\n", "FileNotFoundError"),
    "the repository's source": (
        "import os\ndef grade(sample, item):\n    return float(len(os.listdir(item['src'])))\n", "FileNotFoundError"),
}


@pytest.mark.parametrize("case", READS)
def test_reading_the_host_finds_nothing(attacker: Tenant, host: dict, case: str) -> None:
    source, reason = READS[case]
    assert reason in failure(run(attacker, source, host))


VIEW = """
import os, socket
def grade(sample, item):
    leaks = []
    for path in (item['home'], item['src'], '/etc/passwd', '/etc/hostname', '/var', '/run', '/sys', '/home/'):
        if os.path.exists(path):
            leaks.append(path)
    pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
    if len(pids) > 3 or item['pid'] in pids:
        leaks.append(f'processes {pids}')
    if set(os.listdir('/tmp')) - set(item['python_under_tmp']):
        leaks.append('a scratch folder that is not new')
    if socket.gethostname() != 'sandbox':
        leaks.append('the host name')
    if any(k.startswith(('OPENFT', 'AWS', 'PG')) for k in os.environ):
        leaks.append('the server environment')
    status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())
    if int(status['CapEff'], 16) or int(status['CapBnd'], 16):
        leaks.append('capabilities')
    if os.getpid() != 1:  # the grader is the namespace's first process: no one without its limits
        leaks.append(f'a process before the grader ({open("/proc/1/cmdline").read()!r})')
    limits = [line.split() for line in open('/proc/1/limits')]
    if ['Max', 'processes', '16', '16'] not in [l[:4] for l in limits] or \
            ['Max', 'address', 'space', '536870912', '536870912'] not in [l[:5] for l in limits]:
        leaks.append('unlimited processes or memory')
    if status['NoNewPrivs'].strip() != '1' or status['Seccomp'].strip() != '2':
        leaks.append('no_new_privs or seccomp off')
    if leaks:
        raise RuntimeError('LEAKED ' + ', '.join(leaks))
    return float(os.getuid())
"""


def test_the_sandbox_sees_nothing_of_the_host_and_runs_unprivileged(attacker: Tenant, host: dict) -> None:
    uid = succeeded(run(attacker, VIEW, host))
    assert uid == (SANDBOX_UID if os.geteuid() == 0 else os.geteuid())
    assert uid != 0


WRITES = """
import os
def grade(sample, item):
    refused = 0
    for path in ('/usr/openft-was-here', item['home'] + '/openft-was-here', '/etc/openft-was-here',
                 '/openft-was-here', '/proc/sys/kernel/hostname'):
        try:
            with open(path, 'w') as f:
                f.write('x')
        except OSError:
            refused += 1
    with open('/tmp/scratch', 'w') as f:  # the scratch folder is writable
        f.write('fine')
    try:
        with open('/tmp/big', 'wb') as f:
            for _ in range(200):
                f.write(b'x' * 2**20)
    except OSError:
        refused += 1
    return float(refused)
"""


def test_writes_outside_the_scratch_folder_and_past_its_size_are_refused(attacker: Tenant, host: dict) -> None:
    assert succeeded(run(attacker, WRITES, host)) == 6.0  # five places, and the file past 64 MiB
    assert not (Path(host["home"]) / "openft-was-here").exists() and not Path("/usr/openft-was-here").exists()


LINGER = """
import os
def grade(sample, item):
    if os.fork() == 0:
        os.setsid()
        os.execv('/usr/bin/sleep', ['sleep', '3600', str(item['token'])])
    return 1.0
"""


def test_no_process_outlives_the_grader(attacker: Tenant) -> None:
    token = str(secrets.randbelow(10**9))
    assert succeeded(run(attacker, LINGER, {"token": token})) == 1.0
    left = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] and process.info["cmdline"][-1:] == [token]:
            left.append(process.pid)
    assert left == []


SIGNALS = """
import os, signal
def grade(sample, item):
    refused = 0
    try:
        os.kill(item['pid'], signal.SIGKILL)
    except ProcessLookupError:
        refused += 1
    try:
        signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)
    except PermissionError:
        refused += 1
    try:
        os.killpg(item['pid'], signal.SIGKILL)
    except ProcessLookupError:
        refused += 1
    return float(refused)
"""


def test_the_server_cannot_be_signalled(attacker: Tenant, host: dict) -> None:
    assert succeeded(run(attacker, SIGNALS, host)) == 3.0


def test_signalling_every_process_it_may_finds_none_outside(attacker: Tenant) -> None:
    """kill(-1) reaches every process the caller may signal but init and itself: in
    the sandbox's PID namespace there are none."""
    source = "import os, signal\ndef grade(sample, item):\n    os.kill(-1, signal.SIGKILL)\n    return 1.0\n"
    assert "ProcessLookupError" in failure(run(attacker, source))


SOCKETS = """
import socket
def grade(sample, item):
    reached = []
    kinds = [(socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_STREAM),
             (socket.AF_INET, socket.SOCK_DGRAM),
             (socket.AF_INET6, socket.SOCK_STREAM), (socket.AF_NETLINK, socket.SOCK_RAW),
             (socket.AF_PACKET, socket.SOCK_RAW), (40, socket.SOCK_STREAM), (38, socket.SOCK_SEQPACKET)]
    for family, kind in kinds:  # 40: AF_VSOCK, 38: AF_ALG
        try:
            socket.socket(family, kind).close()
            reached.append(f'socket family {family}')
        except OSError:
            pass
    try:
        socket.socketpair()
        reached.append('a socket pair')
    except OSError:
        pass
    try:
        socket.create_connection(('127.0.0.1', item['port']), timeout=2)
        reached.append('the server')
    except OSError:
        pass
    if reached:
        raise RuntimeError('REACHED ' + ', '.join(reached))
    return 1.0
"""


def test_no_socket_of_any_family_reaches_anything(attacker: Tenant, host: dict) -> None:
    assert succeeded(run(attacker, SOCKETS, host)) == 1.0


CTYPES = """
import ctypes, os
def grade(sample, item):
    libc = ctypes.CDLL(None, use_errno=True)
    calls = {'unshare(user)': lambda: libc.unshare(0x10000000),
             'mount': lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None),
             'ptrace': lambda: libc.ptrace(0, 0, None, None),
             'setuid(0)': lambda: libc.setuid(0),
             'chroot': lambda: libc.chroot(b'/tmp'),
             'shmget (System V shared memory)': lambda: libc.shmget(0, 2**27, 0o1600),
             'memfd_create': lambda: libc.memfd_create(b'x', 0)}
    if os.uname().machine == 'x86_64':
        calls.update({'bpf': lambda: libc.syscall(321, 0, None, 0),
                      'keyctl': lambda: libc.syscall(250, 0, 0, 0, 0, 0),
                      'clone3': lambda: libc.syscall(435, None, 0)})
    worked = [name for name, call in calls.items() if call() >= 0]
    if worked:
        raise RuntimeError('WORKED ' + ', '.join(worked))
    return 1.0
"""


def test_ctypes_loads_but_the_kernel_refuses_what_it_would_reach(attacker: Tenant) -> None:
    assert succeeded(run(attacker, CTYPES)) == 1.0


TAMPER = """
import builtins, os, sys
sys.addaudithook = lambda hook: None
builtins.__import__ = builtins.__import__
os.path.realpath = lambda path, **kwargs: '/usr/lib/nothing'
frame = sys._getframe(0)
while frame.f_back is not None:
    frame = frame.f_back
for name, value in list(frame.f_globals.items()):
    if callable(getattr(value, '__code__', None)) and name != 'main':
        value.__code__ = (lambda *args, **kwargs: None).__code__
def grade(sample, item):
    return float(len(open(item['db'], 'rb').read()))
"""


def test_rewriting_the_sandboxes_own_python_first_changes_nothing(attacker: Tenant, host: dict) -> None:
    assert "FileNotFoundError" in failure(run(attacker, TAMPER, host))


FORGE = """
import os, stat, time
def grade(sample, item):
    for fd in range(3, 16):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, REPLY)
        except OSError:
            pass
    return 1.0
"""


@pytest.mark.parametrize("reply", ["b'{\"reward\": NaN}\\n'", "b'{\"reward\": 1e999}\\n'", "b'{\"reward\": true}\\n'",
                                   "b'garbage\\n'", "b'{\"reward\": 1.0, \"extra\": 1}\\n'", "b'x' * (3 * 2**20)",
                                   "b'{\"reward\": 1' + b'0' * 400 + b'}\\n'"])
def test_a_reply_the_grader_writes_itself_is_a_runtime_error(attacker: Tenant, reply: str) -> None:
    detail = failure(run(attacker, f"REPLY = {reply}\n" + FORGE))
    assert "not a reply" in detail or "finite number" in detail or "larger than" in detail


BOMBS = {
    "memory": ("def grade(sample, item):\n    block = bytearray(10 * 2**30)\n    return 1.0\n", ("MemoryError",)),
    "CPU": ("def grade(sample, item):\n    while True:\n        pass\n", ("CPU time", "did not return within")),
    "CPU on many threads": (
        "import threading\ndef spin():\n    while True:\n        pass\n"
        "def grade(sample, item):\n    for _ in range(16):\n"
        "        threading.Thread(target=spin, daemon=True).start()\n"
        "    spin()\n", ("CPU time", "did not return within", "can't start new thread")),
    "sleep": ("import time\ndef grade(sample, item):\n    time.sleep(60)\n", ("did not return within 3 s",)),
    "processes": ("import os\ndef grade(sample, item):\n    while True:\n        os.fork()\n",
                  ("BlockingIOError", "Resource temporarily unavailable")),
    "open files": ("def grade(sample, item):\n    files = [open('/dev/null') for _ in range(100000)]\n",
                   ("Too many open files",)),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_bombs_end_within_the_limits(attacker: Tenant, bomb: str) -> None:
    source, reasons = BOMBS[bomb]
    detail = failure(run(attacker, source))
    assert any(reason in detail for reason in reasons), detail


def test_a_server_without_the_sandbox_refuses_python_graders_everywhere(make_server) -> None:
    server = make_server("sqlite", OPENFT_SANDBOX_BWRAP="/nonexistent/bwrap")
    tenant = Tenant(server, "default", server.api_key)
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    with tenant.http() as http:
        for route, body in (("validate", {"grader": grader}), ("run", {"grader": grader, "model_sample": "x"})):
            refused = http.post(f"/fine_tuning/alpha/graders/{route}", json=body)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "python_grader_unavailable"
            assert refused.json()["error"]["param"] == "grader.type"
            assert "OPENFT_SANDBOX_BWRAP" in refused.json()["error"]["message"]
        training = tenant.sdk.files.create(file=("rl.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n'
                                                  * 10), purpose="fine-tune")
        job = http.post("/fine_tuning/jobs", json={
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "training_file": training.id,
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader}}})
    assert job.status_code == 400 and job.json()["error"]["param"] == "method.reinforcement.grader.type", job.text
