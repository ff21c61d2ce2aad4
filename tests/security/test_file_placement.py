"""File placement gives typed refusals before the disk is touched (issue 12, class 5), and the
class-10 items at the edges of the formats and the artifact fetch.

* Uploaded paths (hypothesis over path lists, and a table through the real API on SQLite
  and PostgreSQL): a component over 255 bytes, too deep, a file that is also another file's
  directory, control characters, ``..``: ``400`` ``unsafe_path`` / ``path_conflict`` /
  ``duplicate_path``, never an ``OSError``, never a file outside the destination.
* An http(s) artifact whose last segment decodes to ``..`` (or ``.``, a NUL, 300 bytes) is
  ``artifact_not_allowed`` before any request; a good name from the same server downloads.
* The http(s) fetch connects to the address it checked (DNS rebinding): the pinned request
  reaches that address with the original ``Host``.
* S3: a bucket name the SDK refuses is ``artifact_not_allowed``; an endpoint whose answer is
  not S3's XML is ``artifact_unreachable`` (both were ``internal_error``).
* Safetensors/torch weights that are not floating point are ``unsupported_dtype``, never
  cast.
"""

from __future__ import annotations

import http.server
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from support.factories import random_adapter, write_hf_peft, write_nemo, write_trtllm
from support.live_api import directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config, tiny_spec

from store.api.uploads import StagedUpload, place_files
from store.errors import AdapterInvalid, BadRequest
from store.formats.detect import load_adapter
from store.settings import StoreSettings
from workers.fetch import _checked_address, _pinned, fetch_artifact
from workers.settings import WorkerSettings

_serial = itertools.count(1)
PLACEMENT_CODES = {"unsafe_path", "path_conflict", "duplicate_path", "bad_request"}

# --- uploaded paths: the property ----------------------------------------------------------

_component = st.one_of(
    st.sampled_from(["a", "b", "adapter_config.json", ".", "..", "", "a\x00", "a\\b", "c:"]),
    st.integers(250, 300).map(lambda n: "x" * n),
    st.integers(120, 130).map(lambda n: "é" * n),  # 2 bytes each: over 255 bytes from 128
    st.text(min_size=1, max_size=6),
)
_path = st.lists(_component, min_size=1, max_size=20).map("/".join)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(paths=st.lists(_path, min_size=1, max_size=5))
def test_any_path_list_is_placed_inside_dest_or_refused_typed(tmp_path_factory, paths) -> None:
    root = tmp_path_factory.mktemp("place")
    staging, dest = root / "staging", root / "dest"
    staging.mkdir()
    upload = StagedUpload()
    for i, _ in enumerate(paths):
        staged = staging / f"part-{i}"
        staged.write_bytes(b"x")
        upload.files.append((f"f{i}", staged, 1))
    upload.fields["paths"] = __import__("json").dumps(paths)
    try:
        placed = place_files(upload, dest)
    except BadRequest as exc:
        assert exc.code in PLACEMENT_CODES, exc.code
        assert not dest.exists() or not any(dest.rglob("*")), "a refusal moved files"
        return
    assert len(placed) == len(paths)
    for path in placed:
        assert (dest / path).resolve().is_relative_to(dest.resolve())
        assert (dest / path).is_file()
    outside = {p.name for p in root.iterdir()}
    assert outside <= {"staging", "dest"}, outside


# --- uploaded paths: the table, over the real API ------------------------------------------

NS, BASE = "acme", "tiny"
PATH_TABLE: dict[str, tuple[list[str], str]] = {
    "component-256-bytes": (["a" * 256], "unsafe_path"),
    "component-256-utf8-bytes": (["é" * 128], "unsafe_path"),
    "too-deep": (["d/" * 20 + "f"], "unsafe_path"),
    "path-over-1024-bytes": (["/".join(["p" * 200] * 6)], "unsafe_path"),
    "file-and-its-directory": (["w", "w/x"], "path_conflict"),
    "directory-and-its-file": (["w/x/y", "w/x"], "path_conflict"),
    "config-as-a-directory": (["adapter_config.json/x", "adapter_config.json"], "path_conflict"),
    "dotdot": (["../x"], "unsafe_path"),
    "tab": (["a\tb"], "unsafe_path"),
    "duplicate": (["same", "same"], "duplicate_path"),
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"placement-{request.param}")
    source = write_hf_peft(random_adapter(rank=2, modules=("q_proj", "v_proj")), root / "ok")
    with fresh_database(request.param, root) as url, serve_registry(url, root) as live:
        with live.http(live.admin_token) as client:
            client.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            r = client.post("/v1/namespaces", json={"name": NS, "approval_policy": "auto"})
            assert r.status_code == 201, r.text
            yield client, directory_files(source), root


@pytest.mark.parametrize("case", sorted(PATH_TABLE))
def test_unplaceable_paths_are_refused_before_the_disk(api, case: str) -> None:
    client, good_files, root = api
    paths, code = PATH_TABLE[case]
    before = {p for p in root.parent.iterdir()}
    files = [(f"part{i}", b"x") for i in range(len(paths))]
    r = upload(
        client, files, namespace=NS, name="p", version=f"0.{next(_serial)}.0", base_model=BASE,
        paths=__import__("json").dumps(paths),
    )  # fmt: skip
    assert r.status_code == 400, (case, r.status_code, r.text[:300])
    assert r.json()["error"]["code"] == code, (case, r.text[:300])
    assert {p for p in root.parent.iterdir()} == before, "something was written next to root"
    r = upload(
        client, good_files, namespace=NS, name="good", version=f"1.{next(_serial)}.0",
        base_model=BASE,
    )  # fmt: skip
    assert r.status_code == 201, r.text[:300]


# --- http(s) artifacts ---------------------------------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []
    answer_html = False

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append((self.path, self.headers.get("Host", "")))
        body = b"<html><body>not S3</body></html>" if self.answer_html else b"weights"
        self.send_response(403 if self.answer_html and "list-type" in self.path else 200)
        self.send_header("Content-Type", "text/html" if self.answer_html else "application/x")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815


@pytest.fixture()
def recorder() -> Iterator[tuple[int, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"seen": [], "answer_html": False})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _worker_settings(tmp: Path, **kw: object) -> WorkerSettings:
    (tmp / "roots").mkdir(exist_ok=True)
    return WorkerSettings(artifact_roots=str(tmp / "roots"), artifact_http_timeout=5.0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "segment", ["%2e%2e", "%2E%2E", ".%2e", "%2e", "a%00b", "x" * 300, "%C3%A9" * 128]
)
def test_http_artifact_whose_name_cannot_be_a_file_is_refused_before_any_request(
    recorder, tmp_path: Path, segment: str
) -> None:
    port, handler = recorder
    settings = _worker_settings(tmp_path, artifact_allow_private_hosts=True)
    with pytest.raises(AdapterInvalid) as exc:
        fetch_artifact(
            f"http://127.0.0.1:{port}/a/{segment}", tmp_path / "w", settings, StoreSettings()
        )
    assert exc.value.code == "artifact_not_allowed", exc.value
    assert handler.seen == [], "a request was made for an unplaceable name"
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.*"))


def test_http_artifact_with_a_good_name_still_downloads(recorder, tmp_path: Path) -> None:
    port, _ = recorder
    settings = _worker_settings(tmp_path, artifact_allow_private_hosts=True)
    out = fetch_artifact(
        f"http://127.0.0.1:{port}/a/adapter.nemo", tmp_path / "w", settings, StoreSettings()
    )
    assert (out / "adapter.nemo").read_bytes() == b"weights"


def test_the_request_goes_to_the_checked_address_with_the_original_host(recorder) -> None:
    port, handler = recorder
    url, headers, extensions = _pinned(f"http://rebinding.invalid:{port}/f.bin", "127.0.0.1")
    with httpx.Client(timeout=5) as client:
        r = client.request("GET", url, headers=headers, extensions=extensions)
    assert r.status_code == 200
    assert handler.seen == [("/f.bin", f"rebinding.invalid:{port}")]
    _, _, tls = _pinned("https://example.org/f.bin", "93.184.215.14")
    assert tls == {"sni_hostname": "example.org"}


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "10.0.0.1", "169.254.169.254"])
def test_a_name_that_resolves_to_a_private_address_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(AdapterInvalid) as exc:
        _checked_address(host, 80, _worker_settings(tmp_path))
    assert exc.value.code == "artifact_not_allowed"


# --- S3 artifacts ----------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", ["ab", "a b", "a" * 64, "-lead", "x..y", "1.2.3.4"])
def test_s3_bucket_name_the_sdk_refuses_is_artifact_not_allowed(
    recorder, tmp_path: Path, bucket: str
) -> None:
    port, _ = recorder
    store = StoreSettings(s3_endpoint=f"127.0.0.1:{port}", s3_secure=False)
    with pytest.raises(AdapterInvalid) as exc:
        fetch_artifact(f"s3://{bucket}/job", tmp_path / "w", _worker_settings(tmp_path), store)
    assert exc.value.code == "artifact_not_allowed", exc.value


def test_s3_endpoint_that_does_not_answer_xml_is_artifact_unreachable(
    recorder, tmp_path: Path
) -> None:
    port, handler = recorder
    handler.answer_html = True
    store = StoreSettings(
        s3_endpoint=f"127.0.0.1:{port}", s3_secure=False, s3_access_key="k", s3_secret_key="s"
    )
    with pytest.raises(AdapterInvalid) as exc:
        fetch_artifact("s3://bucket/job", tmp_path / "w", _worker_settings(tmp_path), store)
    assert exc.value.code == "artifact_unreachable", exc.value
    assert handler.seen, "the endpoint was never asked"


# --- non-float weights -----------------------------------------------------------------------

INT_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]


@pytest.mark.parametrize("container", ["safetensors", "bin"])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
def test_weights_that_are_not_floating_point_are_refused_not_cast(
    tmp_path: Path, container: str, dtype: torch.dtype
) -> None:
    d = write_hf_peft(random_adapter(rank=2, modules=("q_proj",)), tmp_path / "a")
    from safetensors.torch import load_file

    state = {k: v.to(dtype) for k, v in load_file(d / "adapter_model.safetensors").items()}
    (d / "adapter_model.safetensors").unlink()
    if container == "safetensors":
        save_file(state, str(d / "adapter_model.safetensors"))
    else:
        torch.save(state, d / "adapter_model.bin")
    with pytest.raises(AdapterInvalid) as exc:
        load_adapter(d)
    assert exc.value.code == "unsupported_dtype", exc.value


@pytest.mark.parametrize("dtype", [*INT_DTYPES, torch.float16], ids=str)
def test_nemo_weights_that_are_not_floating_point_are_refused_not_cast(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    """The ``.nemo`` tar's ``model_weights.ckpt`` with its tensors stored as integers (and,
    as the control, as float16: that one loads)."""
    import io
    import tarfile

    d = write_nemo(random_adapter(rank=2, modules=("q_proj",)), tmp_path / "n")
    (nemo,) = d.glob("*.nemo")
    with tarfile.open(nemo) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    state = torch.load(io.BytesIO(members["./model_weights.ckpt"]), weights_only=True)
    buf = io.BytesIO()
    torch.save({k: v.to(dtype) for k, v in state.items()}, buf)
    members["./model_weights.ckpt"] = buf.getvalue()
    with tarfile.open(nemo, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if dtype.is_floating_point:  # the control: the rewritten archive itself is sound
        assert load_adapter(d, tiny_spec()).rank == 2
        return
    with pytest.raises(AdapterInvalid) as exc:
        load_adapter(d, tiny_spec())
    assert exc.value.code == "unsupported_dtype", exc.value


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "bool"])
def test_trtllm_weights_that_are_not_floating_point_are_refused_not_cast(
    tmp_path: Path, dtype: str
) -> None:
    """A TensorRT-LLM ``.npy`` carries its dtype: integer/boolean weights are refused (they
    were ``shape_mismatch``, a misleading code), never cast; raw ``.bin`` weights have no
    dtype and are read as fp16/fp32 by size."""
    d = write_trtllm(random_adapter(rank=2, modules=("q_proj",)), tmp_path / "t", dtype=dtype)
    with pytest.raises(AdapterInvalid) as exc:
        load_adapter(d, tiny_spec())
    assert exc.value.code == "unsupported_dtype", exc.value
    floats = write_trtllm(random_adapter(rank=2, modules=("q_proj",)), tmp_path / "f")
    assert load_adapter(floats, tiny_spec()).rank == 2
