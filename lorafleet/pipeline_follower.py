"""The demo's pipeline follower: polls the registry and the engine and records when each
adapter reached each stage. The stages are read off ``store.approval.Status`` (the statuses
an adapter passes on its way to serving) plus ``loaded``, which only the engine can tell."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httpx
from rich.live import Live
from rich.table import Table

from store.approval import TRANSITIONS, Status
from store.client import ApiError, RegistryClient

if TYPE_CHECKING:
    from lorafleet.demo_flow import DemoAdapter, Narrator
    from lorafleet.stack import Stack

# The happy path through ``store.approval.TRANSITIONS``, and the stage each status proves: a
# stage is done once the adapter's status reached it.
HAPPY_PATH = (Status.UPLOADING, Status.VALIDATING, Status.PENDING, Status.READY)
STAGE_STATUS = {
    "received": Status.UPLOADING,  # the registry holds the version
    "validated": Status.PENDING,  # validation passed
    "registered": Status.PENDING,  # the version waits for (or got) approval
    "approved": Status.READY,
}
LOADED = "loaded"  # not a status: the engine lists it in /v1/models
STAGES = (*STAGE_STATUS, LOADED)


def engine_models(stack: Stack) -> list[str]:
    """The model ids the stack's engine lists (none while it does not answer)."""
    try:
        body = httpx.get(
            f"{stack.engine_url}/v1/models", headers=stack.engine_headers(), timeout=5.0
        ).json()
    except (httpx.HTTPError, ValueError):
        return []
    return [m["id"] for m in body.get("data", [])]


def _stages_of(entity: dict | None, loaded: bool) -> tuple[set[str], str]:
    """Which stages an adapter has passed, judged from the registry entity and the engine."""
    if entity is None:
        return set(), "-"
    status = Status(entity["status"])
    # Off the path (archived, rejected, failed): the path status it left from.
    last = (
        status if status in HAPPY_PATH else next(s for s in HAPPY_PATH if status in TRANSITIONS[s])
    )
    reached = HAPPY_PATH[: HAPPY_PATH.index(last) + 1]
    done = {stage for stage, needs in STAGE_STATUS.items() if needs in reached}
    if loaded:
        done.add(LOADED)
    return done, entity["status"]


class PipelineFollower:
    """Polls the registry and the engine for the demo's adapters, recording when each
    reached each stage, drawing the table (or plain lines)."""

    def __init__(
        self,
        narrator: Narrator,
        client: RegistryClient,
        stack: Stack,
        adapters: Sequence[DemoAdapter],
        announced: dict[str, float],
        *,
        plain: bool,
        timeout: float,
    ) -> None:
        self.narrator, self.client, self.stack = narrator, client, stack
        self.adapters, self.announced = adapters, announced
        self.plain, self.timeout = plain, timeout
        self.progress: dict[str, dict[str, float]] = {a.coordinates: {} for a in adapters}
        self.status: dict[str, str] = {a.coordinates: "announced" for a in adapters}
        self.entities: dict[str, dict] = {}

    def served_or_awaiting_approval(self) -> bool:
        """Every adapter is loaded, or waits in ``pending`` for a reviewer."""
        return all(
            LOADED in self.progress[a.coordinates]
            or (a.policy == "manual" and self.status[a.coordinates] == Status.PENDING)
            for a in self.adapters
        )

    def all_loaded(self) -> bool:
        """Every adapter is served by the engine."""
        return all(LOADED in p for p in self.progress.values())

    def follow(self, until: Callable[[], bool]) -> None:
        """Poll until ``until()``; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        if self.plain:
            while not self._poll(until):
                _check_deadline(deadline, self.status)
                time.sleep(0.3)
            return
        with Live(self._render(), console=self.narrator.console, refresh_per_second=8) as live:
            while not self._poll(until):
                live.update(self._render())
                _check_deadline(deadline, self.status)
                time.sleep(0.3)
            live.update(self._render())

    def _poll(self, until: Callable[[], bool]) -> bool:
        self.stack.check_alive()
        models = set(engine_models(self.stack))
        for adapter in self.adapters:
            key = adapter.coordinates
            try:
                entity = self.client.get_version(adapter.namespace, adapter.name, adapter.version)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                entity = None
            done, self.status[key] = _stages_of(entity, key in models)
            if entity is not None:
                self.entities[key] = entity
            if self.status[key] == Status.FAILED:
                raise RuntimeError(
                    f"{key} failed validation: {entity and entity.get('status_reason')}"
                )
            for stage in STAGES:
                if stage in done and stage not in self.progress[key]:
                    self.progress[key][stage] = time.monotonic() - self.announced[key]
                    if self.plain:
                        self.narrator.say(f"{key}: {stage} (+{self.progress[key][stage]:.1f}s)")
        return until()

    def _render(self) -> Table:
        table = Table(title="pipeline", show_lines=False)
        table.add_column("adapter")
        for stage in STAGES:
            table.add_column(stage, justify="center")
        table.add_column("status")
        for adapter in self.adapters:
            row = [adapter.coordinates]
            for stage in STAGES:
                t = self.progress[adapter.coordinates].get(stage)
                row.append(f"[green]✔[/] {t:.1f}s" if t is not None else "[dim]…[/]")
            table.add_row(*row, self.status[adapter.coordinates])
        return table


def _check_deadline(deadline: float, status: dict[str, str]) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"adapters did not reach the engine in time: {status}")
