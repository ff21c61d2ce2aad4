"""``lorafleet pull`` against a live registry API: NIM's LOCAL_PEFT_DIRECTORY layout, atomic
updates, removal of adapters that stop being ready, and ``--watch`` driven by refresh events;
files another uid can read, a typo'd or switched base model that removes nothing, and
adapters above the target's max rank skipped and reported."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from support.factories import random_adapter, write_hf_peft
from support.tiny import tiny_hf_config

from events import streams
from events.models import VERSION_PATTERN, FleetRefresh, parse_coordinates
from events.publisher import publish
from store.api.server import run_registry_api
from store.client import ApiError, RegistryClient
from store.formats import load_adapter
from store.pull import PullError, PullResult, pull_adapters, watch_adapters
from store.pull_state import STATE_FILE, adapter_dir_name
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


def _lorafleet(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process."""
    code = "from lorafleet.cli import app; app()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _served(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))


def test_pulled_files_are_readable_by_another_uid_whatever_the_umask(
    registry, tmp_path: Path
) -> None:
    """NIM runs as uid 1000, the lorafleet image as 10001: 0644 files, 0755 directories."""
    admin, _, _ = registry
    dest = tmp_path / "loras"
    previous = os.umask(0o077)
    try:
        pull_adapters(admin, BASE, dest)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    for dirname in _served(dest):
        assert stat.S_IMODE((dest / dirname).stat().st_mode) == 0o755, dirname
        for f in (dest / dirname).iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    assert stat.S_IMODE((dest / STATE_FILE).stat().st_mode) == 0o644
    # A directory an older version left 0600 is repaired on the next pull.
    weights = dest / _served(dest)[0] / "adapter_model.safetensors"
    weights.chmod(0o600)
    again = pull_adapters(admin, BASE, dest)
    assert again.added == [] and stat.S_IMODE(weights.stat().st_mode) == 0o644


def test_an_unknown_base_model_is_an_error_that_removes_nothing(registry, tmp_path: Path) -> None:
    admin, base_url, token = registry
    dest = tmp_path / "loras"
    pull_adapters(admin, BASE, dest)
    before = _served(dest)
    state_before = (dest / STATE_FILE).read_text()
    with pytest.raises(ApiError) as typo:
        pull_adapters(admin, "tinny", dest)
    assert (typo.value.status, typo.value.code) == (404, "unknown_base_model")
    assert "did you mean 'tiny'?" in typo.value.message
    assert _served(dest) == before and len(before) == 2
    assert (dest / STATE_FILE).read_text() == state_before

    args = ["pull", "--dest", str(dest), "--base-model", "tinny", "--url", base_url]
    result = _lorafleet([*args, "--token", token])
    assert result.returncode == 1
    assert "unknown_base_model" in result.stderr and "did you mean 'tiny'?" in result.stderr
    assert _served(dest) == before
    watched = _lorafleet([*args, "--token", token, "--watch", "--interval", "0.1"])
    assert watched.returncode == 1 and "unknown_base_model" in watched.stderr
    assert _served(dest) == before


def test_a_directory_is_never_switched_to_another_base_model(registry, tmp_path: Path) -> None:
    admin, base_url, token = registry
    admin.register_base_model("other", tiny_hf_config())
    dest = tmp_path / "loras"
    pull_adapters(admin, BASE, dest)
    before = _served(dest)
    assert json.loads((dest / STATE_FILE).read_text())["base_model"] == BASE
    with pytest.raises(PullError) as switched:
        pull_adapters(admin, "other", dest)
    assert switched.value.code == "base_model_mismatch"
    assert _served(dest) == before
    result = _lorafleet(
        ["pull", "--dest", str(dest), "--base-model", "other", "--url", base_url, "--token", token]
    )
    assert result.returncode == 1, result.stdout
    assert "base_model_mismatch" in result.stderr and repr(BASE) in result.stderr
    assert _served(dest) == before
    assert json.loads((dest / STATE_FILE).read_text())["base_model"] == BASE
    # Another directory for the other base model is fine.
    assert pull_adapters(admin, "other", tmp_path / "other").added == []


def test_pull_skips_and_reports_adapters_above_the_targets_max_rank(
    registry, tmp_path: Path
) -> None:
    admin, base_url, token = registry
    src = write_hf_peft(random_adapter(seed=9, rank=8), tmp_path / "src" / "big")
    admin.upload_adapter(src, namespace="acme", name="big", version="1.0.0", base_model=BASE)
    big = adapter_dir_name("acme", "big", "1.0.0")
    dest = tmp_path / "loras"
    result = pull_adapters(admin, BASE, dest, max_rank=4)
    assert big not in result.added and big not in _served(dest)
    assert "rank 8" in result.skipped[big] and "4" in result.skipped[big]
    assert len(result.added) == 2
    # A limit lowered after a pull takes out what the target can no longer load.
    assert big in pull_adapters(admin, BASE, dest).added
    assert big in pull_adapters(admin, BASE, dest, max_rank=4).removed
    assert big not in _served(dest)

    other = tmp_path / "nim"
    args = ["pull", "--dest", str(other), "--base-model", BASE, "--url", base_url]
    cli = _lorafleet([*args, "--token", token], env={"NIM_MAX_LORA_RANK": "4"})
    assert cli.returncode == 0, cli.stderr
    assert f"! {other / big} skipped: rank 8 exceeds" in cli.stdout
    assert "2 adapter(s)" in cli.stdout and "1 skipped" in cli.stdout
    assert big not in _served(other)
    flag = _lorafleet([*args, "--token", token, "--max-lora-rank", "8"])
    assert flag.returncode == 0 and big in _served(other)


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
        # The pass reports after it deleted the directory: wait for its report (waiting for
        # the directory alone raced the report on a loaded machine).
        _wait(lambda: any(r.removed == [gone.name] for r in results), timeout=10)
        assert not gone.exists()
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert not watcher.is_alive()


def _wait(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_coordinates_that_shared_a_directory_now_get_one_each(registry, tmp_path: Path) -> None:
    """``a/x--y`` and ``a--x/y`` were both ``a--x--y--1.0.0``: one tenant's adapter served
    under another's name. Names are lowercase, so ``--`` inside a part was the only
    collision; versions may differ in case only (``1.0.0-RC`` / ``1.0.0-rc``), which
    collides on a case-insensitive file system alone."""
    admin, _, _ = registry
    pairs = [("a", "x--y", "1.0.0"), ("a--x", "y", "1.0.0"), ("a", "x", "1.0.0-y--1")]
    for seed, (namespace, name, version) in enumerate(pairs, start=20):
        if namespace not in {n["name"] for n in admin.list_namespaces()["data"]}:
            admin.create_namespace(namespace, approval_policy="auto")
        src = write_hf_peft(random_adapter(seed=seed), tmp_path / "src" / f"{seed}")
        admin.upload_adapter(src, namespace=namespace, name=name, version=version, base_model=BASE)
    dest = tmp_path / "loras"
    result = pull_adapters(admin, BASE, dest, selectors={"a", "a--x"})
    expected = sorted(adapter_dir_name(*coordinates) for coordinates in pairs)
    assert result.added == expected and len(set(expected)) == 3
    assert expected == ["a--x~y~1.0.0", "a~x--y~1.0.0", "a~x~1.0.0-y--1"]
    for namespace, name, version in pairs:
        dirname = adapter_dir_name(namespace, name, version)
        served = admin.get_version(namespace, name, version)["files"]
        digests = {f["path"]: f["sha256"] for f in served if f["role"] == "canonical"}
        assert {p: _sha(dest / dirname / p) for p in digests} == digests, dirname
    # The familiar name is unchanged wherever no part holds "--".
    assert adapter_dir_name("acme", "support-bot", "1.2.0-rc.1") == "acme--support-bot--1.2.0-rc.1"


def test_a_directory_pulled_under_the_old_name_is_replaced_and_removed(
    registry, tmp_path: Path
) -> None:
    """Pulls before the injective mapping named ``a/x--y@1.0.0`` ``a--x--y--1.0.0``; the
    state file lists that name, and the next pull moves the adapter to its new directory."""
    admin, _, _ = registry
    admin.create_namespace("a", approval_policy="auto")
    src = write_hf_peft(random_adapter(seed=30), tmp_path / "src" / "xy")
    entity = admin.upload_adapter(src, namespace="a", name="x--y", version="1.0.0", base_model=BASE)
    dest = tmp_path / "loras"
    pull_adapters(admin, BASE, dest, selectors={"acme"})
    old = dest / "a--x--y--1.0.0"
    old.mkdir()
    (old / "adapter_config.json").write_text("{}")
    doc = json.loads((dest / STATE_FILE).read_text())
    doc["adapters"][old.name] = {
        "id": entity["id"],
        "adapter": "a/x--y@1.0.0",
        "manifest_sha256": entity["manifest_sha256"],
    }
    (dest / STATE_FILE).write_text(json.dumps(doc))

    result = pull_adapters(admin, BASE, dest)
    assert result.added == ["a~x--y~1.0.0"] and result.removed == [old.name]
    assert not old.exists() and (dest / "a~x--y~1.0.0" / "adapter_config.json").is_file()
    assert set(json.loads((dest / STATE_FILE).read_text())["adapters"]) == {
        "a~x--y~1.0.0",
        *(adapter_dir_name("acme", n, "1.0.0") for n in ("math", "support")),
    }


_PART = st.builds(
    lambda head, tail: head + tail, st.sampled_from("a0"), st.text("a0-_.", max_size=8)
)
_VERSION = st.one_of(
    st.from_regex(VERSION_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 64),
    st.builds(
        lambda tail: f"1.0.0{tail}", st.sampled_from(["-a--b", "-x-", "+b--c", "-a.b-c", "--"])
    ),
)


@settings(max_examples=500, deadline=None)
@given(namespace=_PART, name=_PART, version=_VERSION)
def test_the_directory_name_has_exactly_one_preimage(namespace, name, version) -> None:
    """Injective: every way of reading the directory name back as coordinates (splitting at
    any two separators) that maps to it again is the one it came from."""
    coordinates = (namespace, name, version)
    parse_coordinates("{}/{}@{}".format(*coordinates))
    dirname = adapter_dir_name(*coordinates)
    assert "/" not in dirname and dirname not in {".", ".."}
    cuts = [(m.start(), 2) for m in re.finditer("(?=--)", dirname)]
    cuts += [(m.start(), 1) for m in re.finditer("~", dirname)]
    preimages = set()
    for (i, n), (j, m) in itertools.combinations(sorted(cuts), 2):
        if i + n > j:
            continue
        candidate = (dirname[:i], dirname[i + n : j], dirname[j + m :])
        try:
            parse_coordinates("{}/{}@{}".format(*candidate))
        except ValueError:
            continue
        if adapter_dir_name(*candidate) == dirname:
            preimages.add(candidate)
    assert preimages == {coordinates}
