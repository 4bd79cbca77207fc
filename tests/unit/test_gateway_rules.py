"""The gateway's rules without a server: the providers file, keys read at
use, the running server's reload, what reaches an upstream URL, what a
client sees of an upstream's error, and which ids are remembered."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from openft.errors import BadGateway, GatewayTimeout, InvalidRequest, UpstreamError
from openft.gateway.accounts import (
    AccountBook,
    CredentialMissing,
    ProviderAccount,
    ProvidersFileError,
    parse_accounts,
    read_accounts,
    write_accounts,
)
from openft.gateway.forward import failure, held_objects, upstream_path, upstream_query

EAST = {"kind": "openai-compatible", "base_url": "https://east.example.com/v1", "api_key_env": "EAST_KEY",
        "organizations": ["research"]}


@pytest.mark.parametrize(("text", "names"), [
    ("[]", "must be a JSON object"),
    ("{", "not JSON"),
    (json.dumps({"bad name!": EAST}), "account name 'bad name!'"),
    (json.dumps({"openft": {"kind": "openft"}}), "this deployment's own"),
    (json.dumps({"east": {**EAST, "base_url": "ftp://x"}}), "account 'east'"),
    (json.dumps({"east": {**EAST, "base_url": "https://user:pw@east.example.com/v1"}}), "without credentials"),
    (json.dumps({"east": {**EAST, "api_key_file": "/k"}}), "exactly one of api_key_env and api_key_file"),
    (json.dumps({"east": {**EAST, "api_key": "sk-in-the-file"}}), "field api_key"),
    (json.dumps({"east": {**EAST, "timeout_seconds": 0}}), "field timeout_seconds"),
    (json.dumps({"here": {"kind": "openft", "base_url": "https://x/v1"}}), "takes no base_url or key"),
    (json.dumps({"east": EAST, "east2": {**EAST, "base_url": "https://EAST.example.com/v1/"}}),
     "reach the same upstream with the same key"),
])
def test_a_providers_file_that_cannot_be_used_names_the_account_and_field(text: str, names: str) -> None:
    with pytest.raises(ProvidersFileError, match=names.replace("(", r"\(")):
        parse_accounts(text)


def test_the_key_is_read_at_use_from_its_source_and_never_written(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    by_env = ProviderAccount.model_validate(EAST)
    monkeypatch.delenv("EAST_KEY", raising=False)
    with pytest.raises(CredentialMissing, match="environment variable EAST_KEY") as missing:
        by_env.credential()
    monkeypatch.setenv("EAST_KEY", "sk-east-one\n")
    assert by_env.credential() == "sk-east-one"
    monkeypatch.setenv("EAST_KEY", "sk-east-two")  # rotated: no restart
    assert by_env.credential() == "sk-east-two"
    assert "sk-east" not in str(missing.value) + repr(by_env)

    key_file = tmp_path / "west.key"
    by_file = ProviderAccount.model_validate({**EAST, "api_key_env": None, "api_key_file": str(key_file)})
    with pytest.raises(CredentialMissing):
        by_file.credential()
    key_file.write_text("sk-west\n")
    assert by_file.credential() == "sk-west"

    path = tmp_path / "providers.json"
    write_accounts(path, {"east": by_env, "west": by_file})
    assert read_accounts(path) == {"east": by_env, "west": by_file}
    assert "sk-" not in path.read_text()


def test_organisations_are_matched_by_name_or_id_and_star_is_everyone() -> None:
    account = ProviderAccount.model_validate({**EAST, "organizations": ["research", "org-abc"]})
    assert account.allows("org-xyz", "research") and account.allows("org-abc", None)
    assert not account.allows("org-xyz", "other") and not account.allows("org-xyz", None)
    assert ProviderAccount.model_validate({**EAST, "organizations": ["*"]}).allows("org-any", None)
    assert not ProviderAccount.model_validate({**EAST, "organizations": []}).allows("org-any", "research")


def test_a_running_server_rereads_a_changed_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "providers.json"
    book = AccountBook(path)  # no file yet: only this deployment
    assert book.upstream_names() == frozenset() and list(book.usable("org-1", None)) == ["openft"]
    path.write_text(json.dumps({"east": EAST}))
    assert book.upstream_names() == {"east"}
    assert list(book.usable("org-1", "research")) == ["openft", "east"]
    assert list(book.usable("org-1", "other")) == ["openft"]
    path.write_text("{broken")
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert book.upstream_names() == {"east"}  # kept, and the error logged
    path.unlink()
    assert book.upstream_names() == frozenset() and book.get("openft") is not None


@pytest.mark.parametrize("path", ["/files/..", "/files/../admin", "/files/a b", "/files/%2e%2e", "/files/x\r\n",
                                  "/fine_tuning/jobs/" + "x" * 300])
def test_a_path_that_could_land_elsewhere_is_refused(path: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        upstream_path(path)
    assert refused.value.param == "path"


def test_ids_and_queries_reach_the_upstream_encoded() -> None:
    assert upstream_path("/fine_tuning/jobs/ftjob-1/events") == "/fine_tuning/jobs/ftjob-1/events"
    assert upstream_path("/files/ft:model:org::id") == "/files/ft%3Amodel%3Aorg%3A%3Aid"
    assert upstream_path("/files/http:/evil.example") == "/files/http%3A/evil.example"  # stays under the base URL
    assert upstream_query("after=a b&limit=2&x=%26y#frag") == "after=a+b&limit=2&x=%26y%23frag"
    assert upstream_query("") == ""


def test_what_a_client_sees_of_an_upstream_error() -> None:
    key = "sk-upstream-secret"
    body = json.dumps({"error": {"message": f"Bad key {key}? No: bad n_epochs", "type": "invalid_request_error",
                                 "param": "hyperparameters.n_epochs", "code": "invalid_value"}}).encode()
    bad = failure("east", 400, body, key, None)
    assert isinstance(bad, UpstreamError) and bad.status_code == 400
    assert (bad.message, bad.param, bad.code) == ("Bad key [redacted]? No: bad n_epochs",
                                                  "hyperparameters.n_epochs", "invalid_value")
    conflict = failure("east", 409, b"not json at all", key, None)
    assert (conflict.status_code, conflict.message, conflict.error_type) == (409, "not json at all",
                                                                             "invalid_request_error")
    refused = failure("east", 401, json.dumps({"error": {"message": f"Incorrect API key {key}"}}).encode(), key,
                      "req_9")
    assert isinstance(refused, BadGateway) and refused.code == "provider_auth_failed"
    assert key not in refused.message and "req_9" in refused.message and "'east'" in refused.message
    assert isinstance(failure("east", 500, b"", key, None), BadGateway)
    assert isinstance(failure("east", 504, b"", key, None), GatewayTimeout)
    assert failure("east", 503, b"", key, None).status_code == 502


def test_the_ids_an_answer_names_are_its_files_jobs_and_result_files() -> None:
    job = {"object": "fine_tuning.job", "id": "ftjob-1", "result_files": ["file-r", "../x"], "training_file": "f"}
    assert list(held_objects(job)) == [("ftjob-1", "fine_tuning.job"), ("file-r", "file")]
    listing = {"object": "list", "data": [{"object": "file", "id": "file-a"}, {"object": "fine_tuning.job.event",
                                                                               "id": "ftevent-1"}, "odd"]}
    assert list(held_objects(listing)) == [("file-a", "file")]
    assert list(held_objects([job])) == [] and list(held_objects({"object": "list", "data": 3})) == []


def test_the_object_a_routed_path_names() -> None:
    from openft.api.gateway import named_object, route_template

    checkpoint = "ft:org/base:team:suffix:abc:ckpt-step-6"
    assert named_object("/files/file-1/content") == ("file-1", "file")
    assert named_object("/fine_tuning/jobs/ftjob-1/events") == ("ftjob-1", "fine_tuning.job")
    assert named_object("/fine_tuning/jobs/estimate") is None and named_object("/files") is None
    assert named_object(f"/fine_tuning/checkpoints/{checkpoint}/permissions") == (checkpoint, "model")
    assert named_object(f"/fine_tuning/checkpoints/{checkpoint}/permissions/cp-1") == (checkpoint, "model")
    assert route_template("GET", "/fine_tuning/jobs/ftjob-1/events") == "GET /fine_tuning/jobs/{id}/events"


def test_every_file_and_fine_tuned_model_a_body_names_is_found_with_where() -> None:
    from openft.api.gateway import _named_in

    body = {"model": "ft:base:org:s:1", "training_file": "file-a", "method": {"type": "reinforcement",
            "reinforcement": {"grader": {"type": "multi", "graders": {"j": {"model": "ft:judge:org:s:2"},
                                                                       "k": {"model": "gpt-4o"}}}}},
            "integrations": [{"type": "eval", "eval": {"data_source": {"source": {"file_id": "file-b"}}}}]}
    assert [(where, ref.id, ref.kind) for where, ref in _named_in(body)] == [
        ("model", "ft:base:org:s:1", "model"), ("training_file", "file-a", "file"),
        ("method.reinforcement.grader.graders.j.model", "ft:judge:org:s:2", "model"),
        ("integrations.0.eval.data_source.source.file_id", "file-b", "file")]
