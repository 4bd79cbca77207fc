"""Streaming ``multipart/form-data`` reader for ``POST /files``.

The body is parsed as it arrives (python-multipart's push parser) and the
file part goes straight into an :class:`~openft.services.files.Upload`, one
network chunk at a time, in a worker thread. Nothing buffers the whole file;
small form fields (``purpose``, ``expires_after[...]``) are kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from openft.errors import InvalidRequest, PayloadTooLarge
from openft.services.files import FINE_TUNE, Upload
from openft.store.blobs import BlobStore

MAX_FIELD_BYTES = 4096
# Past the cap the rest of the body is read and dropped, so an ordinary client
# still receives the 413 response; beyond this much more, the connection is dropped.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass
class ReceivedUpload:
    upload: Upload
    filename: str
    fields: dict[str, str]


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


class _FormState:
    """Turns python-multipart callbacks into parts, routing file bytes to ``pending``."""

    def __init__(self, start_upload: _UploadStarter):
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None
        self.filename = "upload"
        self.pending: list[bytes] = []
        self._start_upload = start_upload
        self._part = _Part()
        self._header_field = b""
        self._header_value = b""
        self._in_file = False
        self.complete = False
        """The closing boundary arrived (a body cut short never gets there)."""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda d, s, e: self._grow("_header_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._grow("_header_value", d[s:e]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_end(self) -> None:
        self.complete = True

    def _grow(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_end(self) -> None:
        self._part.headers[self._header_field.decode("latin-1").lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get("content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._in_file = filename is not None and self._part.name == "file"
        if self._in_file:
            if self.upload is not None:
                raise InvalidRequest("Send exactly one file per upload.", param="file")
            self.filename = filename.decode("utf-8", "replace") or "upload"  # type: ignore[union-attr]
            purpose = self.fields.get("purpose")
            self.upload = self._start_upload(None if purpose is None else purpose == FINE_TUNE)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(data[start:end])
            return
        self._part.value += data[start:end]
        if len(self._part.value) > MAX_FIELD_BYTES:
            raise InvalidRequest(
                f"Form field {self._part.name!r} is too long.", param=self._part.name or None
            )

    def _on_part_end(self) -> None:
        if not self._in_file and self._part.name:
            self.fields[self._part.name] = self._part.value.decode("utf-8", "replace")
        self._in_file = False


class _UploadStarter:
    def __init__(self, blobs: BlobStore, org_id: str, max_bytes: int):
        self.blobs, self.org_id, self.max_bytes = blobs, org_id, max_bytes

    def __call__(self, validate: bool | None) -> Upload:
        return Upload(self.blobs, self.org_id, self.max_bytes, validate=validate)


async def receive_upload(
    request: Request, blobs: BlobStore, org_id: str, max_bytes: int
) -> ReceivedUpload:
    """Stream the request's file part into blob storage; raise on a bad form.

    The returned upload is not finished: the caller checks ``purpose`` and
    calls ``upload.finish`` (which validates and commits the blob).
    """
    boundary = _boundary(request.headers.get("content-type", ""))
    state = _FormState(_UploadStarter(blobs, org_id, max_bytes))
    parser = MultipartParser(boundary, state.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except InvalidRequest:
                raise
            except Exception as exc:
                raise InvalidRequest(f"Malformed multipart body: {exc}", param="file") from None
            if state.pending and state.upload is not None:
                data, state.pending = b"".join(state.pending), []
                await anyio.to_thread.run_sync(state.upload.write, data)
                if state.upload.size > max_bytes + DRAIN_LIMIT_BYTES:
                    break
        parser.finalize()
        if not state.complete and not (state.upload is not None and state.upload.too_large):
            raise InvalidRequest("Malformed multipart body: it ends before its closing boundary "
                                 "(the upload was cut short).", param="file")
    except BaseException:
        if state.upload is not None:
            await anyio.to_thread.run_sync(state.upload.abort)
        raise
    if state.upload is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    if state.upload.too_large:
        await anyio.to_thread.run_sync(state.upload.abort)
        raise PayloadTooLarge(
            f"File is larger than the maximum upload size of {max_bytes} bytes.",
            param="file",
            code="file_too_large",
        )
    return ReceivedUpload(upload=state.upload, filename=state.filename, fields=state.fields)


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type.encode("latin-1"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Upload files as multipart/form-data with the fields 'file' and 'purpose'.",
            param="file",
        )
    return boundary
