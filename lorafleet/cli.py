"""The ``lorafleet`` command. Each package contributes its own typer sub-app.

The registry's commands, ``pull`` and ``events`` import no torch, so they work from the light
install (``pip install lorafleet``) and ``lorafleet --help`` is fast. The ``engine`` group
(torch) is imported only when one of its commands runs; from the light install that command
says to install the ``engine`` extra.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import typer
from typer.core import TyperGroup

from lorafleet import __version__
from lorafleet.logging import LoggingConfigError, configure_logging

# What the ``engine`` extra installs (pyproject.toml): a command that needs one of these
# fails with a hint instead of a traceback on the light install.
_ENGINE_EXTRA_MODULES = frozenset({"torch", "numpy", "safetensors", "tokenizers"})

# (name, module, attribute, help): sub-apps imported only when one of their commands runs.
_LAZY_GROUPS: list[tuple[str, str, str, str]] = [
    ("engine", "engine.cli", "app", "The multi-LoRA inference engine (needs torch)."),
]


class _LazyGroupStub(TyperGroup):
    """Stands in for a lazily imported sub-app in the help listing."""

    def __init__(self, name: str, module: str, attr: str, help: str) -> None:
        super().__init__(name=name, help=help)
        self.module, self.attr = module, attr

    def load(self) -> Any:
        """The real sub-app, as a click group named like this stub."""
        sub = getattr(importlib.import_module(self.module), self.attr)
        group = typer.main.get_group(sub)
        group.name = self.name
        return group


class _RootGroup(TyperGroup):
    """The root command: mounts the lazy sub-apps and turns a missing ``engine`` extra into a
    one-line error."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, module, attr, help in _LAZY_GROUPS:
            self.commands.setdefault(name, _LazyGroupStub(name, module, attr, help))

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _LazyGroupStub):
            try:
                command = command.load()
            except ModuleNotFoundError as exc:
                _exit_without_engine_extra(exc, name)
                raise
            self.commands[command.name] = command
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            _exit_without_engine_extra(exc, ctx.invoked_subcommand)
            raise


def _exit_without_engine_extra(exc: ModuleNotFoundError, command: str | None) -> None:
    """Exit 2 with an install hint when ``exc`` is a module of the ``engine`` extra."""
    if (exc.name or "").partition(".")[0] in _ENGINE_EXTRA_MODULES:
        typer.echo(
            f"error: `lorafleet {command}` needs {exc.name}, which the light install leaves "
            "out: pip install 'lorafleet[engine]'",
            err=True,
        )
        raise typer.Exit(2) from None


app = typer.Typer(
    name="lorafleet",
    cls=_RootGroup,
    help="Ship LoRA fine-tunes into production: registry, event pipeline and multi-LoRA engine.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lorafleet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    log_level: str | None = typer.Option(
        None,
        "--log-level",
        envvar="LORAFLEET_LOG_LEVEL",
        help="debug, info, warning, error or critical. [default: info]",
        show_default=False,
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    source = ctx.get_parameter_source("log_level")
    from_env = getattr(source, "name", None) == "ENVIRONMENT"
    try:
        # From the environment, configure_logging reads it and names the variable in errors.
        configure_logging(None if from_env else log_level)
    except LoggingConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from pydantic import ValidationError

    from store.settings import settings_error

    try:
        _reach_running_stack()
    except ValidationError as exc:  # a LORAFLEET_* value of the wrong type or out of range
        typer.echo(f"error: invalid setting: {settings_error(exc)}", err=True)
        raise typer.Exit(2) from None


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


# (module, attribute, name): imported now, so their commands are listed with their help.
# They import no torch (tests/test_cli_light.py). A sub-app whose module is missing is
# skipped, so the CLI keeps working while a package is being built.
_SUBAPPS: list[tuple[str, str, str | None]] = [
    ("store.cli", "app", None),  # db, api, namespaces, base-models, tokens, adapters, pull
    ("events.cli", "app", "events"),
    ("workers.cli", "app", None),  # worker, bridge, beat
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
