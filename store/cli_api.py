"""How the registry's commands reach the API and print: the ``--url``/``--token``
options, a ``RegistryClient`` whose errors end the command cleanly, and the two consoles
(results to stdout; progress bars and errors to stderr). Used by ``store.cli`` and
``store.cli_adapters``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from store.client import ApiError, RegistryClient

__all__ = [
    "DEFAULT_URL",
    "AsJson",
    "Token",
    "Url",
    "api_client",
    "err",
    "out",
    "print_json",
    "transfer_progress",
]

out = Console()
err = Console(stderr=True)

Url = Annotated[
    str,
    typer.Option(
        "--url", envvar="LORAFLEET_API_URL", help="Registry API base URL.", show_default=True
    ),
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="LORAFLEET_TOKEN", help="Bearer token.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]
DEFAULT_URL = "http://127.0.0.1:8080"


@contextmanager
def api_client(url: str, token: str | None) -> Iterator[RegistryClient]:
    """A client whose API errors end the command with a one-line message and exit code 1."""
    try:
        with RegistryClient(url, token, timeout=60.0) as client:
            yield client
    except ApiError as exc:
        err.print(f"[red]error[/red] {exc.status or ''} {exc.code}: {exc.message}")
        raise typer.Exit(1) from None


def print_json(data: Any) -> None:
    """``data`` as highlighted JSON on stdout."""
    out.print_json(json.dumps(data, default=str))


def transfer_progress() -> Progress:
    """A byte-counting progress bar on stderr (stdout stays clean for ``--json``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
