"""Files: streaming uploads into blob storage, validation of fine-tune files,
listing, download and deletion.

An :class:`Upload` receives the bytes of one file as they arrive; it writes
them to a temporary blob and, for ``purpose=fine-tune``, validates them on the
way, so neither memory nor a second pass grows with file size. Its methods
block (file I/O, JSON parsing): async callers run them in a worker thread.
The cap ``OPENFT_MAX_FILE_BYTES`` is enforced while streaming.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from openft import domain
from openft.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from openft.schemas.files import DeleteFileResponse, ListFilesResponse, OpenAIFile
from openft.services.validation import FileSummary, FileValidationError, TrainingFileValidator
from openft.store.blobs import BlobStore
from openft.store.db import Transaction
from openft.store.queries import files as file_queries
from openft.store.queries.reads import Db
from openft.store.tables import File

FINE_TUNE = "fine-tune"
MAX_FILENAME_CHARS = 255


class Upload:
    """One file upload in flight. ``validate`` may be decided late (the
    ``purpose`` field can follow the file in a multipart body): until then the
    validator runs anyway and its verdict is used only for fine-tune files."""

    def __init__(self, blobs: BlobStore, org_id: str, max_bytes: int, *, validate: bool | None):
        self.file_id = domain.new_id("file")
        self.storage_key = f"files/{org_id}/{self.file_id}"
        self.size = 0
        self.too_large = False
        self._max_bytes = max_bytes
        self._validator = TrainingFileValidator() if validate is not False else None
        self._writer = blobs.writer(self.storage_key)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.too_large:
            return
        if self.size > self._max_bytes:
            self.too_large = True
            self._writer.abort()
            return
        self._writer.write(data)
        if self._validator is not None:
            self._validator.feed(data)

    def finish(self, purpose: str) -> FileSummary | None:
        """Check the whole file; commit the blob, or remove it and raise."""
        try:
            if self.too_large:
                raise PayloadTooLarge(
                    f"File is larger than the maximum upload size of {self._max_bytes} bytes.",
                    param="file",
                    code="file_too_large",
                )
            summary = None
            if purpose == FINE_TUNE:
                assert self._validator is not None, "fine-tune upload was not validated"
                summary = _validated(self._validator)
            self._writer.commit()
            return summary
        except BaseException:
            self._writer.abort()
            raise

    def abort(self) -> None:
        self._writer.abort()


async def create_file(
    transaction: Transaction,
    blobs: BlobStore,
    org_id: str,
    upload: Upload,
    *,
    filename: str,
    fields: dict[str, str],
) -> OpenAIFile:
    """Finish a received upload: check its form fields, validate and commit
    the blob, record the row. Whatever fails, no blob is left behind."""
    try:
        purpose = check_purpose(fields.get("purpose"))
        lifetime = check_expiry(fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]"))
        summary = await anyio.to_thread.run_sync(upload.finish, purpose)
    except BaseException:
        await anyio.to_thread.run_sync(upload.abort)
        raise
    try:
        async with transaction() as session:
            return await record_upload(
                session, org_id, upload, summary,
                filename=filename, purpose=purpose, lifetime_seconds=lifetime,
            )
    except BaseException:
        await anyio.to_thread.run_sync(blobs.delete, upload.storage_key)
        raise


def _validated(validator: TrainingFileValidator) -> FileSummary:
    try:
        return validator.finish()
    except FileValidationError as problem:
        raise InvalidRequest(
            f"Invalid file format for fine-tuning. {problem.message}",
            param="file",
            code=problem.code,
        ) from None


def check_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in domain.FILE_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {purpose!r}; expected one of {', '.join(domain.FILE_PURPOSES)}.",
            param="purpose",
        )
    return purpose


def check_expiry(anchor: str | None, seconds: str | None) -> int | None:
    """``expires_after[anchor]`` / ``expires_after[seconds]`` as a lifetime in seconds."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    low, high = domain.FILE_EXPIRY_SECONDS_RANGE
    if seconds is None or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise InvalidRequest(
            f"expires_after[seconds] must be an integer between {low} and {high}.",
            param="expires_after.seconds",
        )
    return int(seconds)


def clean_filename(raw: str | None) -> str:
    """The name a client gave its upload, made safe to store and to show.

    Only the last path component is kept (a name is never a path), control
    and other non-printing characters are dropped, surrounding spaces and
    dots trimmed, and the result cut to ``MAX_FILENAME_CHARS``. Non-ASCII
    letters stay (``训练数据.jsonl`` is a fine name); nothing is left empty.
    """
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().strip(".").strip()[:MAX_FILENAME_CHARS]
    return name or "upload"


def content_disposition(filename: str) -> str:
    """``attachment`` with the name encoded per RFC 6266 / RFC 5987: an ASCII
    fallback (quotes, backslashes and separators replaced, for naive parsers) plus ``filename*=UTF-8''...``,
    so no name can add a parameter or break the Latin-1 header encoding."""
    fallback = "".join(
        c if 0x20 <= ord(c) < 0x7F and c not in '"\\;,' else "_"
        for c in unicodedata.normalize("NFKD", filename)
        if not unicodedata.combining(c)
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def record_upload(
    session: AsyncSession,
    org_id: str,
    upload: Upload,
    summary: FileSummary | None,
    *,
    filename: str,
    purpose: str,
    lifetime_seconds: int | None,
) -> OpenAIFile:
    created = datetime.now(UTC)
    row = await file_queries.create_file(
        session,
        File(
            id=upload.file_id,
            org_id=org_id,
            filename=clean_filename(filename),
            purpose=purpose,
            bytes=upload.size,
            storage_key=upload.storage_key,
            format=summary.format.value if summary else None,
            n_examples=summary.n_examples if summary else None,
            created_at=created,
            expires_at=created + timedelta(seconds=lifetime_seconds) if lifetime_seconds else None,
        ),
    )
    return file_to_wire(row)


async def get_file(db: Db, org_id: str, file_id: str) -> File:
    row = await file_queries.read_file(db, org_id, file_id)
    if row is None:
        raise NotFound("file", file_id)
    return row


async def list_files(
    db: Db,
    org_id: str,
    *,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: str,
) -> ListFilesResponse:
    page = await file_queries.list_files(
        db, org_id, purpose=purpose, after=after, limit=limit, newest_first=order == "desc"
    )
    data = [file_to_wire(row) for row in page.items]
    return ListFilesResponse(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


async def delete_file(session: AsyncSession, org_id: str, file_id: str) -> tuple[DeleteFileResponse, str]:
    """Delete the row (the caller removes the blob after commit, see ``storage_key``)."""
    row = await get_file(session, org_id, file_id)
    if not await file_queries.delete_file(session, org_id, file_id):
        raise NotFound("file", file_id)
    if await file_queries.file_in_active_job(session, org_id, file_id):
        raise Conflict(
            f"File {file_id} is used by a fine-tuning job that has not finished; "
            "cancel the job or wait for it to end before deleting the file.",
            param="file_id",
            code="file_in_use",
        )
    return DeleteFileResponse(id=file_id, deleted=True), row.storage_key


def read_chunks(blobs: BlobStore, storage_key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The blob's bytes in chunks (blocking; iterate it in a worker thread)."""
    with blobs.open(storage_key) as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


async def stream_content(blobs: BlobStore, storage_key: str) -> AsyncIterator[bytes]:
    """The blob's bytes, each chunk read in a worker thread."""
    chunks = read_chunks(blobs, storage_key)
    while chunk := await anyio.to_thread.run_sync(next, chunks, b""):
        yield chunk


def download_headers(row: Any) -> dict[str, str]:
    return {"content-length": str(row.bytes), "content-disposition": content_disposition(row.filename)}


def file_to_wire(row: Any) -> OpenAIFile:
    return OpenAIFile(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        expires_at=int(row.expires_at.timestamp()) if row.expires_at else None,
        filename=row.filename,
        purpose=row.purpose,
    )

