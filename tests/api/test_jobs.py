"""Fine-tuning jobs API against a real server: SDK flows, limits, state machine."""

from __future__ import annotations

import io
import json
from typing import Any

import openai
import pytest

from support import SMOLLM, Tenant, assert_matches_schema, chat_file, jsonl, preference_example

pytestmark = pytest.mark.api


@pytest.fixture
def training_file(tenant: Tenant) -> str:
    return tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id


def create(tenant: Tenant, training_file: str, **kwargs: Any):
    return tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training_file, **kwargs)


def other_tenant_sees_nothing(tenant: Tenant, training_file: str) -> bool:
    stranger = Tenant(tenant.server, "stranger-meta", tenant.server.new_key("stranger-meta"))
    return stranger.sdk.fine_tuning.jobs.list(metadata={"team": "a"}).data == []


def post_job(tenant: Tenant, body: dict[str, Any], prefix: str = "/v1", **headers: str):
    with tenant.http(prefix) as http:
        return http.post("/fine_tuning/jobs", json=body, headers=headers)


@pytest.mark.stores("sqlite", "postgres")  # nothing of a job is a blob
class TestCreateAndRead:
    def test_create_defaults(self, tenant: Tenant, training_file: str) -> None:
        job = create(tenant, training_file)
        assert job.id.startswith("ftjob-")
        assert job.status == "queued"
        assert job.model == SMOLLM and job.training_file == training_file
        assert job.fine_tuned_model is None and job.finished_at is None
        assert job.result_files == [] and job.trained_tokens is None and job.error is None
        assert 0 <= job.seed <= 2147483647
        assert job.method.type == "supervised"
        auto = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        assert job.method.supervised.hyperparameters.model_dump() == auto
        assert job.hyperparameters.model_dump() == auto

        with tenant.http() as http:
            raw = http.get(f"/fine_tuning/jobs/{job.id}").json()
        assert_matches_schema(raw, "FineTuningJob")
        assert raw["organization_id"].startswith("org-")
        assert tenant.sdk.fine_tuning.jobs.retrieve(job.id).model_dump() == job.model_dump()

    def test_create_with_everything(self, tenant: Tenant, training_file: str) -> None:
        validation = tenant.sdk.files.create(
            file=("v.jsonl", io.BytesIO(chat_file(3))), purpose="fine-tune"
        ).id
        job = create(
            tenant,
            training_file,
            validation_file=validation,
            suffix="my-model",
            seed=42,
            metadata={"team": "search"},
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 0.5}}},
            integrations=[],
        )
        assert (job.seed, job.metadata, job.validation_file) == (42, {"team": "search"}, validation)
        assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
        assert job.method.supervised.hyperparameters.learning_rate_multiplier == 0.5
        assert not job.integrations
        with tenant.http() as http:
            raw = http.get(f"/fine_tuning/jobs/{job.id}").json()
        assert_matches_schema(raw, "FineTuningJob")
        assert raw["user_provided_suffix"] == "my-model"

    def test_integrations_are_checked_and_shown(self, tenant: Tenant, training_file: str) -> None:
        wandb = {"type": "wandb", "wandb": {"project": "p", "entity": "team", "tags": ["a"]}}
        mlflow = {"type": "mlflow", "mlflow": {"experiment": "e", "tags": {"k": "v"}}}
        job = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=training_file,
                                                 integrations=[wandb, mlflow])  # type: ignore[list-item]
        assert [i.model_dump(exclude_none=True) for i in job.integrations][0] == {
            "type": "wandb", "wandb": {"project": "p", "entity": "team", "tags": ["a"]}}
        with tenant.http() as http:
            assert http.get(f"/fine_tuning/jobs/{job.id}").json()["integrations"][1] == {
                "type": "mlflow", "mlflow": {"experiment": "e", "tags": {"k": "v"}}}
        for bad, param in [
            ({"type": "wandb", "mlflow": {"experiment": "e"}}, "integrations.0"),
            ({"type": "mlflow", "mlflow": {"experiment": "e", "typo": 1}}, "integrations.0.mlflow.typo"),
            ({"type": "wandb", "wandb": {"project": ""}}, "integrations.0.wandb.project"),
        ]:
            response = post_job(tenant, {"model": SMOLLM, "training_file": training_file, "integrations": [bad]})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == param, response.text

    def test_resources_need_the_ray_executor(self, tenant: Tenant, training_file: str) -> None:
        """These servers run the local executor: asking for workers is refused, not ignored."""
        body = {"model": SMOLLM, "training_file": training_file, "resources": {"workers": 2}}
        response = post_job(tenant, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("resources", "unsupported_resources")
        assert "OPENFT_EXECUTOR=ray" in error["message"]
        assert tenant.sdk.fine_tuning.jobs.list().data == []

    def test_deprecated_hyperparameters_map_to_supervised(self, tenant: Tenant, training_file: str) -> None:
        job = create(tenant, training_file, hyperparameters={"n_epochs": 3})
        assert job.method.type == "supervised"
        assert job.method.supervised.hyperparameters.n_epochs == 3

    def test_dpo(self, tenant: Tenant) -> None:
        prefs = tenant.sdk.files.create(
            file=("p.jsonl", io.BytesIO(jsonl([preference_example(i) for i in range(10)]))),
            purpose="fine-tune",
        ).id
        job = create(tenant, prefs, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}})
        assert job.method.type == "dpo"
        assert job.method.dpo.hyperparameters.beta == 0.1
        assert job.method.dpo.hyperparameters.n_epochs == "auto"

    def test_events_in_openai_wording(self, tenant: Tenant, training_file: str) -> None:
        job = create(tenant, training_file)
        events = tenant.sdk.fine_tuning.jobs.list_events(job.id).data
        assert [e.message for e in events] == [
            "Files validated, moving job to queued state",
            f"Validating training file: {training_file}",
            f"Created fine-tuning job: {job.id}",
        ]
        assert all(e.id.startswith("ftevent-") and e.level == "info" for e in events)
        with tenant.http() as http:
            raw = http.get(f"/fine_tuning/jobs/{job.id}/events", params={"limit": 1}).json()
            assert_matches_schema(raw, "ListFineTuningJobEventsResponse")
            assert raw["has_more"] is True and raw["data"][0]["id"] == events[0].id
            rest = http.get(
                f"/fine_tuning/jobs/{job.id}/events", params={"after": events[0].id}
            ).json()
            assert [e["id"] for e in rest["data"]] == [e.id for e in events[1:]]

    def test_checkpoints_empty_until_training(self, tenant: Tenant, training_file: str) -> None:
        job = create(tenant, training_file)
        assert tenant.sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []
        with tenant.http() as http:
            raw = http.get(f"/fine_tuning/jobs/{job.id}/checkpoints").json()
        assert_matches_schema(raw, "ListFineTuningJobCheckpointsResponse")


@pytest.mark.stores("sqlite", "postgres")  # queries differ by database
class TestListing:
    def test_auto_pagination_newest_first(self, tenant: Tenant, training_file: str) -> None:
        ids = [create(tenant, training_file).id for _ in range(7)]
        page = tenant.sdk.fine_tuning.jobs.list(limit=3)
        assert [j.id for j in page.data] == ids[::-1][:3] and page.has_more
        assert [j.id for j in tenant.sdk.fine_tuning.jobs.list(limit=3)] == ids[::-1]
        with tenant.http() as http:
            assert_matches_schema(http.get("/fine_tuning/jobs").json(), "ListPaginatedFineTuningJobsResponse")

    def test_pages_stay_correct_while_jobs_are_created(self, tenant: Tenant, training_file: str) -> None:
        before = [create(tenant, training_file).id for _ in range(9)][::-1]
        seen: list[str] = []
        after = None
        while True:
            page = tenant.sdk.fine_tuning.jobs.list(limit=2, **({"after": after} if after else {}))
            seen += [j.id for j in page.data]
            create(tenant, training_file)  # a newer job lands between page requests
            if not page.has_more:
                break
            after = page.data[-1].id
        assert seen == before

    def test_metadata_no_database_can_keep_is_a_400(self, tenant: Tenant, training_file: str) -> None:
        """A NUL (valid JSON and Unicode, but not text PostgreSQL keeps) in metadata, as a job's or as
        a filter: a 400 naming metadata on both databases (a 500 on PostgreSQL before)."""
        for metadata in ({"team": "a\x00b"}, {"te\x00am": "a"}):
            with pytest.raises(openai.BadRequestError) as bad:
                create(tenant, training_file, metadata=metadata)
            assert bad.value.body["param"] == "metadata" and "NUL" in bad.value.body["message"]
        with tenant.http() as http:
            listed = http.get("/fine_tuning/jobs", params={"metadata[team]": "a\x00"})
        assert (listed.status_code, listed.json()["error"]["param"]) == (400, "metadata")

    def test_metadata_filters(self, tenant: Tenant, training_file: str) -> None:
        a = create(tenant, training_file, metadata={"team": "a", "env": "prod"}).id
        b = create(tenant, training_file, metadata={"team": "b"}).id
        bare = create(tenant, training_file).id
        listed = lambda **m: [j.id for j in tenant.sdk.fine_tuning.jobs.list(metadata=m)]  # noqa: E731
        assert listed(team="a") == [a]
        assert listed(team="b") == [b]
        assert listed(team="a", env="dev") == []
        assert listed(env="prod", team="a") == [a]
        more = [create(tenant, training_file, metadata={"team": "a", "n": str(i)}).id for i in range(3)]
        pages, after = [], None
        while True:  # two per page, newest first, through the metadata index
            page = tenant.sdk.fine_tuning.jobs.list(metadata={"team": "a"}, limit=2, after=after)
            pages.append([j.id for j in page.data])
            if not page.has_more:
                break
            after = page.data[-1].id
        assert pages == [[more[2], more[1]], [more[0], a]]
        assert other_tenant_sees_nothing(tenant, training_file)
        with tenant.http() as http:
            nulls = http.get("/fine_tuning/jobs", params={"metadata": "null"}).json()
            bad = http.get("/fine_tuning/jobs", params={"metadata": "x"})
        assert [j["id"] for j in nulls["data"]] == [bare]
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "metadata")

    def test_status_filter(self, tenant: Tenant, training_file: str) -> None:
        """openft extension (the dashboard's status filter): ?status= keeps the
        jobs in that status, pages with the same cursors, and combines with
        metadata; an unknown status is a 400 naming the field."""
        ids = [create(tenant, training_file, metadata={"team": "s"}).id for _ in range(4)]
        for job_id in ids[:3]:
            tenant.sdk.fine_tuning.jobs.cancel(job_id)
        with tenant.http() as http:
            first = http.get("/fine_tuning/jobs", params={"status": "cancelled", "limit": 2}).json()
            after = first["data"][-1]["id"]
            rest = http.get("/fine_tuning/jobs", params={"status": "cancelled", "after": after}).json()
            queued = http.get("/fine_tuning/jobs", params={"status": "queued", "metadata[team]": "s"}).json()
            bad = http.get("/fine_tuning/jobs", params={"status": "done"})
        assert [j["id"] for j in first["data"] + rest["data"]] == ids[:3][::-1] and first["has_more"]
        assert [j["id"] for j in queued["data"]] == [ids[3]]
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "status")
        assert "cancelled" in bad.json()["error"]["message"]

    @pytest.mark.parametrize("params,param", [({"limit": 0}, "limit"), ({"limit": 101}, "limit"),
                                              ({"limit": "x"}, "limit"), ({"after": "ftjob-nope"}, "after")])
    def test_bad_list_parameters(self, tenant: Tenant, params: dict, param: str) -> None:
        with tenant.http() as http:
            response = http.get("/fine_tuning/jobs", params=params)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param


BODY_ERRORS = [
    ({"n_epochs": 0}, "n_epochs"),
    ({"n_epochs": 51}, "n_epochs"),
    ({"n_epochs": 2.5}, "n_epochs"),
    ({"n_epochs": "many"}, "n_epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 257}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
    ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
    ({"learning_rate_multiplier": "fast"}, "learning_rate_multiplier"),
    ({"unknown_knob": 1}, "unknown_knob"),
]


@pytest.mark.stores("sqlite")  # validation, before any store is touched
class TestLimits:
    @pytest.mark.parametrize("hyper,field", BODY_ERRORS, ids=[f"{f}={list(h.values())[0]}" for h, f in BODY_ERRORS])
    def test_supervised_hyperparameters(self, tenant: Tenant, training_file: str, hyper: dict, field: str) -> None:
        body = {"model": SMOLLM, "training_file": training_file,
                "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}
        response = post_job(tenant, body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == f"method.supervised.hyperparameters.{field}"
        deprecated = post_job(tenant, {"model": SMOLLM, "training_file": training_file, "hyperparameters": hyper})
        assert deprecated.json()["error"]["param"] == f"hyperparameters.{field}"

    @pytest.mark.parametrize("beta", [0, -0.5, 2.01, "big"])
    def test_dpo_beta(self, tenant: Tenant, beta: Any) -> None:
        body = {"model": SMOLLM, "training_file": "file-x",
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}}}
        response = post_job(tenant, body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "method.dpo.hyperparameters.beta"

    @pytest.mark.parametrize(
        "extra,param",
        [
            ({"seed": -1}, "seed"),
            ({"seed": 2147483648}, "seed"),
            ({"seed": "7"}, "seed"),
            ({"suffix": ""}, "suffix"),
            ({"suffix": "x" * 65}, "suffix"),
            ({"suffix": "a:b"}, "suffix"),
            ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
            ({"metadata": {"k" * 65: "v"}}, "metadata"),
            ({"metadata": {"k": "v" * 513}}, "metadata"),
            ({"metadata": {"k": 1}}, "metadata"),
            ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}] * 6}, "integrations"),
            ({"integrations": [{"type": "slack", "wandb": {"project": "p"}}]}, "integrations.0.type"),
            ({"method": {"type": "reinforcement", "reinforcement": {"grader": {}}}},
             "method.reinforcement.grader.type"),
            ({"method": {"type": "reinforcement", "reinforcement": {
                "grader": {"type": "string_check", "name": "s", "input": "a", "reference": "a", "operation": "eq"},
                "hyperparameters": {"compute_multiplier": 11}}}},
             "method.reinforcement.hyperparameters.compute_multiplier"),
            ({"method": {"type": "magic"}}, "method.type"),
            ({"method": {"type": "supervised", "dpo": {}}}, "method"),
            ({"model": "gpt-4o-mini"}, "model"),
            ({"model": None}, "model"),
            ({"training_file": None}, "training_file"),
            ({"training_file": "file-doesnotexist"}, "training_file"),
            ({"validation_file": "file-doesnotexist"}, "validation_file"),
            ({"resources": {"workers": 0}}, "resources.workers"),
            ({"resources": {"workers": 1.5}}, "resources.workers"),
            ({"resources": {"cpus_per_worker": 0}}, "resources.cpus_per_worker"),
            ({"resources": {"gpus_per_worker": -1}}, "resources.gpus_per_worker"),
            ({"resources": {"nodes": 2}}, "resources.nodes"),
        ],
    )
    def test_request_fields(self, tenant: Tenant, training_file: str, extra: dict, param: str) -> None:
        body = {"model": SMOLLM, "training_file": training_file, **extra}
        response = post_job(tenant, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param
        assert error["type"] == "invalid_request_error" and error["message"]

    def test_limits_at_their_edges_are_accepted(self, tenant: Tenant, training_file: str) -> None:
        job = create(
            tenant, training_file, seed=2147483647, suffix="s" * 64,
            metadata={f"{i:0>64}": "v" * 512 for i in range(16)},
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 50, "batch_size": 256, "learning_rate_multiplier": 1e-9}}},
        )
        assert job.seed == 2147483647
        dpo = tenant.sdk.files.create(
            file=("p.jsonl", io.BytesIO(jsonl([preference_example(i) for i in range(10)]))), purpose="fine-tune"
        ).id
        assert create(tenant, dpo, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 2}}}).status == "queued"

    def test_too_few_examples(self, tenant: Tenant) -> None:
        small = tenant.sdk.files.create(file=("s.jsonl", io.BytesIO(chat_file(9))), purpose="fine-tune").id
        with pytest.raises(openai.BadRequestError) as caught:
            create(tenant, small)
        assert caught.value.body["code"] == "invalid_n_examples"
        assert caught.value.body["param"] == "training_file"

    def test_file_format_must_fit_method(self, tenant: Tenant, training_file: str) -> None:
        prefs = tenant.sdk.files.create(
            file=("p.jsonl", io.BytesIO(jsonl([preference_example(i) for i in range(10)]))), purpose="fine-tune"
        ).id
        for body, param in (
            ({"training_file": prefs}, "training_file"),
            ({"training_file": training_file, "method": {"type": "dpo"}}, "training_file"),
            ({"training_file": training_file, "validation_file": prefs}, "validation_file"),
        ):
            response = post_job(tenant, {"model": SMOLLM, **body})
            assert response.status_code == 400
            assert response.json()["error"] | {"message": ""} == {
                "message": "", "type": "invalid_request_error", "param": param, "code": "invalid_file_format"}

    def test_file_purpose_must_be_fine_tune(self, tenant: Tenant) -> None:
        other = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="user_data").id
        response = post_job(tenant, {"model": SMOLLM, "training_file": other})
        assert response.json()["error"]["code"] == "invalid_file_purpose"

    def test_both_hyperparameter_places_conflict(self, tenant: Tenant, training_file: str) -> None:
        response = post_job(tenant, {
            "model": SMOLLM, "training_file": training_file, "hyperparameters": {"n_epochs": 1},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}})
        assert response.json()["error"]["param"] == "hyperparameters"

    def test_unknown_top_level_fields_are_ignored(self, tenant: Tenant, training_file: str) -> None:
        response = post_job(tenant, {"model": SMOLLM, "training_file": training_file, "stream": True})
        assert response.status_code == 200


@pytest.mark.stores("sqlite", "postgres")
class TestStateMachine:
    def test_pause_resume_cancel(self, tenant: Tenant, training_file: str) -> None:
        jobs = tenant.sdk.fine_tuning.jobs
        job = create(tenant, training_file)
        assert jobs.pause(job.id).status == "paused"
        assert jobs.retrieve(job.id).status == "paused"
        assert jobs.resume(job.id).status == "queued"
        cancelled = jobs.cancel(job.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        messages = [e.message for e in jobs.list_events(job.id).data]
        assert messages[:3] == [
            "Fine-tuning job cancelled",
            "Fine-tuning job resumed, moving job to queued state",
            "Fine-tuning job paused",
        ]

    @pytest.mark.parametrize("setup,action", [([], "resume"), (["pause"], "pause"), (["cancel"], "cancel"),
                                              (["cancel"], "pause"), (["cancel"], "resume")])
    def test_illegal_transitions_are_409(self, tenant: Tenant, training_file: str, setup: list, action: str) -> None:
        job = create(tenant, training_file)
        with tenant.http() as http:
            for step in setup:
                assert http.post(f"/fine_tuning/jobs/{job.id}/{step}").status_code == 200
            before = http.get(f"/fine_tuning/jobs/{job.id}").json()
            events_before = http.get(f"/fine_tuning/jobs/{job.id}/events").json()
            response = http.post(f"/fine_tuning/jobs/{job.id}/{action}")
            assert response.status_code == 409
            assert response.json()["error"]["code"] == "invalid_job_state"
            assert http.get(f"/fine_tuning/jobs/{job.id}").json() == before
            assert http.get(f"/fine_tuning/jobs/{job.id}/events").json() == events_before

    def test_unknown_job_is_404(self, tenant: Tenant) -> None:
        for call in (tenant.sdk.fine_tuning.jobs.retrieve, tenant.sdk.fine_tuning.jobs.cancel,
                     tenant.sdk.fine_tuning.jobs.list_events):
            with pytest.raises(openai.NotFoundError):
                call("ftjob-unknown")


@pytest.mark.stores("sqlite")
class TestGatewaySurface:
    def test_status_enum_on_api_llm(self, tenant: Tenant, training_file: str) -> None:
        job = create(tenant, training_file)
        tenant.sdk.fine_tuning.jobs.pause(job.id)
        with tenant.http("/api/llm") as gateway:
            shown = gateway.get(f"/fine_tuning/jobs/{job.id}").json()
            listed = gateway.get("/fine_tuning/jobs").json()["data"][0]
            resumed = gateway.post(f"/fine_tuning/jobs/{job.id}/resume").json()
        assert shown["status"] == listed["status"] == "queued"
        assert_matches_schema(shown, "FineTuningJob")
        assert resumed["status"] == "queued"
        assert tenant.sdk.fine_tuning.jobs.retrieve(job.id).status == "queued"

    def test_x_tfy_metadata_is_recorded_on_creation(self, tenant: Tenant, training_file: str) -> None:
        header = json.dumps({"team": "ml", "cost-center": "42"})
        response = post_job(tenant, {"model": SMOLLM, "training_file": training_file}, "/api/llm",
                            **{"x-tfy-metadata": header})
        assert response.status_code == 200
        job_id = response.json()["id"]
        events = tenant.sdk.fine_tuning.jobs.list_events(job_id).data
        created = [e for e in events if e.message.startswith("Created fine-tuning job")][0]
        assert created.data == {"x_tfy_metadata": {"team": "ml", "cost-center": "42"}}

    @pytest.mark.parametrize("header", ["not json", "[1]", '{"a": 1}', '"s"'])
    def test_bad_x_tfy_metadata(self, tenant: Tenant, training_file: str, header: str) -> None:
        response = post_job(tenant, {"model": SMOLLM, "training_file": training_file}, "/api/llm",
                            **{"x-tfy-metadata": header})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "x-tfy-metadata"

    def test_provider_header(self, tenant: Tenant, training_file: str) -> None:
        body = {"model": SMOLLM, "training_file": training_file}
        ok = post_job(tenant, body, "/api/llm", **{"x-tfy-provider-name": "openft"})
        bad = post_job(tenant, body, "/api/llm", **{"x-tfy-provider-name": "openai-main"})
        assert ok.status_code == 200
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-tfy-provider-name"


class TestFileInUse:
    def test_delete_is_409_until_the_job_ends(self, tenant: Tenant, training_file: str) -> None:
        job = create(tenant, training_file)
        with pytest.raises(openai.ConflictError) as caught:
            tenant.sdk.files.delete(training_file)
        assert caught.value.body["code"] == "file_in_use"
        assert tenant.sdk.files.retrieve(training_file).id == training_file
        tenant.sdk.fine_tuning.jobs.cancel(job.id)
        assert tenant.sdk.files.delete(training_file).deleted
        assert tenant.sdk.fine_tuning.jobs.retrieve(job.id).training_file == training_file


@pytest.mark.stores("sqlite", "postgres")  # the conditional UPDATE on each database
class TestConcurrentTransitions:
    def test_concurrent_cancels_apply_once(self, tenant: Tenant, training_file: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        job = create(tenant, training_file)
        with tenant.http() as http, ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(lambda _: http.post(f"/fine_tuning/jobs/{job.id}/cancel").status_code, range(8)))
        assert sorted(codes) == [200] + [409] * 7
        messages = [e.message for e in tenant.sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert messages.count("Fine-tuning job cancelled") == 1
