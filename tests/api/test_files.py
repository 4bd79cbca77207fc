"""Files API against a real server, with the official SDK and raw HTTP."""

from __future__ import annotations

import io
import json

import openai
import pytest

from support import Tenant, assert_matches_schema, chat_example, chat_file, jsonl

pytestmark = pytest.mark.api


def upload(tenant: Tenant, data: bytes, purpose: str = "fine-tune", name: str = "train.jsonl"):
    return tenant.sdk.files.create(file=(name, io.BytesIO(data)), purpose=purpose)


class TestUploadAndRead:
    def test_roundtrip_with_sdk(self, tenant: Tenant) -> None:
        data = chat_file(12)
        created = upload(tenant, data)
        assert created.id.startswith("file-")
        assert (created.bytes, created.filename, created.purpose) == (len(data), "train.jsonl", "fine-tune")
        assert_matches_schema(created.model_dump(exclude_unset=True), "OpenAIFile")

        assert tenant.sdk.files.retrieve(created.id).id == created.id
        assert tenant.sdk.files.content(created.id).read() == data

        with tenant.http() as http:
            raw = http.get(f"/files/{created.id}")
            assert_matches_schema(raw.json(), "OpenAIFile")
            listing = http.get("/files").json()
            assert_matches_schema(listing, "ListFilesResponse")
            assert [f["id"] for f in listing["data"]] == [created.id]

        deleted = tenant.sdk.files.delete(created.id)
        assert deleted.deleted and deleted.id == created.id
        with pytest.raises(openai.NotFoundError):
            tenant.sdk.files.retrieve(created.id)

    def test_any_purpose_stores_any_bytes(self, tenant: Tenant) -> None:
        blob = bytes(range(256)) * 100
        created = upload(tenant, blob, purpose="user_data", name="blob.bin")
        assert tenant.sdk.files.content(created.id).read() == blob

    def test_purpose_after_file_part_still_validates(self, tenant: Tenant) -> None:
        body = (
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\n"
            b"not json\n\r\n--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
            b"fine-tune\r\n--B--\r\n"
        )
        with tenant.http() as http:
            response = http.post(
                "/files", content=body, headers={"content-type": "multipart/form-data; boundary=B"}
            )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"

    def test_list_filters_orders_and_paginates(self, tenant: Tenant) -> None:
        ids = [upload(tenant, chat_file(1)).id for _ in range(3)]
        other = upload(tenant, b"x", purpose="user_data").id
        with tenant.http() as http:
            newest = http.get("/files", params={"purpose": "fine-tune"}).json()
            assert [f["id"] for f in newest["data"]] == ids[::-1]
            oldest = http.get("/files", params={"order": "asc", "limit": 2}).json()
            assert [f["id"] for f in oldest["data"]] == ids[:2] and oldest["has_more"]
            rest = http.get("/files", params={"order": "asc", "after": oldest["last_id"]}).json()
            assert [f["id"] for f in rest["data"]] == [ids[2], other]
            assert rest["has_more"] is False
        assert {f.id for f in tenant.sdk.files.list()} == {*ids, other}


@pytest.mark.stores("sqlite")  # validation while streaming: the same on every store
class TestBadFiles:
    CASES = [
        (jsonl([chat_example(0)]) + b'{"messages": [{"role": "user", "content": "hi"}]}\n', 2, "mixed_formats"),
        (jsonl([chat_example(0)]) + b"{oops\n", 2, "invalid_json"),
        (jsonl([chat_example(0)] * 2) + b'{"prompt": "a", "completion": "b"}\n', 3, "mixed_formats"),
        (jsonl([chat_example(0)]) + b'"text"\n', 2, "invalid_line_type"),
        (jsonl([chat_example(0)]) + b'{"messages": ["\xff"]}\n', 2, "invalid_encoding"),
    ]

    @pytest.mark.parametrize("data,line,code", CASES, ids=[c for _, _, c in CASES])
    def test_rejected_with_line_number(self, tenant: Tenant, data: bytes, line: int, code: str) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            upload(tenant, data)
        error = caught.value.body
        assert error["param"] == "file"
        assert error["code"] == code
        assert f"Line {line}:" in error["message"]
        assert tenant.sdk.files.list().data == []

    def test_empty_file(self, tenant: Tenant) -> None:
        with pytest.raises(openai.BadRequestError) as caught:
            upload(tenant, b"")
        assert caught.value.body["code"] == "empty_file"

    def test_missing_or_unknown_purpose(self, tenant: Tenant) -> None:
        with tenant.http() as http:
            missing = http.post("/files", files={"file": ("a.jsonl", chat_file(1))})
            unknown = http.post("/files", files={"file": ("a.jsonl", b"x")}, data={"purpose": "nope"})
            no_file = http.post("/files", data={"purpose": "fine-tune"}, files={"other": ("a", b"x")})
            not_multipart = http.post("/files", json={"purpose": "fine-tune"})
        assert (missing.status_code, missing.json()["error"]["param"]) == (400, "purpose")
        assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "purpose")
        assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
        assert (not_multipart.status_code, not_multipart.json()["error"]["param"]) == (400, "file")

    def test_expiry(self, tenant: Tenant) -> None:
        created = tenant.sdk.files.create(
            file=("a.jsonl", io.BytesIO(chat_file(1))),
            purpose="fine-tune",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
        assert created.expires_at == created.created_at + 3600
        with pytest.raises(openai.BadRequestError) as caught:
            tenant.sdk.files.create(
                file=("a.jsonl", io.BytesIO(chat_file(1))),
                purpose="fine-tune",
                expires_after={"anchor": "created_at", "seconds": 60},
            )
        assert caught.value.body["param"] == "expires_after.seconds"


class TestSizeCap:
    def test_over_cap_is_413_and_nothing_is_kept(self, make_server) -> None:
        server = make_server("sqlite", OPENFT_MAX_FILE_BYTES=str(64 * 1024))
        tenant = Tenant(server, "default", server.api_key)
        line = json.dumps(chat_example(0)).encode() + b"\n"
        small = line * ((64 * 1024) // len(line))
        assert upload(tenant, small).bytes == len(small)
        with pytest.raises(openai.APIStatusError) as caught:
            upload(tenant, small + line * 2000)
        assert caught.value.status_code == 413
        assert caught.value.body["code"] == "file_too_large"
        assert len(tenant.sdk.files.list().data) == 1
        leftovers = [p for p in (server.home / "blobs").rglob("*") if p.is_file()]
        assert len(leftovers) == 1


def test_storage_url_can_be_any_fsspec_url(make_server) -> None:
    server = make_server("sqlite", OPENFT_STORAGE_URL="memory://openft-blobs")
    tenant = Tenant(server, "default", server.api_key)
    data = chat_file(12)
    created = upload(tenant, data)
    assert tenant.sdk.files.content(created.id).read() == data
    assert not (server.home / "blobs").exists()
    assert tenant.sdk.files.delete(created.id).deleted


@pytest.mark.stores("sqlite", "s3")  # names are rows; downloads are blobs
class TestHostileFilenames:
    """The stored name is user text: it goes into a header and is shown back."""

    def _raw_upload(self, tenant: Tenant, filename: bytes) -> dict:
        body = (
            b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename
            + b"\"\r\n\r\nhello\r\n--B--\r\n"
        )
        with tenant.http() as http:
            response = http.post(
                "/files", content=body, headers={"content-type": "multipart/form-data; boundary=B"}
            )
        assert response.status_code == 200, response.text
        return response.json()

    def test_non_latin1_name_downloads_with_rfc5987_header(self, tenant: Tenant) -> None:
        from urllib.parse import unquote

        created = upload(tenant, b"some bytes", purpose="user_data", name="训练数据.jsonl")
        assert created.filename == "训练数据.jsonl"
        with tenant.http() as http:
            response = http.get(f"/files/{created.id}/content")
        assert response.status_code == 200 and response.content == b"some bytes"
        header = response.headers["content-disposition"]
        assert header.isascii()
        star = header.split("filename*=UTF-8''", 1)[1]
        assert unquote(star) == "训练数据.jsonl"

    def test_quote_in_name_cannot_add_a_parameter(self, tenant: Tenant) -> None:
        created = self._raw_upload(tenant, b'a\\";filename=\\"evil.sh')
        with tenant.http() as http:
            header = http.get(f"/files/{created['id']}/content").headers["content-disposition"]
        # Exactly the two filename parameters we write, the ASCII one quote-free inside.
        params = [p.strip() for p in header.split(";")]
        assert params[0] == "attachment"
        assert [p.split("=", 1)[0] for p in params[1:]] == ["filename", "filename*"]
        fallback = params[1].split("=", 1)[1]
        assert fallback.startswith('"') and fallback.endswith('"') and '"' not in fallback[1:-1]

    @pytest.mark.parametrize(
        ("sent", "stored"),
        [
            (b"../../etc/passwd", "passwd"),
            (b"C:\\\\Users\\\\me\\\\train.jsonl", "train.jsonl"),
            (b"bad\x01\x1fname\x7f.jsonl", "badname.jsonl"),
            (b"..", "upload"),
        ],
    )
    def test_names_are_sanitised_at_upload(self, tenant: Tenant, sent: bytes, stored: str) -> None:
        assert self._raw_upload(tenant, sent)["filename"] == stored
