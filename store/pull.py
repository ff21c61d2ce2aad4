"""``lorafleet pull``: materialise ready adapters into NIM's ``LOCAL_PEFT_DIRECTORY`` layout.

For NIM and vLLM users who do not run a lorafleet engine: one sub-directory per adapter,
holding HF PEFT files (``adapter_config.json`` + ``adapter_model.safetensors``), named from
the adapter's coordinates by ``adapter_dir_name`` (NIM serves an adapter under its
directory's name). Each adapter is downloaded into a staging directory inside the target,
verified, then renamed into place, so a NIM refresh never sees half an adapter. Adapters
that are no longer ready are removed the same way. Only directories this tool created are
ever touched (they are listed in ``.lorafleet-pull.json``), so hand-placed adapters survive.

Files are written ``0644`` and directories ``0755`` whatever the umask: NIM runs as another
uid (1000) than the lorafleet image (10001). The state file also records the base model: a
directory filled for one base model is never switched to another (a typo would otherwise
replace the whole served set), and an unregistered base model is an error from the registry
(404 ``unknown_base_model``), so nothing is removed. Told the target's limits
(``max_rank``: NIM's ``NIM_MAX_LORA_RANK``), adapters it could not load are skipped and
reported, never written.

The registry is not trusted with the disk: a fleet entry whose namespace, name, version or
id is not what the registry itself would accept (``events.models``' one coordinate pattern)
is refused and reported (``result.refused``), never written; so is an adapter whose files
fail verification. State-file entries are deleted only when they name a directory this tool
would create for the adapter recorded with them, directly inside ``dest``; others are
dropped from the state with a warning and left alone.

``watch`` keeps the directory in sync: it reconciles after every fleet refresh event for the
base model and, since events are only hints, every ``interval`` seconds regardless.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from store.client import ApiError, RegistryClient
from store.client_download import DIR_MODE, FILE_MODE, download_adapter, make_dirs
from store.pull_state import (
    COORDINATE_FIELDS,
    STATE_FILE,
    adapter_dir_name,
    fleet_entry_problem,
    read_state,
    read_state_file,
    sent_as,
    shown,
    write_state,
)

log = structlog.get_logger(__name__)

STAGING_DIR = ".lorafleet-staging"


class PullError(Exception):
    """A pull that must not proceed (wrong directory, another base model): nothing changed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class PullResult:
    """What one reconciliation did. ``skipped``: directory name -> why the target cannot
    take that adapter (it is not written, and removed if an earlier pull wrote it).
    ``refused``: an entry the registry sent that is not safe to write (its coordinates as
    sent, cut short) -> why; never written."""

    generation: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _wanted(adapter: dict, selectors: set[str] | None) -> bool:
    if not selectors:
        return True
    coords = f"{adapter['namespace']}/{adapter['name']}@{adapter['version']}"
    family = f"{adapter['namespace']}/{adapter['name']}"
    return bool({adapter["id"], coords, family, adapter["namespace"]} & selectors)


def _prepare_dest(dest: Path) -> None:
    """Create ``dest`` (0755) if needed; refuse a file."""
    if dest.exists() and not dest.is_dir():
        raise PullError("not_a_directory", f"{dest} exists and is not a directory")
    if not dest.exists():
        try:
            make_dirs(dest)
        except (NotADirectoryError, FileExistsError):
            raise PullError("not_a_directory", f"{dest} cannot be created") from None


def _check_base_model(dest: Path, base_model: str) -> None:
    """Refuse a directory pulled for another base model (before anything is removed)."""
    recorded = read_state_file(dest).get("base_model")
    if recorded and recorded != base_model:
        raise PullError(
            "base_model_mismatch",
            f"{dest} holds adapters of base model {recorded!r} (see {dest / STATE_FILE}), "
            f"not {base_model!r}: refusing to replace them. Use another --dest for "
            f"{base_model!r}, or delete the directories listed in {STATE_FILE} and the file "
            "itself to start over.",
        )


def _fix_modes(root: Path) -> None:
    """Make a directory this tool wrote readable by another uid (0755 dirs, 0644 files):
    directories pulled by older versions kept ``mkstemp``'s 0600."""
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        mode = DIR_MODE if path.is_dir() else FILE_MODE
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)


def _skip_reason(adapter: dict, max_rank: int | None) -> str | None:
    """Why the target cannot take ``adapter`` (None when it can)."""
    rank = adapter.get("rank")
    if max_rank is not None and isinstance(rank, int) and rank > max_rank:
        return f"rank {rank} exceeds the target's max LoRA rank {max_rank}"
    return None


class ServingTarget(Protocol):
    """A server the pulled directory feeds (``store.vllm_sidecar.VllmTarget``): it may
    adjust a new directory before it goes into place, must let go of one before it is
    deleted (raise to keep it: the removal is retried on the next reconciliation), and is
    brought in line with the directory after each reconciliation."""

    def prepare(self, directory: Path) -> None: ...

    def release(self, dirname: str, adapter: str | None) -> None: ...

    def sync(self, dest: Path) -> None: ...


# What ``download_adapter`` refuses in what the registry sent (not a transport failure).
_UNSAFE_FILES = frozenset({"unsafe_path", "digest_mismatch", "no_files"})


def _refuse(result: PullResult, sent: str, reason: str) -> None:
    result.refused[sent] = reason
    log.warning("adapter_refused", adapter=sent, reason=reason)


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
    max_rank: int | None = None,
    target: ServingTarget | None = None,
) -> PullResult:
    """Make ``dest`` hold exactly the ready adapters of ``base_model`` (restricted to
    ``selectors``: ids, ``ns/name@version``, ``ns/name`` or ``ns``) that the target can take
    (rank at most ``max_rank``; the others are in ``result.skipped`` with the reason).

    Guarantees: a directory appears only once all its files are downloaded and verified
    (sha256); a directory that is no longer wanted disappears in one rename; directories
    not created by this function are never modified; files are 0644, directories 0755.
    Idempotent. With ``target``, a new directory passes ``target.prepare`` before it goes
    into place and one leaves only after ``target.release`` returned. Raises ``PullError`` for a ``dest`` pulled for another base model and
    ``ApiError`` (404 ``unknown_base_model`` for an unregistered one) before touching
    anything.
    """
    dest = Path(dest)
    _prepare_dest(dest)
    # The registry first: for a typo, "unknown base model, did you mean ..." says more than
    # "this directory holds another base model".
    fleet = client.fleet(base_model)
    _check_base_model(dest, base_model)
    generation = fleet.get("generation", 0) if isinstance(fleet, dict) else None
    entries = fleet.get("adapters", []) if isinstance(fleet, dict) else None
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise PullError("bad_fleet", f"the registry sent generation {shown(generation)}")
    if not isinstance(entries, list):
        raise PullError("bad_fleet", "the registry sent no list of adapters")
    result = PullResult(generation=generation)
    state = read_state(dest)
    wanted: dict[str, dict] = {}
    for adapter in entries:
        problem = fleet_entry_problem(adapter)
        if problem is None and not _wanted(adapter, selectors):
            continue
        dirname = "" if problem else adapter_dir_name(*(adapter[k] for k in COORDINATE_FIELDS))
        if problem is None and dirname in wanted:
            problem = "the registry sent these coordinates twice"
        if problem is not None:
            _refuse(result, sent_as(adapter), problem)
            continue
        reason = _skip_reason(adapter, max_rank)
        if reason is not None:
            result.skipped[dirname] = reason
            log.warning(
                "adapter_skipped",
                adapter=f"{adapter['namespace']}/{adapter['name']}@{adapter['version']}",
                dir=str(dest / dirname),
                reason=reason,
            )
            continue
        wanted[dirname] = adapter

    for dirname, adapter in sorted(wanted.items()):
        known = state.get(dirname)
        if (
            known is not None
            and known.get("manifest_sha256") == adapter.get("manifest_sha256")
            and (dest / dirname).is_dir()
        ):
            _fix_modes(dest / dirname)
            result.kept.append(dirname)
            continue
        staging = dest / STAGING_DIR
        staging.mkdir(exist_ok=True)
        workdir = Path(tempfile.mkdtemp(dir=staging, prefix="pull-"))
        try:
            download_adapter(client, adapter["id"], workdir / dirname, canonical=canonical)
            os.chmod(workdir / dirname, DIR_MODE)
            if target is not None:
                target.prepare(workdir / dirname)
            if (dest / dirname).exists():
                _remove(dest, dirname)
            os.replace(workdir / dirname, dest / dirname)
        except ApiError as exc:
            if exc.status != 0 or exc.code not in _UNSAFE_FILES:
                raise  # the registry is down or refused us: retry later, change nothing
            _refuse(result, sent_as(adapter), str(exc))
            continue
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        state[dirname] = {
            "id": adapter["id"],
            "adapter": f"{adapter['namespace']}/{adapter['name']}@{adapter['version']}",
            "manifest_sha256": adapter.get("manifest_sha256"),
        }
        write_state(dest, state, generation, base_model)
        result.added.append(dirname)
        log.info("adapter_pulled", adapter=state[dirname]["adapter"], dir=str(dest / dirname))

    for dirname in sorted(set(state) - set(wanted)):
        if target is not None:
            target.release(dirname, state[dirname].get("adapter"))
        _remove(dest, dirname)
        adapter_name = state.pop(dirname).get("adapter")
        write_state(dest, state, generation, base_model)
        result.removed.append(dirname)
        log.info("adapter_removed", adapter=adapter_name, dir=str(dest / dirname))

    write_state(dest, state, generation, base_model)
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
    max_rank: int | None = None,
    target: ServingTarget | None = None,
    retry_interval: float = 5.0,
) -> None:
    """Keep ``dest`` in sync until ``stop`` is set: reconcile now, after each refresh event
    for ``base_model`` (when ``redis_url`` is given) and every ``interval`` seconds.

    A failed reconciliation (registry down) is logged and retried on the next tick; it never
    removes adapters that are already in place; it is retried after ``retry_interval``
    seconds (at most ``interval``). With ``target``, it is synced after each reconciliation
    (a target that is down is a failure like the registry being down). A misconfiguration is raised instead: a
    ``PullError`` at any time, and on the first reconciliation a 4xx from the registry
    (unknown base model, bad token), so a sidecar with a typo fails instead of syncing
    nothing forever.
    """
    stop = stop or threading.Event()
    due = threading.Event()
    due.set()
    first = {"pending": True}

    def reconcile() -> bool:
        try:
            result = pull_adapters(
                client, base_model, dest, selectors=selectors, max_rank=max_rank, target=target
            )
        except PullError:
            raise
        except ApiError as exc:
            if first["pending"] and 400 <= exc.status < 500:
                raise
            log.warning("pull_failed", base_model=base_model, error=str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - keep serving what we have; retry later
            log.warning("pull_failed", base_model=base_model, error=str(exc))
            return False
        first["pending"] = False
        if on_result is not None:
            on_result(result)
        if target is not None:
            try:
                target.sync(dest)
            except Exception as exc:  # noqa: BLE001 - the server may be starting; retry
                log.warning("target_sync_failed", base_model=base_model, error=str(exc))
                return False
        return True

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
    try:
        while not stop.is_set():
            if due.is_set() or time.monotonic() >= next_tick:
                due.clear()
                wait = interval if reconcile() else min(interval, retry_interval)
                next_tick = time.monotonic() + wait
            due.wait(timeout=max(0.05, min(1.0, next_tick - time.monotonic())))
    finally:
        if listener is not None:
            stop.set()  # also on a raised misconfiguration: the listener must end with us
            listener.join(timeout=5)


def _listen(redis_url: str, base_model: str, due: threading.Event, stop: threading.Event) -> None:
    """Set ``due`` whenever a refresh event for ``base_model`` arrives on the stream, and
    after every (re)connect (events may have been missed: reconcile once to catch up)."""
    from events.refresh import RefreshFollower

    RefreshFollower(
        redis_url,
        base_model,
        on_event=lambda _event: due.set(),
        on_connect=due.set,
        stop=stop,
        name="pull",
    ).run()
