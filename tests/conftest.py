"""Shared fixtures: a real server per database (SQLite and PostgreSQL), tenants.

PostgreSQL comes from ``OPENFT_TEST_POSTGRES_URL`` (default: the local server
at 127.0.0.1:5432, database ``test``). Each server gets a fresh database of its
own, dropped afterwards. Without PostgreSQL its tests are skipped with a loud
line, except under ``CI=true``, where a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support import Server, Tenant

POSTGRES_URL = os.environ.get(
    "OPENFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _postgres_problem() -> str | None:
    try:
        with psycopg.connect(_libpq(POSTGRES_URL), connect_timeout=3):
            return None
    except Exception as exc:  # any failure means "not usable here"
        return f"{type(exc).__name__}: {exc}".strip()


_PG_PROBLEM: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _PG_PROBLEM
    _PG_PROBLEM = _postgres_problem()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if _PG_PROBLEM is None:
        return [f"openft: PostgreSQL tier ON ({POSTGRES_URL})"]
    return [
        "!" * 78,
        f"openft: PostgreSQL tier SKIPPED: {POSTGRES_URL} unreachable ({_PG_PROBLEM})",
        "!" * 78,
    ]


def require_postgres() -> None:
    if _PG_PROBLEM is None:
        return
    message = f"PostgreSQL at {POSTGRES_URL} is unreachable: {_PG_PROBLEM}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the PostgreSQL tier may not be skipped)")
    warnings.warn(message)
    pytest.skip(f"SKIPPED PostgreSQL tier: {message}")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[object]:
    """A factory of fresh PostgreSQL databases, all dropped at the end."""
    created: list[str] = []

    def make() -> str:
        require_postgres()
        name = f"openft_test_{secrets.token_hex(6)}"
        with psycopg.connect(_libpq(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"

    yield make
    if created:
        with psycopg.connect(_libpq(POSTGRES_URL), autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        require_postgres()
    return str(request.param)


@pytest.fixture(scope="session")
def make_server(tmp_path_factory: pytest.TempPathFactory, postgres_database: object) -> Iterator[object]:
    """Start servers on a new home (and a new database for kind='postgres')."""
    servers: list[Server] = []

    def make(kind: str = "sqlite", **extra_env: str) -> Server:
        home = Path(tmp_path_factory.mktemp(f"home-{kind}"))
        database_url = postgres_database() if kind == "postgres" else None  # type: ignore[operator]
        server = Server(home=home, database_url=database_url, extra_env=extra_env)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(make_server: object, database_kind: str) -> Server:
    """One shared server per database kind; tests isolate themselves by tenant."""
    return make_server(database_kind)  # type: ignore[operator,no-any-return]


@pytest.fixture
def tenant(server: Server) -> Tenant:
    org = f"org-{secrets.token_hex(4)}"
    return Tenant(server, org, server.new_key(org))


@pytest.fixture
def other_tenant(server: Server) -> Tenant:
    org = f"other-{secrets.token_hex(4)}"
    return Tenant(server, org, server.new_key(org))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the bundled model's tokenizer (built, never downloaded)."""
    from support import build_tiny_model

    return build_tiny_model(Path(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def make_training_server(
    make_server: object, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> object:
    """Servers with the worker on and the tiny model registered as ``local/tiny``."""
    models_file = Path(tmp_path_factory.mktemp("models")) / "models.json"
    models_file.write_text(json.dumps({"local/tiny": str(tiny_model_dir)}))

    def make(kind: str = "sqlite", **env: str) -> Server:
        settings = {
            "OPENFT_WORKER": "true",
            "OPENFT_MODELS_FILE": str(models_file),
            "OPENFT_HEARTBEAT_SECONDS": "0.2",
            "OPENFT_POLL_SECONDS": "0.2",
            **env,
        }
        return make_server(kind, **settings)  # type: ignore[operator,no-any-return]

    return make


@pytest.fixture(scope="session")
def training_server(make_training_server: object) -> Server:
    return make_training_server()  # type: ignore[operator,no-any-return]


@pytest.fixture(scope="session")
def bundled_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled SmolLM2, converted once per session by ``openft models pull``."""
    import subprocess
    import sys

    from openft.weights import BUNDLED_MODEL, cache_folder

    home = Path(tmp_path_factory.mktemp("bundled-home"))
    result = subprocess.run(
        [sys.executable, "-m", "openft", "models", "pull"],
        env={**os.environ, "OPENFT_HOME": str(home)}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    folder = cache_folder(home / "models", BUNDLED_MODEL)
    folder.with_name("pull-output.txt").write_text(result.stderr)
    return folder
