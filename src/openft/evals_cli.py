"""``openft evals``: create an eval, run it on a model or a file of samples,
and read its runs and items, through the official OpenAI SDK (the options of
``openft.client_cli``: ``--base-url``, ``--api-key``, ``--json``).

    openft evals create --name qa --item-schema schema.json --criterion exact.json --criterion grade.py
    openft evals run EVAL_ID --data items.jsonl --model ft:... --prompt "{{item.question}}" --follow
    openft evals run EVAL_ID --data graded.jsonl              # a jsonl run: the rows carry their samples
    openft evals list                                         # evals, newest first
    openft evals get EVAL_ID [RUN_ID]                         # an eval and its runs, or one run per criterion
    openft evals items EVAL_ID RUN_ID [--status fail]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from openft.client_cli import EXIT_CANCELLED, EXIT_FAILED, Client, _api_errors, _client, _grader, _print, _when
from openft.client_cli import client_options as options

FINISHED = ("completed", "failed", "canceled")
STATUS_COLOURS = {"completed": "green", "failed": "red", "canceled": "yellow", "in_progress": "cyan",
                  "pass": "green", "fail": "red", "error": "yellow"}


def _status(status: str) -> str:
    return click.style(status, fg=STATUS_COLOURS.get(status))


def _rate(counts: Any) -> str:
    graded = counts.passed + counts.failed + counts.errored
    return f"{counts.passed}/{graded} ({100 * counts.passed / graded:.0f}%)" if graded else "-"


@click.group()
def evals() -> None:
    """Measure models: evals (data shape + testing criteria) and their runs."""


@evals.command("create")
@click.option("--name", default=None, help="The eval's name.")
@click.option("--item-schema", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSON Schema of each item (default: any object).")
@click.option("--criterion", "criteria", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A testing criterion: a JSON grader (with pass_threshold where it applies) or a .py "
                   "python grader. Repeat for several.")
@options
@_api_errors
def evals_create(name: str | None, item_schema: Path | None, criteria: tuple[Path, ...], base_url: str | None,
                 api_key: str | None, as_json: bool) -> None:
    """Create an eval."""
    client = _client(base_url, api_key, as_json)
    schema = json.loads(item_schema.read_text()) if item_schema else {"type": "object"}
    created = client.sdk.evals.create(
        name=name or "eval", data_source_config={"type": "custom", "item_schema": schema,
                                                  "include_sample_schema": True},
        testing_criteria=[_grader(path) for path in criteria])  # type: ignore[misc]
    _print(client, created, [[created.id, created.name, ", ".join(c.name for c in created.testing_criteria)]],
           ["ID", "NAME", "CRITERIA"])


def _source(client: Client, data: str) -> dict[str, Any]:
    if data.startswith("file-") and not Path(data).exists():
        return {"type": "file_id", "id": data}
    with Path(data).open("rb") as handle:
        uploaded = client.sdk.files.create(file=handle, purpose="evals")
    if not client.as_json:
        click.echo(f"Uploaded {data} as {uploaded.id}", err=True)
    return {"type": "file_id", "id": uploaded.id}


@evals.command("run")
@click.argument("eval_id")
@click.option("--data", required=True, help="A JSONL file ({\"item\": ...} per line) or the id of an uploaded one.")
@click.option("--model", default=None,
              help="Sample this model (base, ft: or checkpoint); without it, grade the samples the rows carry "
                   "({\"item\": ..., \"sample\": {\"output_text\": ...}}).")
@click.option("--prompt", default="{{item.input}}", show_default=True,
              help="The user message each item is sampled with ({{item.*}} filled in).")
@click.option("--system", default=None, help="A system message before it.")
@click.option("--temperature", type=float, default=None)
@click.option("--max-tokens", type=int, default=None, help="max_completion_tokens of each sample.")
@click.option("--seed", type=int, default=None)
@click.option("--name", default=None, help="The run's name (default: the model).")
@click.option("--follow", is_flag=True, help="Wait for the run to end; exit 1 if it failed, 2 if canceled.")
@options
@_api_errors
def evals_run(eval_id: str, data: str, model: str | None, prompt: str, system: str | None,
              temperature: float | None, max_tokens: int | None, seed: int | None, name: str | None, follow: bool,
              base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Run an eval on a model, or on the samples a file carries."""
    client = _client(base_url, api_key, as_json)
    source = _source(client, data)
    if model is None:
        data_source: dict[str, Any] = {"type": "jsonl", "source": source}
    else:
        template = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        sampling = {k: v for k, v in (("temperature", temperature), ("max_completion_tokens", max_tokens),
                                      ("seed", seed)) if v is not None}
        data_source = {"type": "completions", "model": model, "source": source, "sampling_params": sampling,
                       "input_messages": {"type": "template", "template": template}}
    run = client.sdk.evals.runs.create(eval_id, data_source=data_source,  # type: ignore[arg-type]
                                       **({"name": name} if name else {}))
    if not follow:
        _print(client, run, [[run.id, _status(run.status), run.model or "-"]], ["ID", "STATUS", "MODEL"])
        return
    while run.status not in FINISHED:
        time.sleep(0.5)
        run = client.sdk.evals.runs.retrieve(run.id, eval_id=eval_id)
    _show_run(client, run)
    sys.exit({"completed": 0, "failed": EXIT_FAILED}.get(run.status, EXIT_CANCELLED))


@evals.command("list")
@click.option("--limit", type=int, default=20, show_default=True)
@options
@_api_errors
def evals_list(limit: int, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """List your evals, newest first."""
    client = _client(base_url, api_key, as_json)
    page = client.sdk.evals.list(limit=limit, order="desc")
    _print(client, page, [[e.id, e.name, str(len(e.testing_criteria)), _when(e.created_at)] for e in page.data],
           ["ID", "NAME", "CRITERIA", "CREATED"])


@evals.command("get")
@click.argument("eval_id")
@click.argument("run_id", required=False)
@options
@_api_errors
def evals_get(eval_id: str, run_id: str | None, base_url: str | None, api_key: str | None, as_json: bool) -> None:
    """Show an eval and its runs' pass rates, or one run criterion by criterion."""
    client = _client(base_url, api_key, as_json)
    if run_id is not None:
        _show_run(client, client.sdk.evals.runs.retrieve(run_id, eval_id=eval_id))
        return
    runs = client.sdk.evals.runs.list(eval_id, order="desc", limit=100)
    _print(client, runs, [[r.id, r.name, r.model or "jsonl", _status(r.status), _rate(r.result_counts),
                           _when(r.created_at)] for r in runs.data],
           ["RUN", "NAME", "MODEL", "STATUS", "PASSED", "CREATED"])


def _show_run(client: Client, run: Any) -> None:
    rows = [[c.testing_criteria, str(c.passed), str(c.failed),
             f"{100 * c.passed / (c.passed + c.failed):.0f}%" if c.passed + c.failed else "-"]
            for c in run.per_testing_criteria_results]
    if client.as_json:
        _print(client, run, [], [])
        return
    counts = run.result_counts
    click.echo(f"Run {run.id} {_status(run.status)} on {run.model or 'jsonl samples'}: {_rate(counts)} passed, "
               f"{counts.failed} failed, {counts.errored} errored" + (f" ({run.error.message})" if run.error else ""))
    _print(client, run, rows, ["CRITERION", "PASSED", "FAILED", "RATE"])


@evals.command("items")
@click.argument("eval_id")
@click.argument("run_id")
@click.option("--status", type=click.Choice(["pass", "fail", "error"]), default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@options
@_api_errors
def evals_items(eval_id: str, run_id: str, status: str | None, limit: int, base_url: str | None,
                api_key: str | None, as_json: bool) -> None:
    """A run's output items: each item's answer and verdict."""
    client = _client(base_url, api_key, as_json)
    page = client.sdk.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=limit,
                                                   **({"status": status} if status else {}))  # type: ignore[arg-type]
    rows = []
    for item in page.data:
        answer = item.sample.output[0].content if item.sample.output else (
            item.sample.error.message if item.sample.error else "")
        answer = (answer or "").replace("\n", " ")
        rows.append([str(item.datasource_item_id), _status(item.status),
                     answer[:60] + ("…" if len(answer) > 60 else ""),
                     " ".join(f"{r.name.rsplit('-', 5)[0]}={r.score:g}" for r in item.results)])
    _print(client, page, rows, ["ITEM", "STATUS", "ANSWER", "SCORES"])
