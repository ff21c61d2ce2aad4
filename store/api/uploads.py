"""Streaming multipart uploads: an adapter directory arrives as one ``multipart/form-data``
request and is written straight to a staging directory, chunk by chunk.

Starlette's ``request.form()`` would spool every file to an anonymous temp file that then has
to be copied again; here each part goes to its own staged file once, and files are renamed
into place under their relative paths afterwards, so a 100 MB adapter costs one disk write
and a bounded amount of memory.

Each file part's ``filename`` is its path relative to the adapter directory
(``adapter_config.json``, ``weights/model.safetensors``); a ``paths`` field (JSON list) may
give them instead, in file-part order. Absolute paths, ``..``, backslashes and duplicates are
refused before anything is registered.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from events.untrusted import STORED_JSON, UntrustedJson, load_json
from store.errors import AdapterInvalid, BadRequest
from store.placement import clashing_paths, path_problem

MAX_FIELD_BYTES = 1 << 20  # metadata fields (provenance JSON) are small
MAX_FILES = 256
# Counted while parsing, so a body of a million tiny fields or one endless part header is
# refused before it is held in memory.
MAX_FIELDS = 64
MAX_PART_HEADER_BYTES = 16 * 1024


@dataclass
class StagedUpload:
    """What a multipart request carried: text fields and staged files (in part order)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, Path, int]] = field(default_factory=list)  # (filename, staged, size)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, _, size in self.files)

    def json_field(self, name: str, expected: type) -> Any:
        """The field parsed as JSON of type ``expected``; None when absent or empty."""
        raw = self.fields.get(name)
        if raw is None or not raw.strip():
            return None
        try:
            value = load_json(raw, STORED_JSON, what=f"field {name!r}")
        except UntrustedJson as exc:
            raise BadRequest(str(exc)) from None
        if not isinstance(value, expected):
            raise BadRequest(f"field {name!r} must be a JSON {expected.__name__}")
        return value


def safe_relative_path(raw: str) -> PurePosixPath:
    """``raw`` as a relative POSIX path that stays inside its directory.

    Raises ``BadRequest`` (code ``unsafe_path``) for absolute paths, ``..``, backslashes,
    drive letters, control characters, empty names and names the file system would refuse
    (``store.placement.path_problem``: components over 255 bytes, too deep, too long).
    """
    problem = path_problem(raw)
    if problem is not None:
        raise BadRequest(problem, code="unsafe_path")
    return PurePosixPath(raw)


def _disposition(value: bytes) -> dict[str, str]:
    _, params = parse_options_header(value)
    return {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}


async def receive_upload(request: Request, staging: Path, *, max_total_bytes: int) -> StagedUpload:
    """Stream the request's multipart body into ``staging`` and return what it carried.

    Guarantees: memory use is bounded by the chunk size plus ``MAX_FIELD_BYTES`` per field,
    at most ``MAX_FIELDS`` fields and ``MAX_PART_HEADER_BYTES`` of headers per part (each
    refused with ``BadRequest`` when crossed); a field that is not UTF-8 is ``BadRequest``;
    a body over ``max_total_bytes`` of file data fails with ``AdapterInvalid("file_too_large")``
    as soon as the limit is crossed; a non-multipart request, or a multipart body that does
    not parse or ends before its closing boundary, fails with ``BadRequest``. Files already
    staged stay in ``staging`` for the caller to remove.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest("expected a multipart/form-data body with the adapter's files")
    staging.mkdir(parents=True, exist_ok=True)
    upload = StagedUpload()
    state: dict[str, Any] = {"headers": {}, "name": b"", "value": b""}
    current: dict[str, Any] = {"fh": None, "field": None, "buf": None, "size": 0}

    def header_bytes(added: int) -> None:
        state["header_bytes"] = state.get("header_bytes", 0) + added
        if state["header_bytes"] > MAX_PART_HEADER_BYTES:
            raise BadRequest(f"a part's headers are larger than {MAX_PART_HEADER_BYTES} bytes")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_bytes(end - start)
        state["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_bytes(end - start)
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["name"].lower()] = state["value"]
        state["name"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disp = _disposition(state["headers"].get(b"content-disposition", b""))
        state["headers"], state["header_bytes"] = {}, 0
        current["size"] = 0
        if "filename" in disp:
            if len(upload.files) >= MAX_FILES:
                raise BadRequest(f"too many files (max {MAX_FILES})")
            staged = staging / f"part-{len(upload.files):04d}"
            fh: IO[bytes] = open(staged, "wb")  # noqa: SIM115 - closed in on_part_end
            current.update(fh=fh, field=None, staged=staged, filename=disp["filename"])
        else:
            state["fields"] = state.get("fields", 0) + 1
            if state["fields"] > MAX_FIELDS:
                raise BadRequest(f"too many form fields (max {MAX_FIELDS})")
            current.update(fh=None, field=disp.get("name", ""), buf=bytearray())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        n = end - start
        current["size"] += n
        if current["fh"] is not None:
            if upload.total_bytes + current["size"] > max_total_bytes:
                raise AdapterInvalid(
                    "file_too_large", f"upload exceeds the limit of {max_total_bytes} bytes"
                )
            # Plain write on the event loop: chunks are small and land in the page cache.
            current["fh"].write(data[start:end])
        else:
            if current["size"] > MAX_FIELD_BYTES:
                raise BadRequest(f"field {current['field']!r} is larger than {MAX_FIELD_BYTES}")
            current["buf"] += data[start:end]

    def on_part_end() -> None:
        if current["fh"] is not None:
            current["fh"].close()
            upload.files.append((current["filename"], current["staged"], current["size"]))
            current["fh"] = None
        elif current["field"]:
            try:
                upload.fields[current["field"]] = current["buf"].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"form field {current['field'][:64]!r} is not UTF-8") from None

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    finally:
        if current["fh"] is not None:
            current["fh"].close()
    # python-multipart's finalize() does not check that the body was complete.
    if parser.state != MultipartState.END:
        closing = "--" + boundary.decode("latin-1") + "--"
        raise BadRequest(f"malformed multipart body: it ends before the closing {closing!r}")
    return upload


def place_files(upload: StagedUpload, dest: Path) -> list[str]:
    """Move the staged files under ``dest`` at their (validated) relative paths.

    Returns the relative paths in order. Every path is checked before any file moves:
    ``BadRequest`` for unsafe (``unsafe_path``) or duplicate (``duplicate_path``) paths, a
    file that is also another's directory (``path_conflict``), a ``paths`` field whose length does not match, or an upload without files.
    """
    if not upload.files:
        raise BadRequest("no files uploaded: send the adapter's files as multipart file parts")
    names = upload.json_field("paths", list)
    if names is None:
        names = [filename for filename, _, _ in upload.files]
    elif len(names) != len(upload.files) or not all(isinstance(n, str) for n in names):
        raise BadRequest(f"'paths' must list {len(upload.files)} strings, one per file part")
    seen: set[PurePosixPath] = set()
    for raw in names:
        rel = safe_relative_path(raw)
        if rel in seen:
            raise BadRequest(f"file {raw[:128]!r} uploaded twice", code="duplicate_path")
        seen.add(rel)
    clash = clashing_paths(seen)
    if clash is not None:
        raise BadRequest(
            f"{clash[0][:128]!r} is uploaded as a file and as the directory of {clash[1][:128]!r}",
            code="path_conflict",
        )
    placed = []
    for raw, (_, staged, _) in zip(names, upload.files, strict=True):
        rel = PurePosixPath(raw)
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, target)
        placed.append(str(rel))
    return placed
