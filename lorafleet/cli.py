"""The ``lorafleet`` command. Each package contributes its own typer sub-app."""

from __future__ import annotations

import importlib
import os

import typer

from lorafleet.logging import configure_logging

app = typer.Typer(
    name="lorafleet",
    help="Ship LoRA fine-tunes into production: registry, event pipeline and multi-LoRA engine.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(
    log_level: str = typer.Option(
        "INFO", "--log-level", envvar="LORAFLEET_LOG_LEVEL", help="Log level."
    ),
) -> None:
    configure_logging(log_level)
    _reach_running_stack()


def _reach_running_stack() -> None:
    """Point ``LORAFLEET_REDIS_URL`` at a running ``lorafleet up`` (``<home>/stack.json``)
    when it is unset: the events-only tools read nothing else. The registry's commands find
    that stack's API and token through ``store.settings`` themselves."""
    if os.environ.get("LORAFLEET_REDIS_URL"):
        return
    from store.settings import StoreSettings

    stack = StoreSettings().running_stack()
    if stack is not None:
        os.environ["LORAFLEET_REDIS_URL"] = stack.redis_url


# (module, attribute, name, help). A sub-app whose module is missing is skipped, so the CLI
# keeps working while a package is being built.
_SUBAPPS: list[tuple[str, str, str | None]] = [
    ("store.cli", "app", None),  # db, api, namespaces, base-models, tokens, adapters, pull
    ("events.cli", "app", "events"),
    ("workers.cli", "app", None),  # worker, bridge, beat
    ("engine.cli", "app", "engine"),
    ("lorafleet.demo", "app", None),  # demo, up
]

for module_name, attr, name in _SUBAPPS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # only tolerate the module itself being absent
        if exc.name != module_name:
            raise
        continue
    sub = getattr(module, attr)
    if name is None:
        # A typer app whose commands/groups are added at the top level.
        for command in sub.registered_commands:
            app.registered_commands.append(command)
        for group in sub.registered_groups:
            app.registered_groups.append(group)
    else:
        app.add_typer(sub, name=name)

# ``lorafleet events status`` reads the registry API, so it lives with the registry's
# commands (``events`` imports nothing of ours) and is mounted under ``events`` here.
_MOUNTED: list[tuple[str, str, str, str]] = [
    ("events.cli", "app", "store.cli", "events_status"),
]
for group_module, group_attr, command_module, command_attr in _MOUNTED:
    try:
        group = getattr(importlib.import_module(group_module), group_attr)
        command = getattr(importlib.import_module(command_module), command_attr)
    except ModuleNotFoundError as exc:
        if exc.name not in (group_module, command_module):
            raise
        continue
    group.command("status")(command)
