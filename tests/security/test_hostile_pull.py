"""``lorafleet pull`` against a hostile registry: a real HTTP server (``http.server`` in a
thread) that speaks ``GET /v1/fleet``, ``GET /v1/adapters/{id}`` and the file download, and
sends names and paths meant to escape ``--dest``.

Every hostile entry is refused and reported (``PullResult.refused``, and by the command on
stderr), nothing is written outside ``--dest``, and the one honest adapter beside them is
still pulled. A fleet answer of the wrong shape is an error that changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from store.client import RegistryClient
from store.pull import PullError, pull_adapters
from store.pull_state import STATE_FILE, adapter_dir_name

BASE = "tiny"
FILES = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"\0" * 64}


def _entry(namespace: Any, name: Any, version: Any, adapter_id: Any = None) -> dict:
    return {
        "id": adapter_id or f"ad_{hashlib.sha256(repr((namespace, name)).encode()).hexdigest()}",
        "namespace": namespace,
        "name": name,
        "version": version,
        "base_model": BASE,
        "rank": 4,
        "manifest_sha256": "0" * 64,
    }


HONEST = _entry("acme", "math", "1.0.0")
# Each is refused by name: the directory pull would write must never be computed from it.
HOSTILE_NAMES: dict[str, Any] = {
    "parent_namespace": _entry("..", "x", "1.0.0"),
    "traversal_namespace": _entry("../../escape", "x", "1.0.0"),
    "traversal_name": _entry("acme", "../../../escape", "1.0.0"),
    "traversal_version": _entry("acme", "x", "1.0.0/../../../../escape"),
    "absolute_namespace": _entry("/tmp/escape", "x", "1.0.0"),
    "slash_in_namespace": _entry("acme/evil", "x", "1.0.0"),
    "nul_in_name": _entry("acme", "x\0y", "1.0.0"),
    "dot_name": _entry("acme", ".", "1.0.0"),
    "uppercase_name": _entry("acme", "Math", "1.0.0"),
    "unicode_digit_version": _entry("acme", "x", "１.0.0"),
    "newline_version": _entry("acme", "x", "1.0.0\n"),
    "overlong_name": _entry("acme", "x" * 300, "1.0.0"),
    "tilde_name": _entry("acme", "x~y", "1.0.0"),
    "integer_version": _entry("acme", "x", 1),
    "list_namespace": _entry(["acme"], "x", "1.0.0"),
    "missing_version": {k: v for k, v in _entry("acme", "x", "1.0.0").items() if k != "version"},
    "traversal_id": _entry("acme", "by-id", "1.0.0", adapter_id="../../../v1/escape"),
    "list_id": _entry("acme", "list-id", "1.0.0", adapter_id=["ad_1"]),
    "not_an_object": "acme/x@1.0.0",
    "duplicate": {**HONEST, "id": "ad_duplicate"},
}
# Valid names, but files the client must not place: refused by download_adapter.
HOSTILE_FILES: dict[str, tuple[dict, dict[str, bytes]]] = {
    "traversal_path": (_entry("acme", "files-up", "1.0.0"), {"../../../escape": b"x"}),
    "absolute_path": (_entry("acme", "files-abs", "1.0.0"), {"/tmp/escape-abs": b"x"}),
    "no_files": (_entry("acme", "files-none", "1.0.0"), {}),
}


class HostileRegistry:
    """What the fake registry answers; tests change ``fleet`` between pulls."""

    def __init__(self) -> None:
        self.fleet: Any = {"generation": 1, "adapters": [HONEST]}
        self.files: dict[str, dict[str, bytes]] = {HONEST["id"]: FILES}
        self.lying_digest: set[str] = set()

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts == ["v1", "fleet"]:
            return 200, json.dumps(self.fleet).encode(), {}
        if len(parts) == 3 and parts[:2] == ["v1", "adapters"]:
            files = self.files.get(parts[2])
            if files is None:
                return 404, b'{"error": {"code": "not_found", "message": "no"}}', {}
            listed = [
                {
                    "path": p,
                    "role": "canonical",
                    "sha256": hashlib.sha256(
                        b"other" if parts[2] in self.lying_digest else c
                    ).hexdigest(),
                    "size": len(c),
                }
                for p, c in files.items()
            ]
            return 200, json.dumps({"id": parts[2], "files": listed}).encode(), {}
        if len(parts) >= 5 and parts[:2] == ["v1", "adapters"] and parts[3] == "files":
            content = self.files.get(parts[2], {}).get("/".join(parts[4:]))
            if content is not None:
                return 200, content, {"ETag": f'"{hashlib.sha256(content).hexdigest()}"'}
        return 404, b'{"error": {"code": "not_found", "message": "no"}}', {}


@pytest.fixture
def hostile() -> Iterator[tuple[HostileRegistry, str]]:
    """The fake registry served on a free port; yields (its answers, its URL)."""
    registry = HostileRegistry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
            status, body, headers = registry.answer(urlsplit(self.path).path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield registry, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _tree(root: Path, skip: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` outside ``skip`` (files with their bytes)."""
    found: dict[str, bytes | None] = {}
    for path in root.rglob("*"):
        if path == skip or skip in path.parents:
            continue
        found[str(path)] = path.read_bytes() if path.is_file() else None
    return found


def _served(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))


def _hostile_fleet(registry: HostileRegistry) -> list:
    adapters = [HONEST, *HOSTILE_NAMES.values()]
    for entry, files in HOSTILE_FILES.values():
        adapters.append(entry)
        registry.files[entry["id"]] = files
    liar = _entry("acme", "files-liar", "1.0.0")
    registry.files[liar["id"]] = FILES
    registry.lying_digest.add(liar["id"])
    return [*adapters, liar]


def test_hostile_fleet_entries_are_refused_and_nothing_leaves_dest(hostile, tmp_path) -> None:
    registry, url = hostile
    registry.fleet = {"generation": 3, "adapters": _hostile_fleet(registry)}
    dest = tmp_path / "deep" / "er" / "loras"
    dest.mkdir(parents=True)
    before = _tree(tmp_path, dest)

    with RegistryClient(url, "token") as client:
        result = pull_adapters(client, BASE, dest)

    assert result.added == [adapter_dir_name("acme", "math", "1.0.0")]
    assert _served(dest) == result.added
    assert sorted(p.name for p in dest.iterdir()) == sorted([*result.added, STATE_FILE])
    assert _tree(tmp_path, dest) == before, "nothing may be written outside --dest"
    assert not Path("/tmp/escape").exists() and not Path("/tmp/escape-abs").exists()
    # One refusal per hostile entry, each with a reason; the state records the honest one.
    assert len(result.refused) == len(HOSTILE_NAMES) + len(HOSTILE_FILES) + 1, result.refused
    assert all(result.refused.values())
    assert any("digest_mismatch" in reason for reason in result.refused.values())
    assert any("unsafe_path" in reason for reason in result.refused.values())
    state = json.loads((dest / STATE_FILE).read_text())["adapters"]
    assert list(state) == result.added


def test_the_command_reports_each_refusal_and_pulls_the_rest(hostile, tmp_path) -> None:
    registry, url = hostile
    registry.fleet = {"generation": 3, "adapters": _hostile_fleet(registry)}
    dest = tmp_path / "loras"
    before = _tree(tmp_path, dest)
    cli = subprocess.run(
        [sys.executable, "-c", "from lorafleet.cli import app; app()", "pull"]
        + ["--dest", str(dest), "--base-model", BASE, "--url", url, "--token", "t"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LORAFLEET_LOG_LEVEL": "error"},
    )
    assert cli.returncode == 0, cli.stderr
    refused = [line for line in cli.stderr.splitlines() if line.startswith("! refused ")]
    assert len(refused) == len(HOSTILE_NAMES) + len(HOSTILE_FILES) + 1, cli.stderr
    assert "'../../escape/x@1.0.0'" in cli.stderr and "\0" not in cli.stderr
    assert f"1 adapter(s) in {dest}" in cli.stdout and f"{len(refused)} refused" in cli.stdout
    assert _served(dest) == [adapter_dir_name("acme", "math", "1.0.0")]
    assert _tree(tmp_path, dest) == before


@pytest.mark.parametrize(
    "fleet",
    [
        {"generation": "1", "adapters": []},
        {"generation": -1, "adapters": []},
        {"generation": True, "adapters": []},
        {"generation": 1, "adapters": {"acme/x@1.0.0": {}}},
        ["not", "an", "object"],
    ],
    ids=["string_generation", "negative_generation", "bool_generation", "dict_adapters", "list"],
)
def test_a_fleet_of_the_wrong_shape_changes_nothing(hostile, tmp_path, fleet) -> None:
    registry, url = hostile
    dest = tmp_path / "loras"
    with RegistryClient(url, "token") as client:
        pull_adapters(client, BASE, dest)
        state = (dest / STATE_FILE).read_text()
        registry.fleet = fleet
        with pytest.raises(PullError) as refused:
            pull_adapters(client, BASE, dest)
    assert refused.value.code == "bad_fleet"
    assert _served(dest) == [adapter_dir_name("acme", "math", "1.0.0")]
    assert (dest / STATE_FILE).read_text() == state


def test_hostile_state_file_entries_are_ignored_never_deleted(hostile, tmp_path) -> None:
    """The state file is ours, but a hand edit (or another tool) must not turn pull into
    ``rm -rf`` of a path it names: outside ``--dest``, a symlink, or not the directory pull
    gives the adapter recorded with it."""
    registry, url = hostile
    dest = tmp_path / "loras"
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    with RegistryClient(url, "token") as client:
        pull_adapters(client, BASE, dest)
        honest = adapter_dir_name("acme", "math", "1.0.0")
        (dest / "hand-placed").mkdir()
        (dest / "hand-placed" / "adapter_config.json").write_text("{}")
        (dest / "acme--gone--1.0.0").symlink_to(outside)
        doc = json.loads((dest / STATE_FILE).read_text())
        doc["adapters"].update(
            {
                "../precious": {"adapter": "acme/math@1.0.0"},
                str(outside): {"adapter": "acme/math@1.0.0"},
                "hand-placed": {"adapter": "acme/math@1.0.0"},
                "acme--gone--1.0.0": {"adapter": "acme/gone@1.0.0"},
                "acme--old--1.0.0": {"adapter": "../../precious@1.0.0"},
                ".": {"adapter": "acme/math@1.0.0"},
                "acme--x--1.0.0": "not an object",
            }
        )
        (dest / STATE_FILE).write_text(json.dumps(doc))
        registry.fleet = {"generation": 2, "adapters": []}  # nothing wanted: all would go
        result = pull_adapters(client, BASE, dest)
    assert result.removed == [honest]
    assert (outside / "data").read_text() == "keep me"
    assert (dest / "hand-placed" / "adapter_config.json").is_file()
    assert (dest / "acme--gone--1.0.0").is_symlink()
    assert json.loads((dest / STATE_FILE).read_text())["adapters"] == {}
