"""Entry point of an eval run's process: ``python -m openft.evals.run CONFIG.json``.

The process reads the run's items (checked and rendered when the run was
created), skips those an earlier attempt recorded, and for a completions
run submits them to openft's serving engine (``openft.serving.generator``)
as one stream of requests, at most ``2 x max_batch`` in flight, so the
engine decodes many items, of any adapter, in each step. Each answer is
planned exactly as a chat completion is (``serving.chat_plan.plan_request``:
chat template, tools, ``response_format`` grammar, reasoning) and read
back the same way (``completion_object``). Graders (python ones in their
sandbox, model graders judged by the same generator) grade each answer as it
finishes, while the engine goes on with the others, and one
:class:`~openft.training.records.EvalItemRecord` per item goes to the
worker. A jsonl run grades the samples its items carry.

A cancel (SIGTERM) cancels every generation in flight at once and exits
without an outcome. Any failure is one ``failed`` record.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openft.evals.config import EvalRunConfig, ModelWeights, sampling_fields
from openft.evals.criteria import grader_of
from openft.evals.items import RunItem
from openft.evals.tally import item_status, result_of
from openft.store.blobs import BlobStore
from openft.training.records import EvalDoneRecord, EvalItemRecord, FailedRecord, ModelUsage
from openft.training.report import PipeReporter, Reporter

if TYPE_CHECKING:
    from openft.graders.grader import Grader
    from openft.schemas.chat import ChatCompletion
    from openft.serving.generator import Generator
    from openft.serving.types import ModelRef

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
"""How often the process looks for a stop request while it waits for answers."""


@dataclass
class Answer:
    """One item's sample: the answer, or why there is none."""

    item: RunItem
    completion: ChatCompletion | None
    error: str | None
    prompt_tokens: int
    max_tokens: int


def run(config: EvalRunConfig, reporter: Reporter) -> None:
    from openft.graders.grader import Grader, GradingContext

    blobs = BlobStore(config.storage_url, config.storage_options)
    with blobs.open(config.items_key) as stream:
        items = [RunItem.from_dict(json.loads(line)) for line in stream if line.strip()]
    done = set(config.done)
    pending = [item for item in items if item.index not in done]
    generator = _generator(config) if config.model is not None or config.judges else None
    context = GradingContext(_limits(config), _judge(config, blobs, generator),
                             Path(e) if (e := config.grader_limits.get("embedding_model")) else None)
    graders = [Grader(grader_of(c), context) for c in config.criteria]
    try:
        if problem := next((p for g in graders if (p := g.unavailable())), None):
            reporter.emit(FailedRecord("python_grader_unavailable",
                                       f"Python graders cannot run on this worker: {problem}.", "testing_criteria"))
            return
        if config.model is not None:
            assert generator is not None and config.weights is not None
            ref = _ref(config.model, config.weights, blobs, config)
            for answer in _sampled(config, generator, ref, pending, reporter):
                reporter.emit(_graded_answer(config, graders, answer))
        else:
            for item in pending:
                if reporter.stop_requested():
                    return
                reporter.emit(_graded_row(config, graders, item))
        if not reporter.stop_requested():
            reporter.emit(EvalDoneRecord())
    finally:
        for grader in graders:
            grader.close()


# ------------------------------------------------------------------ sampling
def _sampled(config: EvalRunConfig, generator: Generator, ref: ModelRef, pending: list[RunItem],
             reporter: Reporter) -> Iterator[Answer]:
    """Answers as they finish (not in item order), keeping the engine's queue full."""
    from openft.errors import OpenFTError
    from openft.schemas.chat import ChatCompletionRequest
    from openft.serving.chat_plan import completion_object, fit_context, plan_request
    from openft.serving.types import Completions, StopSignal

    fields = sampling_fields(config.sampling)
    finished: queue.SimpleQueue[Answer] = queue.SimpleQueue()
    window = 2 * config.max_batch
    stops: list[StopSignal] = []
    upcoming = iter(pending)
    in_flight = 0

    def start(item: RunItem) -> Answer | None:
        """Queue one item; its Answer at once when it cannot be sampled."""
        try:
            body = ChatCompletionRequest.model_validate({"model": config.model, "messages": item.messages, **fields})
            plan = plan_request(generator, ref, body)
            params = fit_context(body.to_generation_params(), len(plan.prompt), plan.context,
                                 explicit=body.max_completion_tokens is not None)
        except OpenFTError as exc:
            return Answer(item, None, exc.message, 0, 0)
        stop = StopSignal(config.generation_timeout_seconds)
        stops.append(stop)
        completions = Completions(1)

        def sink(event: Any) -> None:  # the engine's thread
            try:
                if completions.add(event):
                    result = completion_object(config.model or "", len(plan.prompt), completions.result(), plan)
                    finished.put(Answer(item, result, None, len(plan.prompt), params.max_new_tokens))
            except Exception as exc:
                finished.put(Answer(item, None, f"{type(exc).__name__}: {exc}", len(plan.prompt),
                                    params.max_new_tokens))

        generator.submit(ref, plan.prompt, params, stop, sink, grammar=plan.grammar)
        return None

    while True:
        while in_flight < window and (item := next(upcoming, None)) is not None:
            refused = start(item)
            if refused is not None:
                yield refused
            else:
                in_flight += 1
        if in_flight == 0:
            return
        try:
            answer = finished.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if reporter.stop_requested():
                for stop in stops:
                    stop.cancel()
                return
            continue
        in_flight -= 1
        yield answer
        if reporter.stop_requested():
            for stop in stops:
                stop.cancel()
            return


def _graded_answer(config: EvalRunConfig, graders: list[Grader], answer: Answer) -> EvalItemRecord:
    from openft.graders.templates import sample_namespace

    fields = sampling_fields(config.sampling)
    sample: dict[str, Any] = {
        "input": answer.item.messages or [], "output": [], "finish_reason": "", "model": config.model,
        "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": answer.prompt_tokens,
                  "cached_tokens": 0},
        "error": None, "temperature": float(fields["temperature"]), "max_completion_tokens": answer.max_tokens,
        "top_p": float(fields["top_p"]), "seed": int(fields["seed"]),
    }
    if answer.completion is None:
        sample["error"] = {"code": "sampling_error", "message": answer.error or "no answer"}
        return EvalItemRecord(answer.item.index, answer.item.item, "error", sample, [], {})
    choice = answer.completion.choices[0]
    message = choice.message
    tools = [call.model_dump() for call in message.tool_calls or []]
    output: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if tools:
        output["tool_calls"] = tools
    usage = answer.completion.usage
    sample.update(output=[output], finish_reason=choice.finish_reason,
                  usage={"total_tokens": usage.total_tokens, "completion_tokens": usage.completion_tokens,
                         "prompt_tokens": usage.prompt_tokens, "cached_tokens": 0})
    spent = {config.model or "": ModelUsage(usage.prompt_tokens, usage.completion_tokens, 1)}
    return _graded(config, graders, answer.item, sample, sample_namespace(message.content or "", tools), spent)


def _graded_row(config: EvalRunConfig, graders: list[Grader], item: RunItem) -> EvalItemRecord:
    from openft.graders.templates import sample_namespace

    given = item.sample or {}
    text = given.get("output_text")
    sample = {"input": [], "output": [{"role": "assistant", "content": text}] if isinstance(text, str) else [],
              "finish_reason": str(given.get("finish_reason", "stop")), "model": str(given.get("model", "")),
              "usage": {"total_tokens": 0, "completion_tokens": 0, "prompt_tokens": 0, "cached_tokens": 0},
              "error": None, "temperature": 1.0, "max_completion_tokens": 0, "top_p": 1.0, "seed": 0}
    namespace = {**sample_namespace(text if isinstance(text, str) else ""), **given}
    return _graded(config, graders, item, sample, namespace, {})


def _graded(config: EvalRunConfig, graders: list[Grader], item: RunItem, sample: dict[str, Any],
            namespace: dict[str, Any], spent: dict[str, ModelUsage]) -> EvalItemRecord:
    results = []
    for criterion, grader in zip(config.criteria, graders, strict=True):
        grade = grader.grade(namespace, item.item)
        results.append(result_of(criterion, grade))
        for model, usage in grade.usage_per_model.items():  # a judge's call
            spent.setdefault(model, ModelUsage()).add(usage.prompt_tokens, usage.completion_tokens)
    return EvalItemRecord(item.index, item.item, item_status(results), sample, results, spent)


# ------------------------------------------------------------------ models
def _generator(config: EvalRunConfig) -> Generator:
    import torch

    from openft.serving.generator import Generator

    if config.threads:
        torch.set_num_threads(config.threads)
    return Generator(config.memory_budget_bytes, config.device, max_batch=config.max_batch,
                     max_queue=2 * config.max_batch)


def _ref(model: str, weights: ModelWeights, blobs: BlobStore, config: EvalRunConfig) -> ModelRef:
    from openft.weights import local_ref

    return local_ref(model, weights.base, weights.adapter_key, blobs, Path(config.models_dir))


def _limits(config: EvalRunConfig) -> Any:
    from openft.graders.sandbox import SandboxLimits

    python = config.grader_limits.get("python")
    return SandboxLimits.from_dict(python) if python else SandboxLimits()


def _judge(config: EvalRunConfig, blobs: BlobStore, generator: Generator | None) -> Any:
    if not config.judges:
        return None
    from openft.graders.judge import GeneratorJudge

    refs = {model: _ref(model, weights, blobs, config) for model, weights in config.judges.items()}
    return GeneratorJudge(generator, refs, config.generation_timeout_seconds)


def main() -> None:
    from openft.training.run import die_with_parent, reproducible_math

    reproducible_math()
    die_with_parent()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    reporter = PipeReporter.from_stdout()
    config = EvalRunConfig.load(Path(sys.argv[1]))
    if config.nice:
        os.nice(config.nice)
    try:
        run(config, reporter)
    except MemoryError:
        reporter.emit(FailedRecord("out_of_memory", "The eval run ran out of memory."))
    except Exception as exc:
        traceback.print_exc()
        reporter.emit(FailedRecord("internal_error", f"The eval run failed: {type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    main()
