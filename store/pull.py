"""``lorafleet pull``: materialise ready adapters into NIM's ``LOCAL_PEFT_DIRECTORY`` layout.

For NIM and vLLM users who do not run a lorafleet engine: one sub-directory per adapter,
holding HF PEFT files (``adapter_config.json`` + ``adapter_model.safetensors``), named from
the adapter's coordinates (``namespace--name--version``; NIM serves an adapter under its
directory's name). Each adapter is downloaded into a staging directory inside the target,
verified, then renamed into place, so a NIM refresh never sees half an adapter. Adapters
that are no longer ready are removed the same way. Only directories this tool created are
ever touched (they are listed in ``.lorafleet-pull.json``), so hand-placed adapters survive.

``watch`` keeps the directory in sync: it reconciles after every fleet refresh event for the
base model and, since events are only hints, every ``interval`` seconds regardless.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from store.client import RegistryClient

log = structlog.get_logger(__name__)

STATE_FILE = ".lorafleet-pull.json"
STAGING_DIR = ".lorafleet-staging"


def adapter_dir_name(namespace: str, name: str, version: str) -> str:
    """The directory (and so NIM's served model) name of an adapter version.

    ``/`` and ``@`` cannot appear in a directory name, so coordinates become
    ``namespace--name--version``; the parts' own alphabets cannot produce ``--`` ambiguity
    that matters for serving (names are unique per namespace and version)."""
    return f"{namespace}--{name}--{version}"


@dataclass
class PullResult:
    """What one reconciliation did."""

    generation: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _wanted(adapter: dict, selectors: set[str] | None) -> bool:
    if not selectors:
        return True
    coords = f"{adapter['namespace']}/{adapter['name']}@{adapter['version']}"
    family = f"{adapter['namespace']}/{adapter['name']}"
    return bool({adapter["id"], coords, family, adapter["namespace"]} & selectors)


def _read_state(dest: Path) -> dict[str, dict]:
    try:
        return json.loads((dest / STATE_FILE).read_text())["adapters"]
    except (FileNotFoundError, ValueError, KeyError):
        return {}


def _write_state(dest: Path, state: dict[str, dict], generation: int) -> None:
    # Atomic replace: a crash mid-write must not forget which directories are ours.
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{STATE_FILE}.")
    with os.fdopen(fd, "w") as fh:
        json.dump({"generation": generation, "adapters": state}, fh, indent=2, sort_keys=True)
    os.replace(tmp, dest / STATE_FILE)


def _remove(dest: Path, dirname: str) -> None:
    """Take a directory out of the served set atomically (rename), then delete it."""
    target = dest / dirname
    if not target.exists():
        return
    staging = dest / STAGING_DIR
    staging.mkdir(exist_ok=True)
    trash = Path(tempfile.mkdtemp(dir=staging, prefix="removed-"))
    os.replace(target, trash / dirname)
    shutil.rmtree(trash, ignore_errors=True)


def pull_adapters(
    client: RegistryClient,
    base_model: str,
    dest: Path,
    *,
    selectors: set[str] | None = None,
    canonical: bool = True,
) -> PullResult:
    """Make ``dest`` hold exactly the ready adapters of ``base_model`` (restricted to
    ``selectors``: ids, ``ns/name@version``, ``ns/name`` or ``ns``).

    Guarantees: a directory appears only once all its files are downloaded and verified
    (sha256); a directory that is no longer wanted disappears in one rename; directories
    not created by this function are never modified. Idempotent.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    fleet = client.fleet(base_model)
    generation = int(fleet.get("generation", 0))
    result = PullResult(generation=generation)
    state = _read_state(dest)
    wanted: dict[str, dict] = {}
    for adapter in fleet.get("adapters", []):
        if _wanted(adapter, selectors):
            wanted[adapter_dir_name(adapter["namespace"], adapter["name"], adapter["version"])] = (
                adapter
            )

    for dirname, adapter in sorted(wanted.items()):
        known = state.get(dirname)
        if (
            known is not None
            and known.get("manifest_sha256") == adapter.get("manifest_sha256")
            and (dest / dirname).is_dir()
        ):
            result.kept.append(dirname)
            continue
        staging = dest / STAGING_DIR
        staging.mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=staging, prefix="pull-"))
        try:
            client.download_adapter(adapter["id"], workdir / dirname, canonical=canonical)
            if (dest / dirname).exists():
                _remove(dest, dirname)
            os.replace(workdir / dirname, dest / dirname)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        state[dirname] = {
            "id": adapter["id"],
            "adapter": f"{adapter['namespace']}/{adapter['name']}@{adapter['version']}",
            "manifest_sha256": adapter.get("manifest_sha256"),
        }
        _write_state(dest, state, generation)
        result.added.append(dirname)
        log.info("adapter_pulled", adapter=state[dirname]["adapter"], dir=str(dest / dirname))

    for dirname in sorted(set(state) - set(wanted)):
        _remove(dest, dirname)
        adapter_name = state.pop(dirname).get("adapter")
        _write_state(dest, state, generation)
        result.removed.append(dirname)
        log.info("adapter_removed", adapter=adapter_name, dir=str(dest / dirname))

    _write_state(dest, state, generation)
    shutil.rmtree(dest / STAGING_DIR, ignore_errors=True)
    return result


def watch_adapters(
    client: RegistryClient,
    base_model: str,
    dest: Path,
    *,
    redis_url: str | None,
    selectors: set[str] | None = None,
    interval: float = 30.0,
    stop: threading.Event | None = None,
    on_result: Callable[[PullResult], None] | None = None,
) -> None:
    """Keep ``dest`` in sync until ``stop`` is set: reconcile now, after each refresh event
    for ``base_model`` (when ``redis_url`` is given) and every ``interval`` seconds.

    A failed reconciliation (registry down) is logged and retried on the next tick; it never
    removes adapters that are already in place.
    """
    stop = stop or threading.Event()
    due = threading.Event()
    due.set()

    def reconcile() -> None:
        try:
            result = pull_adapters(client, base_model, dest, selectors=selectors)
        except Exception as exc:  # noqa: BLE001 - keep serving what we have; retry later
            log.warning("pull_failed", base_model=base_model, error=str(exc))
            return
        if on_result is not None:
            on_result(result)

    listener: threading.Thread | None = None
    if redis_url:
        listener = threading.Thread(
            target=_listen,
            args=(redis_url, base_model, due, stop),
            name="pull-refresh",
            daemon=True,
        )
        listener.start()
    next_tick = time.monotonic()
    while not stop.is_set():
        if due.is_set() or time.monotonic() >= next_tick:
            due.clear()
            reconcile()
            next_tick = time.monotonic() + interval
        due.wait(timeout=max(0.05, min(1.0, next_tick - time.monotonic())))
    if listener is not None:
        listener.join(timeout=5)


def _listen(redis_url: str, base_model: str, due: threading.Event, stop: threading.Event) -> None:
    """Set ``due`` whenever a refresh event for ``base_model`` arrives on the stream."""
    from events import streams
    from events.consumer import ReconnectingLoop
    from events.models import FleetRefresh, decode

    cursor = {"id": "$"}

    def on_connect(client) -> None:  # type: ignore[no-untyped-def]
        # After a reconnect, events may have been missed: reconcile once to catch up.
        due.set()

    def step(client) -> None:  # type: ignore[no-untyped-def]
        replies = client.xread({streams.REFRESH_STREAM: cursor["id"]}, count=100, block=1000)
        for _stream, entries in replies or []:
            for entry_id, fields in entries:
                cursor["id"] = entry_id
                try:
                    event = decode(fields)
                except ValueError:
                    continue
                if isinstance(event, FleetRefresh) and event.base_model == base_model:
                    due.set()

    ReconnectingLoop(redis_url, step, stop=stop, on_connect=on_connect, name="pull").run()
