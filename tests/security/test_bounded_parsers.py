"""Every parse of untrusted bytes raises only its typed error (issue 12, class 1).

Hypothesis builds hostile documents of each format (deep nesting, integers of thousands of
digits, NaN/Infinity, numbers that overflow, bad UTF-8, duplicate keys, YAML aliases and
impossible dates, user regexes that do not compile) and sends them

* through the bounded parsers themselves (``events.untrusted.load_json``,
  ``store.formats.parsers``): ``UntrustedJson`` / ``AdapterInvalid`` with a stable code, or a
  value within the bounds;
* through the formats layer (``load_adapter`` on an adapter directory holding the document
  as ``adapter_config.json``, a safetensors header or a ``.nemo``'s YAML): only
  ``AdapterInvalid``;
* through the real API on SQLite and PostgreSQL (the document as an adapter file, an upload
  form field, a JSON request body): 4xx with the error shape, never a 5xx, and the registry
  still answers afterwards.

The bridge's side (events) is ``tests/security/test_poison_events.py``.
"""

from __future__ import annotations

import io
import itertools
import json
import struct
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.factories import random_adapter, write_hf_peft
from support.hostile import nemo_config
from support.live_api import directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config

from events.untrusted import STORED_JSON, UntrustedJson, check_json_value, load_json
from store.errors import AdapterInvalid
from store.formats.detect import load_adapter
from store.formats.parsers import match_target_pattern, parse_config_yaml

REASONS = {
    "not_json", "too_large", "too_deep", "too_many_items", "number_too_large",
    "non_finite_number", "duplicate_key", "string_too_long", "control_character", "not_utf8",
}  # fmt: skip
_serial = itertools.count(1)

# --- hostile JSON -------------------------------------------------------------------------

_depth = st.integers(1, 3000)
_nested = st.one_of(
    _depth.map(lambda n: "[" * n + "]" * n),
    _depth.map(lambda n: '{"a":' * n + "1" + "}" * n),
    _depth.map(lambda n: "[" * n),  # unterminated
)
_numbers = st.one_of(
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(1, 6000).map(lambda n: "-" + "1" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" + "0" * 400 + ".5"]),
    st.integers(300, 2000).map(lambda n: "0." + "1" * n),
)
_keys = st.text(max_size=4)
_duplicates = st.tuples(_keys, st.integers(), st.integers()).map(
    lambda t: f"{{{json.dumps(t[0])}: {t[1]}, {json.dumps(t[0])}: {t[2]}}}"
)
_escapes = st.sampled_from(['"\\u0000"', '"\\ud800"', '{"\\u0001": 1}', '"\\x"', '"\\'])
HOSTILE_JSON = st.one_of(
    _nested,
    _numbers,
    _numbers.map(lambda n: f'{{"r": 4, "lora_alpha": {n}}}'),
    _duplicates,
    _escapes,
    st.binary(max_size=64),
    st.binary(max_size=16).map(lambda b: b'{"a": "' + b + b'"}'),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
        lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(_keys, c, max_size=3)),
        max_leaves=20,
    ).map(lambda v: json.dumps(v, allow_nan=True)),
)


def _as_bytes(doc: str | bytes) -> bytes:
    return doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=HOSTILE_JSON)
def test_load_json_raises_only_untrusted_json_and_returns_only_bounded_values(doc) -> None:
    try:
        value = load_json(_as_bytes(doc))
    except UntrustedJson as exc:
        assert exc.reason in REASONS, exc.reason
        return
    check_json_value(value, STORED_JSON)  # what it returns is within the bounds
    assert json.loads(json.dumps(value, allow_nan=False)) == value  # and serializes back


# --- hostile YAML and regexes -------------------------------------------------------------

HOSTILE_YAML = st.one_of(
    _depth.map(lambda n: "a: " + "[" * n + "]" * n),
    _depth.map(lambda n: "".join(f"{'  ' * i}k{i}:\n" for i in range(n)) + "  " * n + "v"),
    _numbers.map(lambda n: f"a: {n}"),
    st.sampled_from(
        [
            "a: &x [1, 2]\nb: *x",
            "a: &a [x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c, *c]",
            "a: .nan",
            "a: -.inf",
            "a: 2020-13-45",
            "a: 2020-02-30 25:61:61",
            "a: !!binary ===",
            "a: !!python/object/apply:os.system [echo]",
            "a: 0x" + "f" * 40,
            "a: 0o" + "7" * 40,
            "a: 1_000_000_000_000_000_000_000",
            "{a: 1, a: 2}",
            "- - - - x",
            "a: '\x00'",
        ]
    ),
    st.binary(max_size=64),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=HOSTILE_YAML)
def test_yaml_parser_raises_only_malformed_config(doc) -> None:
    try:
        value = parse_config_yaml(_as_bytes(doc), "model_config.yaml")
    except AdapterInvalid as exc:
        assert exc.code in ("malformed_config", "file_too_large"), exc.code
        return
    check_json_value(value, STORED_JSON.__class__(control_characters=True))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(pattern=st.one_of(st.text(max_size=40), st.text(min_size=257, max_size=300)))
def test_target_module_patterns_are_bounded(pattern: str) -> None:
    try:
        matched = match_target_pattern(pattern, ("q_proj", "v_proj"), "adapter_config.json")
    except AdapterInvalid as exc:
        assert exc.code == "malformed_config"
        return
    assert set(matched) <= {"q_proj", "v_proj"}


# --- through the formats layer -------------------------------------------------------------


def _safetensors_with_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + b"\x00" * 16


def _nemo_with_config(config: bytes, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / "adapter.nemo", "w") as tf:
        for name, data in (("model_config.yaml", config), ("model_weights.ckpt", b"")):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _adapter_dir(tmp_path: Path, place: str, doc: str | bytes) -> Path:
    d = tmp_path / f"a{next(_serial)}"
    data = _as_bytes(doc)
    if place == "nemo_yaml":
        _nemo_with_config(data, d)
        return d
    write_hf_peft(random_adapter(rank=2, modules=("q_proj",)), d)
    if place == "adapter_config":
        (d / "adapter_config.json").write_bytes(data)
    else:
        (d / "adapter_model.safetensors").write_bytes(_safetensors_with_header(data))
    return d


@pytest.mark.parametrize("place", ["adapter_config", "safetensors_header", "nemo_yaml"])
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_documents_in_adapter_files_are_adapter_invalid(tmp_path, place, data) -> None:
    doc = data.draw(HOSTILE_YAML if place == "nemo_yaml" else HOSTILE_JSON)
    try:
        load_adapter(_adapter_dir(tmp_path, place, doc))
    except AdapterInvalid:
        return
    raise AssertionError("a hostile document was accepted as an adapter")


def test_nemo_config_with_hostile_fields_is_malformed_config(tmp_path: Path) -> None:
    """Values the NeMo reader converted with int()/float() (a ValueError/TypeError before)."""
    good = yaml.safe_load(nemo_config())
    for edit in (
        {"tensor_model_parallel_size": "abc"},
        {"tensor_model_parallel_size": [1]},
        {"peft": {"lora_tuning": {"adapter_dim": 4, "alpha": "x"}}},
        {"peft": {"lora_tuning": {"adapter_dim": 4, "alpha": [1]}}},
    ):
        d = tmp_path / f"n{next(_serial)}"
        _nemo_with_config(yaml.safe_dump({**good, **edit}).encode(), d)
        with pytest.raises(AdapterInvalid) as exc:
            load_adapter(d)
        assert exc.value.code in ("malformed_config", "missing_weights", "unsafe_pickle"), edit


# --- through the real API -------------------------------------------------------------------

NS, BASE = "acme", "tiny"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"bounded-{request.param}")
    source = write_hf_peft(random_adapter(rank=2, modules=("q_proj", "v_proj")), root / "ok")
    with fresh_database(request.param, root) as url, serve_registry(url, root) as live:
        with live.http(live.admin_token) as client:
            assert client.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            r = client.post("/v1/namespaces", json={"name": NS, "approval_policy": "auto"})
            assert r.status_code == 201, r.text
            r = upload(
                client, directory_files(source), namespace=NS, name="ok", version="1.0.0",
                base_model=BASE,
            )  # fmt: skip
            assert r.status_code == 201, r.text
            yield client, directory_files(source), r.json()["id"]


def _assert_refused(r: httpx.Response) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"], body


def _assert_healthy(client: httpx.Client) -> None:
    r = client.get("/v1/adapters")
    assert r.status_code == 200, r.text[:300]


_API = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@_API
@given(doc=HOSTILE_JSON, where=st.sampled_from(["config_file", "provenance", "custom_fields"]))
def test_hostile_json_in_an_upload_is_refused_never_a_5xx(api, doc, where) -> None:
    client, files, _ = api
    fields: dict[str, str] = {}
    if where == "config_file":
        files = [(p, _as_bytes(doc) if p == "adapter_config.json" else b) for p, b in files]
    elif isinstance(doc, bytes):
        fields[where] = doc.decode("utf-8", "replace")
    else:
        fields[where] = doc
    r = upload(
        client, files, namespace=NS, name="up", version=f"0.{next(_serial)}.0", base_model=BASE,
        **fields,
    )  # fmt: skip
    if r.status_code != 201:
        _assert_refused(r)
    _assert_healthy(client)


@_API
@given(doc=HOSTILE_JSON, route=st.sampled_from(["patch", "namespace", "base_model"]))
def test_hostile_json_bodies_are_refused_never_a_5xx(api, doc, route) -> None:
    client, _, adapter_id = api
    doc = _as_bytes(doc)
    if route == "patch":
        body = b'{"custom_fields": {"x": ' + doc + b"}}"
        r = client.patch(f"/v1/adapters/{adapter_id}", content=body, headers=_JSON)
    elif route == "namespace":
        body = b'{"name": "n' + str(next(_serial)).encode() + b'", "description": ' + doc + b"}"
        r = client.post("/v1/namespaces", content=body, headers=_JSON)
    else:
        body = b'{"name": "b' + str(next(_serial)).encode() + b'", "config": ' + doc + b"}"
        r = client.post("/v1/base-models", content=body, headers=_JSON)
    if r.status_code >= 300:
        _assert_refused(r)
    _assert_healthy(client)


_JSON = {"Content-Type": "application/json"}


def test_json_body_over_the_cap_is_413_before_parsing(api) -> None:
    from store.api.body_limits import MAX_JSON_BODY_BYTES

    client, _, adapter_id = api
    body = b'{"custom_fields": {"x": "' + b"a" * MAX_JSON_BODY_BYTES + b'"}}'
    for headers in (_JSON, {}):
        r = client.patch(f"/v1/adapters/{adapter_id}", content=body, headers=headers)
        assert r.status_code == 413, r.text[:300]
        assert r.json()["error"]["code"] == "body_too_large"
    _assert_healthy(client)


def test_too_many_form_fields_is_400_before_they_are_held(api) -> None:
    from store.api.uploads import MAX_FIELDS

    client, files, _ = api
    extra = {f"f{i}": "x" for i in range(MAX_FIELDS + 1)}
    r = upload(client, files, namespace=NS, name="up", version="9.9.9", base_model=BASE, **extra)
    _assert_refused(r)
    assert r.status_code == 400 and "too many form fields" in r.json()["error"]["message"]
    _assert_healthy(client)
