"""openft's serving against llama.cpp's ``llama-server`` on the same CPU and the same weights.

It finds ``llama-server`` (``--llama-server``, the ``PATH``, or its own
cache) or builds it from the llama.cpp sources in the ``llama-cpp-python``
sdist (``pip download``, then CMake; a few minutes on 2 cores, once), makes
an f32 GGUF of the bundled SmolLM2-135M from the very folder openft serves
(llama.cpp's ``convert_hf_to_gguf.py``, ``--outtype f32``: the same fp32
weights), and starts the servers: ``llama-server -t 2 -np 16``,
``openft serve`` (API only) and, for reference, ``openft serve`` with
``OPENFT_SERVING_DTYPE=bfloat16`` and with ``int8`` (options, other weights). Then, in alternating rounds, each gets the
workload of issue 25: 16 prompts ("Write two sentences about ..."), greedy,
``max_tokens`` 48, through ``/v1/chat/completions``, first one after another,
then all 16 at once. Output tokens/s is the completion tokens each server
reports over the wall time; the table gives each round's median and
openft's ratio to llama-server in the same run.

    .venv/bin/python bench/serving_peer.py [--rounds 3] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openft-bench"
TOPICS = ["the sea", "a lighthouse", "winter", "a robot", "a library", "the moon", "a garden", "a train",
          "a mountain", "a city at night", "a storm", "a fox", "a violin", "a desert", "a river", "a market"]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
KEY = "sk-bench-peer-key"


def llama_sources() -> Path:
    """llama.cpp's sources from the llama-cpp-python sdist (downloaded once into the cache)."""
    sources = CACHE / "llama.cpp"
    if (sources / "CMakeLists.txt").exists():
        return sources
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "llama-cpp-python", "--no-binary", ":all:",
                        "--no-deps", "-d", scratch], check=True)
        [sdist] = Path(scratch).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch, filter="data")
        [vendored] = Path(scratch).glob("llama_cpp_python-*/vendor/llama.cpp")
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copytree(vendored, sources)
    return sources


def llama_server(given: str | None) -> Path:
    """The llama-server to run: given, on PATH, cached, or built now."""
    for found in (given, shutil.which("llama-server"), CACHE / "llama.cpp" / "build" / "bin" / "llama-server"):
        if found and Path(found).exists():
            return Path(found)
    sources = llama_sources()
    print("building llama-server from the llama-cpp-python sdist (once) ...", flush=True)
    subprocess.run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
                    "-DGGML_NATIVE=ON"], cwd=sources, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", "build", "--target", "llama-server", f"-j{os.cpu_count() or 1}"],
                   cwd=sources, check=True, stdout=subprocess.DEVNULL)
    return sources / "build" / "bin" / "llama-server"


def f32_gguf(folder: Path) -> Path:
    """The served model's own weights as an f32 GGUF (made once)."""
    target = CACHE / f"{folder.name}-f32.gguf"
    if not target.exists():
        sources = llama_sources()
        try:
            import sentencepiece  # noqa: F401  (llama.cpp's converter imports it before it reads a BPE vocabulary)
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "sentencepiece"], check=True)
        subprocess.run([sys.executable, str(sources / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f32",
                        "--outfile", str(target)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(sources / "gguf-py")})
    return target


def start(args: list[str], env: dict[str, str] | None, url: str, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)  # the server is starting
    raise SystemExit(f"{args[0]} did not start:\n{log.read_text()[-2000:]}")


async def workload(url: str, model: str, concurrent: bool) -> float:
    """Output tokens/s of the 16 prompts, one after another or all at once."""
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as client:
        async def ask(topic: str) -> int:
            reply = await client.post("/v1/chat/completions", json={
                "model": model, "temperature": 0, "max_tokens": 48,
                "messages": [{"role": "user", "content": f"Write two sentences about {topic}."}]})
            reply.raise_for_status()
            return int(reply.json()["usage"]["completion_tokens"])

        began = time.perf_counter()
        if concurrent:
            tokens = sum(await asyncio.gather(*(ask(t) for t in TOPICS)))
        else:
            tokens = 0
            for topic in TOPICS:
                tokens += await ask(topic)
        return tokens / (time.perf_counter() - began)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-server", default=None)
    parser.add_argument("--home", type=Path, default=Path("~/.openft").expanduser())
    args = parser.parse_args()
    from openft.weights import ensure_bundled

    folder = ensure_bundled(args.home / "models")
    binary = llama_server(args.llama_server)
    gguf = f32_gguf(folder)
    logs = Path(tempfile.mkdtemp(prefix="serving-peer-"))
    llama_url, openft_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    llama = start([str(binary), "-m", str(gguf), "-t", "2", "-np", "16", "-c", str(16 * 2048), "--host", "127.0.0.1",
                   "--port", llama_url.rsplit(":", 1)[1], "--api-key", KEY], None, llama_url, logs / "llama.log")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENFT_")}, "OPENFT_HOME": str(args.home),
           "OPENFT_API_KEY": KEY, "OPENFT_WORKER": "false", "OPENFT_LOG_LEVEL": "warning"}
    served = start([sys.executable, "-m", "openft", "serve", "--port", openft_url.rsplit(":", 1)[1]], env,
                   openft_url, logs / "openft.log")
    half_url = f"http://127.0.0.1:{free_port()}"
    half = start([sys.executable, "-m", "openft", "serve", "--port", half_url.rsplit(":", 1)[1]],
                 {**env, "OPENFT_SERVING_DTYPE": "bfloat16"}, half_url, logs / "openft-bf16.log")
    int8_url = f"http://127.0.0.1:{free_port()}"
    int8 = start([sys.executable, "-m", "openft", "serve", "--port", int8_url.rsplit(":", 1)[1]],
                 {**env, "OPENFT_SERVING_DTYPE": "int8"}, int8_url, logs / "openft-int8.log")
    servers = {"openft (float32)": (openft_url, MODEL), "llama-server (f32 GGUF)": (llama_url, "smollm2"),
               "openft (bfloat16 option)": (half_url, MODEL), "openft (int8 option)": (int8_url, MODEL)}
    rates: dict[tuple[str, bool], list[float]] = {(name, c): [] for name in servers for c in (False, True)}
    try:
        for url, model in servers.values():
            asyncio.run(workload(url, model, concurrent=True))  # warm: model loaded, caches built
        for _ in range(args.rounds):
            for concurrent in (False, True):
                for name, (url, model) in servers.items():
                    rates[(name, concurrent)].append(asyncio.run(workload(url, model, concurrent)))
    finally:
        for process in (served, half, int8, llama):
            process.terminate()
            process.wait(timeout=30)
    print(f"SmolLM2-135M, the same fp32 weights, 2 threads, 16 prompts, greedy, max_tokens 48, "
          f"{args.rounds} alternating rounds (median; all rounds in brackets)")
    print(f"{'server':<26} {'one at a time, tok/s':>28} {'16 at once, tok/s':>28}")
    for name in servers:
        cells = [f"{statistics.median(rates[(name, c)]):.1f} ({', '.join(f'{r:.0f}' for r in rates[(name, c)])})"
                 for c in (False, True)]
        print(f"{name:<26} {cells[0]:>28} {cells[1]:>28}")
    ours, theirs, *options = list(servers)
    for concurrent, label in ((False, "one at a time"), (True, "16 at once")):
        def ratio(name: str, together: bool = concurrent) -> float:
            return statistics.median(rates[(name, together)]) / statistics.median(rates[(theirs, together)])
        print(f"openft / llama-server, {label}: {ratio(ours):.2f}x (bfloat16 option: {ratio(options[0]):.2f}x, "
              f"int8 option: {ratio(options[1]):.2f}x)")


if __name__ == "__main__":
    main()
