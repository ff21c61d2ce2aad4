"""Hostile and broken adapters uploaded through ``POST /v1/adapters`` on a live API.

Each case must be refused with its stable error code, run no code (the pickles would create
a marker file), leave no new blob referenced and no new version row, and leave the registry
healthy: a good adapter uploaded right after is accepted and ready.

The corpus is ``support.hostile``'s (shared with the formats and pipeline suites); its
cases include the HTTP layer's: upload file names, the upload size limit, base-model lookup
and the immutability of an existing version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session
from support.hostile import BASE, CASES, MAX_FILE, MAX_RANK, MAX_UPLOAD, fresh_seed, hf_adapter
from support.live_api import LiveRegistry, directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config

from store.blobs import referenced_blob_keys
from store.catalog import list_adapters

NS = "acme"


@dataclass
class Hostile:
    stack: LiveRegistry
    writer: str


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    """A live API on SQLite with tight limits (rank 16, 512 KiB per file, 4 MiB per upload),
    namespace ``acme`` (auto approval) and a writer token for it."""
    root = tmp_path_factory.mktemp("hostile")
    limits = {
        "max_lora_rank": MAX_RANK,
        "max_file_bytes": MAX_FILE,
        "max_adapter_bytes": MAX_UPLOAD,
    }
    with fresh_database("sqlite", root) as url, serve_registry(url, root, **limits) as stack:
        with stack.http(stack.admin_token) as admin:
            r = admin.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            assert r.status_code == 201, r.text
            body = {"name": NS, "approval_policy": "auto"}
            assert admin.post("/v1/namespaces", json=body).status_code == 201
        yield Hostile(stack, stack.mint("writer", NS, "ci"))


def _observed(stack: LiveRegistry) -> tuple[set[str], set[str], int]:
    """(referenced blob keys, stored blob keys, number of versions) right now."""
    with Session(stack.engine) as session:
        referenced = referenced_blob_keys(session)
        _, versions = list_adapters(session, namespaces=None)
    return referenced, {key for key, _ in stack.blobs.list_blobs()}, versions


@pytest.mark.parametrize("case_name", list(CASES))
def test_hostile_upload_is_refused_and_changes_nothing(
    hostile: Hostile, tmp_path: Path, case_name: str
) -> None:
    case = CASES[case_name](tmp_path)
    stack = hostile.stack
    coords = {"namespace": NS, "name": case_name.replace("_", "-"), "version": "1.0.0"}
    with stack.http(hostile.writer) as client:
        if case.first is not None:
            first = upload(client, case.first, base_model=case.base_model, **coords)
            assert first.status_code == 201, first.text
        referenced, stored, versions = _observed(stack)

        response = upload(client, case.files, base_model=case.base_model, **coords, **case.extra)
        assert response.status_code == case.status, response.text
        assert response.json()["error"]["code"] == case.code, response.text

        referenced_after, stored_after, versions_after = _observed(stack)
        assert referenced_after == referenced
        assert versions_after == versions
        if case.first is None:
            assert stored_after == stored  # refused before a single blob was written
        else:
            # Blobs of the rejected bytes may be stored before the conflict is seen; they are
            # orphans (never referenced) that the GC removes after its grace period.
            assert not (stored_after - stored) & referenced_after
        if case.marker is not None:
            assert not case.marker.exists(), "the pickle ran"
        assert not list(Path(stack.settings.home, "tmp").glob("upload-*")), "staging left over"

        good = directory_files(hf_adapter(tmp_path / "good", seed=fresh_seed()))
        accepted = upload(client, good, namespace=NS, name="good", version=f"1.{fresh_seed()}.0",
                          base_model=BASE)  # fmt: skip
        assert accepted.status_code == 201, accepted.text
        fetched = client.get(f"/v1/adapters/{accepted.json()['id']}").json()
        assert fetched["status"] == "ready"
        assert {f["path"] for f in fetched["files"]} >= {"adapter_config.json"}


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 20
    assert {c for c in CASES if c.startswith("pickle_")} >= {
        "pickle_adapter_model_bin_torch_zip",
        "pickle_nemo_model_weights_ckpt",
    }


@pytest.mark.parametrize(
    "body",
    [b"--B\r\nTrue--B--\r\n", b'--B\r\nContent-Disposition: form-data; name="x"\r\n', b"--B"],
    ids=["garbage_header_line", "cut_after_headers", "boundary_only"],
)
def test_malformed_multipart_body_is_400_not_500(hostile: Hostile, body: bytes) -> None:
    # Found by schemathesis (tests/fuzz): python-multipart's parse error escaped as a 500.
    with hostile.stack.http(hostile.writer) as client:
        response = client.post(
            "/v1/adapters",
            content=body,
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_request"
        assert not list(Path(hostile.stack.settings.home, "tmp").glob("upload-*"))
