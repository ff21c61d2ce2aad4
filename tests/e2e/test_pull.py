"""``lorafleet pull`` against a live registry API: NIM's LOCAL_PEFT_DIRECTORY layout, atomic
updates, removal of adapters that stop being ready, and ``--watch`` driven by refresh events."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from factories import random_adapter, tiny_hf_config, write_hf_peft

from events import streams
from events.models import FleetRefresh
from events.publisher import publish
from store.api.server import run_registry_api
from store.client import RegistryClient
from store.formats import load_adapter
from store.pull import STATE_FILE, PullResult, adapter_dir_name, pull_adapters, watch_adapters
from store.settings import StoreSettings

BASE = "tiny"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[RegistryClient, str, str]]:
    """A live API on a fresh SQLite database with a base model, a namespace and two ready
    adapters; yields (admin client, base url, token)."""
    from store.db import upgrade

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    settings = StoreSettings(
        home=tmp_path / "home", database_url=url, blob_url=f"file://{tmp_path / 'blobs'}"
    )
    with run_registry_api(settings) as (base_url, token), RegistryClient(base_url, token) as admin:
        admin.register_base_model(BASE, tiny_hf_config())
        admin.create_namespace("acme", approval_policy="auto")
        for seed, name in enumerate(("math", "support")):
            src = write_hf_peft(random_adapter(seed=seed), tmp_path / "src" / name)
            admin.upload_adapter(src, namespace="acme", name=name, version="1.0.0", base_model=BASE)
        yield admin, base_url, token


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_writes_one_verified_hf_peft_directory_per_ready_adapter(
    registry, tmp_path: Path
) -> None:
    admin, _, _ = registry
    dest = tmp_path / "loras"
    result = pull_adapters(admin, BASE, dest)
    names = sorted(adapter_dir_name("acme", n, "1.0.0") for n in ("math", "support"))
    assert result.added == names and result.removed == []
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == names
    for dirname in names:
        files = {p.name for p in (dest / dirname).iterdir()}
        assert files == {"adapter_config.json", "adapter_model.safetensors"}
        # Loadable as an adapter and byte-identical to what the registry serves.
        assert load_adapter(dest / dirname).rank == 4
    entity = admin.get_version("acme", "math", "1.0.0")
    served = {f["path"]: f["sha256"] for f in entity["files"] if f["role"] == "canonical"}
    math_dir = dest / adapter_dir_name("acme", "math", "1.0.0")
    assert {p: _sha(math_dir / p) for p in served} == served
    assert not (dest / ".lorafleet-staging").exists()


def test_pull_again_is_a_no_op_and_removes_only_what_stopped_being_ready(
    registry, tmp_path: Path
) -> None:
    admin, _, _ = registry
    dest = tmp_path / "loras"
    pull_adapters(admin, BASE, dest)
    hand_placed = dest / "my-own-lora"
    hand_placed.mkdir()
    (hand_placed / "adapter_config.json").write_text("{}")

    again = pull_adapters(admin, BASE, dest)
    assert again.added == [] and again.removed == [] and len(again.kept) == 2

    support = admin.get_version("acme", "support", "1.0.0")
    admin.set_status(support["id"], "archived")
    after = pull_adapters(admin, BASE, dest)
    gone = adapter_dir_name("acme", "support", "1.0.0")
    assert after.removed == [gone]
    assert not (dest / gone).exists()
    assert hand_placed.is_dir(), "a directory pull did not create must never be touched"
    assert (dest / adapter_dir_name("acme", "math", "1.0.0")).is_dir()
    assert gone not in (dest / STATE_FILE).read_text()


def test_pull_selects_adapters_by_coordinates(registry, tmp_path: Path) -> None:
    admin, _, _ = registry
    dest = tmp_path / "loras"
    result = pull_adapters(admin, BASE, dest, selectors={"acme/math@1.0.0"})
    assert result.added == [adapter_dir_name("acme", "math", "1.0.0")]


def test_pull_command_prints_what_it_did(registry, tmp_path: Path) -> None:
    _, base_url, token = registry
    dest = tmp_path / "loras"
    args = ["pull", "--dest", str(dest), "--base-model", BASE, "--url", base_url, "--token", token]
    result = _lorafleet(args)
    assert result.returncode == 0, result.stderr
    assert "2 adapter(s)" in result.stdout
    assert (dest / adapter_dir_name("acme", "math", "1.0.0") / "adapter_config.json").is_file()
    denied = _lorafleet([*args[:-2], "--token", "wrong"])
    assert denied.returncode == 1
    assert "401" in denied.stderr


def _lorafleet(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process."""
    code = "from lorafleet.cli import app; app()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


def test_watch_follows_refresh_events(registry, tmp_path: Path, redis_url: str) -> None:
    """With a long resync interval, only the refresh event can make the archive show up fast."""
    admin, _, _ = registry
    dest = tmp_path / "loras"
    results: list[PullResult] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_adapters,
        args=(admin, BASE, dest),
        kwargs={
            "redis_url": redis_url,
            "interval": 600.0,
            "stop": stop,
            "on_result": results.append,
        },
        daemon=True,
    )
    watcher.start()
    try:
        _wait(lambda: len(results) >= 1 and len(results[0].added) == 2)
        time.sleep(1.5)  # the listener is reading the stream from "$" by now
        support = admin.get_version("acme", "support", "1.0.0")
        changed = admin.set_status(support["id"], "archived")
        event = FleetRefresh(
            action="evict",
            adapter_id=support["id"],
            adapter="acme/support@1.0.0",
            base_model=BASE,
            generation=changed.get("generation", 1),
        )
        client = redis.Redis.from_url(redis_url)
        publish(client, streams.REFRESH_STREAM, event)
        client.close()
        gone = dest / adapter_dir_name("acme", "support", "1.0.0")
        _wait(lambda: not gone.exists(), timeout=10)
        assert any(r.removed == [gone.name] for r in results)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()


def _wait(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
