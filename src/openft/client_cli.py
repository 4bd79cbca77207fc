"""Client commands of ``openft``: files, jobs, models list, chat (and ``evals``, in ``openft.evals_cli``).

They talk to a server through the official OpenAI SDK, exactly as a user's
code would. ``--base-url`` / ``OPENFT_BASE_URL`` (default
``http://127.0.0.1:8000/v1``) and ``--api-key`` / ``OPENFT_API_KEY`` (default:
the key file ``$OPENFT_HOME/api-key`` written at the server's first start).
Output is for people (tables, colour on a terminal); ``--json`` prints the
API objects for scripts.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
EXIT_FAILED, EXIT_CANCELLED = 1, 2


class Client:
    def __init__(self, base_url: str | None, api_key: str | None, as_json: bool):
        import openai

        key = api_key or os.environ.get("OPENFT_API_KEY") or _key_file()
        if not key:
            raise click.ClickException("No API key: pass --api-key or set OPENFT_API_KEY.")
        self.sdk = openai.OpenAI(
            base_url=base_url or os.environ.get("OPENFT_BASE_URL") or DEFAULT_BASE_URL,
            api_key=key,
            max_retries=1,
        )
        self.as_json = as_json


def _key_file() -> str | None:
    path = Path(os.environ.get("OPENFT_HOME", "~/.openft")).expanduser() / "api-key"
    return path.read_text().strip() if path.is_file() else None


def client_options(command: Any) -> Any:
    command = click.option("--json", "as_json", is_flag=True, help="Print API objects as JSON.")(command)
    command = click.option("--api-key", default=None, help="API key (default: OPENFT_API_KEY).")(command)
    command = click.option("--base-url", default=None,
                           help=f"API base URL (default: OPENFT_BASE_URL or {DEFAULT_BASE_URL}).")(command)
    return command


def _client(base_url: str | None, api_key: str | None, as_json: bool) -> Client:
    return Client(base_url, api_key, as_json)


def _api_errors(function: Any) -> Any:
    """Show API errors as one clear line and a non-zero exit, not a traceback."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return function(*args, **kwargs)
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            where = f" ({body['param']})" if body.get("param") else ""
            raise click.ClickException(f"{exc.status_code}: {body.get('message', exc.message)}{where}") from None
        except openai.APIConnectionError as exc:
            raise click.ClickException(f"cannot reach the server: {exc}") from None

    return wrapper


def _print(client: Client, obj: Any, rows: list[list[str]], headers: list[str]) -> None:
    if client.as_json:
        data = obj.model_dump() if hasattr(obj, "model_dump") else obj
        click.echo(json.dumps(data, indent=2, default=str))
        return
    columns = zip(headers, *rows, strict=True)
    widths = [max(len(str(x)) for x in column) for column in columns]
    click.echo(click.style("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), bold=True))
    for row in rows:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))


def _when(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else "-"


STATUS_COLOURS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}


def _status(status: str) -> str:
    return click.style(status, fg=STATUS_COLOURS.get(status))


def register(main: click.Group, models: click.Group) -> None:
    from openft.evals_cli import evals

    main.add_command(files)
    main.add_command(jobs)
    main.add_command(evals)
    main.add_command(chat)
    models.add_command(models_list)
    models.add_command(models_export)


# ---------------------------------------------------------------------- files
@click.group()
def files() -> None:
    """Upload and list files."""


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", default="fine-tune", show_default=True)
@client_options
@_api_errors
def files_upload(path: Path, purpose: str, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Upload PATH (validated as a fine-tuning file when --purpose is fine-tune)."""
    client = _client(base_url, api_key, as_json)
    with path.open("rb") as handle:
        uploaded = client.sdk.files.create(file=handle, purpose=purpose)  # type: ignore[arg-type]
    _print(client, uploaded, [[uploaded.id, uploaded.filename, str(uploaded.bytes), uploaded.purpose]],
           ["ID", "FILENAME", "BYTES", "PURPOSE"])


@files.command("list")
@click.option("--purpose", default=None)
@client_options
@_api_errors
def files_list(purpose: str | None, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """List your files, newest first."""
    client = _client(base_url, api_key, as_json)
    page = client.sdk.files.list(**({"purpose": purpose} if purpose else {}))
    _print(client, page, [[f.id, f.filename, str(f.bytes), f.purpose, _when(f.created_at)] for f in page.data],
           ["ID", "FILENAME", "BYTES", "PURPOSE", "CREATED"])


# ----------------------------------------------------------------------- jobs
@click.group()
def jobs() -> None:
    """Create, watch and control fine-tuning jobs."""


def _file_id(client: Client, value: str | None) -> str | None:
    if value is None or value.startswith("file-") and not Path(value).exists():
        return value
    with Path(value).open("rb") as handle:
        uploaded = client.sdk.files.create(file=handle, purpose="fine-tune")
    if not client.as_json:
        click.echo(f"Uploaded {value} as {uploaded.id}", err=True)
    return uploaded.id


@jobs.command("create")
@click.option("--model", required=True, help="Base model id.")
@click.option("--training-file", required=True, help="A file id, or a local path to upload first.")
@click.option("--validation-file", default=None, help="A file id, or a local path to upload first.")
@click.option("--method", type=click.Choice(["supervised", "dpo", "reinforcement"]), default="supervised",
              show_default=True)
@click.option("--grader", "grader_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Reinforcement: a grader as a JSON file, or a .py file defining grade(sample, item).")
@click.option("--epochs", type=int, default=None, help="n_epochs (default: auto).")
@click.option("--batch-size", type=int, default=None, help="batch_size (default: auto).")
@click.option("--learning-rate-multiplier", type=float, default=None)
@click.option("--beta", type=float, default=None, help="DPO beta, or reinforcement KL weight (default: auto).")
@click.option("--training-type", type=click.Choice(["lora", "full"]), default=None)
@click.option("--reasoning-effort", type=click.Choice(["default", "low", "medium", "high"]), default=None,
              help="Reinforcement: the completion budget (low 64, default/medium 256, high 1024 tokens).")
@click.option("--suffix", default=None)
@click.option("--seed", type=int, default=None)
@click.option("--dry-run", is_flag=True, help="Estimate the job (tokens, steps, duration, memory, "
              "warnings) without creating it.")
@client_options
@_api_errors
def jobs_create(model: str, training_file: str, validation_file: str | None, method: str,
                grader_path: str | None, epochs: int | None, batch_size: int | None,
                learning_rate_multiplier: float | None,
                beta: float | None, training_type: str | None, reasoning_effort: str | None,
                suffix: str | None, seed: int | None, dry_run: bool,
                base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Create a fine-tuning job (uploading local files first); --dry-run estimates it instead."""
    client = _client(base_url, api_key, as_json)
    hyper = {k: v for k, v in {
        "n_epochs": epochs, "batch_size": batch_size, "learning_rate_multiplier": learning_rate_multiplier,
        "beta": beta, "training_type": training_type, "reasoning_effort": reasoning_effort}.items()
        if v is not None}
    extra = {k: v for k, v in {"suffix": suffix, "seed": seed,
                                "validation_file": _file_id(client, validation_file)}.items() if v is not None}
    chosen: dict[str, Any] = {"hyperparameters": hyper}
    if (method == "reinforcement") != (grader_path is not None):
        raise click.UsageError("--grader goes with --method reinforcement, and reinforcement needs one.")
    if grader_path is not None:
        chosen["grader"] = _grader(Path(grader_path))
    if dry_run:
        body = {"model": model, "training_file": _file_id(client, training_file) or training_file,
                "method": {"type": method, method: chosen}, **extra}
        _show_estimate(client, client.sdk.post("/fine_tuning/jobs/estimate", body=body, cast_to=object))
        return
    job = client.sdk.fine_tuning.jobs.create(
        model=model, training_file=_file_id(client, training_file) or training_file,
        method={"type": method, method: chosen},  # type: ignore[misc,dict-item]
        **extra,
    )
    _print(client, job, [[job.id, job.model, _status(job.status)]], ["ID", "MODEL", "STATUS"])


def _show_estimate(client: Client, estimate: Any) -> None:
    duration = estimate.get("estimated_duration_seconds")
    memory = estimate.get("estimated_peak_memory_bytes")
    rows = [
        ["examples", str(estimate["training_examples"])],
        ["tokens per epoch", str(estimate["training_tokens"])],
        ["steps", f"{estimate['total_steps']} ({estimate['steps_per_epoch']} per epoch)"],
        ["trained_tokens", str(estimate["trained_tokens"] if estimate["trained_tokens"] is not None else "-")],
        ["duration", f"~{int(duration) // 60}m{int(duration) % 60:02d}s on {estimate['device']}" if duration else "-"],
        ["peak memory", f"~{memory / 2**30:.2f} GiB" if memory else "-"],
        ["hyperparameters", json.dumps(estimate["hyperparameters"])],
    ] + [["warning", f"{w['code']}: {w['message']}"] for w in estimate["warnings"]]
    _print(client, estimate, rows, ["ESTIMATE", "VALUE"])


def _grader(path: Path) -> dict[str, Any]:
    """A grader from a file: JSON as it is, or Python source as a python grader named after the file."""
    text = path.read_text()
    if path.suffix == ".py":
        return {"type": "python", "name": path.stem, "source": text}
    try:
        return dict(json.loads(text))
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{path} is neither a .py file nor a JSON grader object: {exc}") from exc


@jobs.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@client_options
@_api_errors
def jobs_list(limit: int, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """List your jobs, newest first."""
    client = _client(base_url, api_key, as_json)
    page = client.sdk.fine_tuning.jobs.list(limit=limit)
    _print(client, page, [[j.id, j.model, _status(j.status), j.fine_tuned_model or "-", _when(j.created_at)]
                          for j in page.data], ["ID", "MODEL", "STATUS", "FINE-TUNED MODEL", "CREATED"])


@jobs.command("get")
@click.argument("job_id")
@client_options
@_api_errors
def jobs_get(job_id: str, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Show one job."""
    client = _client(base_url, api_key, as_json)
    job = client.sdk.fine_tuning.jobs.retrieve(job_id)
    rows = [["id", job.id], ["status", _status(job.status)], ["model", job.model],
            ["fine_tuned_model", job.fine_tuned_model or "-"], ["trained_tokens", str(job.trained_tokens or "-")],
            ["hyperparameters", json.dumps(job.hyperparameters.model_dump())],
            ["created", _when(job.created_at)], ["finished", _when(job.finished_at)]]
    if job.error:
        rows.append(["error", f"{job.error.code}: {job.error.message}"])
    _print(client, job, rows, ["FIELD", "VALUE"])


def _action(name: str) -> click.Command:
    @click.argument("job_id")
    @client_options
    @_api_errors
    def command(job_id: str, base_url: str | None, api_key: str | None, as_json: bool) -> None:
        client = _client(base_url, api_key, as_json)
        job = getattr(client.sdk.fine_tuning.jobs, name)(job_id)
        _print(client, job, [[job.id, _status(job.status)]], ["ID", "STATUS"])

    command.__doc__ = f"{name.capitalize()} a job."
    return click.command(name)(command)


for _name in ("cancel", "pause", "resume"):
    jobs.add_command(_action(_name))


@jobs.command("follow")
@click.argument("job_id")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls.")
@client_options
@_api_errors
def jobs_follow(job_id: str, interval: float, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Follow a job live: progress bar and events until it ends. Exit status:
    0 succeeded, 1 failed, 2 cancelled."""
    client = _client(base_url, api_key, as_json)
    tty = sys.stdout.isatty() and not as_json
    seen: set[str] = set()
    bar = ""
    while True:
        job = client.sdk.fine_tuning.jobs.retrieve(job_id)
        new = []
        for event in client.sdk.fine_tuning.jobs.list_events(job_id, limit=100):
            if event.id in seen:
                break
            new.append(event)
        for event in reversed(new):
            seen.add(event.id)
            if as_json:
                click.echo(json.dumps(event.model_dump()))
                continue
            if event.type == "metrics" and "total_steps" in (event.data or {}):
                bar = _progress(event.data or {}, job.estimated_finish, job.status)
                if tty:
                    click.echo("\r" + bar, nl=False)
                continue
            if tty and bar:
                click.echo()
            colour = {"warn": "yellow", "error": "red"}.get(event.level)
            click.echo(f"{_when(event.created_at)}  {click.style(event.message, fg=colour)}")
            if tty and bar:
                click.echo("\r" + bar, nl=False)
        if job.status in ("succeeded", "failed", "cancelled"):
            if tty and bar:
                click.echo()
            if not as_json:
                detail = job.fine_tuned_model if job.status == "succeeded" else (job.error.message if job.error else "")
                click.echo(f"Job {job.id} {_status(job.status)}" + (f": {detail}" if detail else ""))
            sys.exit({"succeeded": 0, "failed": EXIT_FAILED}.get(job.status, EXIT_CANCELLED))
        time.sleep(interval)


def _progress(data: dict[str, Any], estimated_finish: int | None, status: str) -> str:
    step, total = int(data.get("step", 0)), int(data.get("total_steps", 0) or 1)
    filled = int(30 * step / total)
    eta = max(0, int(estimated_finish - time.time())) if estimated_finish else None
    eta_text = f"ETA {eta // 60:02d}:{eta % 60:02d}" if eta is not None else "ETA --:--"
    loss = data.get("train_loss")
    loss_text = f"  loss={loss:.4f}" if loss is not None else ""
    return f"[{'#' * filled}{'.' * (30 - filled)}] {step}/{total}{loss_text}  {eta_text}  {status}"


# --------------------------------------------------------------- models, chat
@click.command("list")
@client_options
@_api_errors
def models_list(base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """List base and fine-tuned models (through the API)."""
    client = _client(base_url, api_key, as_json)
    page = client.sdk.models.list()
    _print(client, {"object": "list", "data": [m.model_dump() for m in page.data]},
           [[m.id, m.owned_by, _when(m.created)] for m in page.data], ["ID", "OWNED BY", "CREATED"])


@click.command("export")
@click.argument("model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--merged", is_flag=True, help="A LoRA model's adapter folded into the base weights "
              "(a plain transformers folder) instead of the adapter alone.")
@client_options
@_api_errors
def models_export(model: str, directory: Path, merged: bool, base_url: str | None, api_key: str | None,
                  as_json: bool) -> None:
    """Download MODEL (a fine-tuned model or checkpoint) into DIRECTORY as a
    Hugging Face folder: the LoRA adapter, or with --merged full weights."""
    import tarfile
    from urllib.parse import quote

    import httpx

    client = _client(base_url, api_key, as_json)
    if directory.exists() and any(directory.iterdir()):
        raise click.UsageError(f"{directory} is not empty.")
    url = f"{str(client.sdk.base_url).rstrip('/')}/models/{quote(model, safe='/:')}/export"
    headers = {"Authorization": f"Bearer {client.sdk.api_key}"}
    with httpx.stream("GET", url, params={"merged": str(merged).lower()}, headers=headers, timeout=None) as response:
        if response.status_code != 200:
            error = json.loads(response.read() or b"{}").get("error", {})
            where = f" ({error['param']})" if error.get("param") else ""
            raise click.ClickException(f"{response.status_code}: {error.get('message', response.text)}{where}")
        kind = response.headers.get("x-openft-export-kind", "")
        reader = io.BufferedReader(_ChunkReader(response.iter_raw()), buffer_size=1 << 20)
        files = 0
        with tarfile.open(fileobj=reader, mode="r|") as archive:
            for member in archive:
                member.name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                archive.extract(member, directory, filter="data")
                files += 1
    if as_json:
        click.echo(json.dumps({"model": model, "directory": str(directory), "kind": kind, "files": files}))
    else:
        click.echo(f"Exported {model} ({kind}, {files} files) to {directory}")


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (an HTTP body)."""

    def __init__(self, chunks: Any):
        self._chunks, self._left = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            self._left = next(self._chunks, None)  # type: ignore[arg-type]
            if self._left is None:
                self._left = b""
                return 0
        size = min(len(buffer), len(self._left))
        buffer[:size], self._left = self._left[:size], self._left[size:]
        return size


@click.command()
@click.argument("model")
@click.argument("prompt")
@click.option("--system", default=None, help="A system message.")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@client_options
@_api_errors
def chat(model: str, prompt: str, system: str | None, max_tokens: int, temperature: float,
         base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Ask MODEL one question; the answer streams as it is generated."""
    client = _client(base_url, api_key, as_json)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if as_json:
        reply = client.sdk.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                   max_tokens=max_tokens, temperature=temperature)
        click.echo(json.dumps(reply.model_dump(), indent=2))
        return
    for chunk in client.sdk.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                    max_tokens=max_tokens, temperature=temperature, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            click.echo(chunk.choices[0].delta.content, nl=False)
    click.echo()
