"""How the registry's commands reach the API and print: the ``--url``/``--token``
options, a ``RegistryClient`` whose errors end the command cleanly, and the two consoles
(results to stdout; progress bars and errors to stderr). Used by ``store.cli`` and
``store.cli_adapters``.

Without ``--url``/``LORAFLEET_API_URL`` a command talks to ``StoreSettings.resolved_api_url``
(a running ``lorafleet up``'s API, from ``<home>/stack.json``, else the default port);
without ``--token``/``LORAFLEET_TOKEN`` it uses that stack's admin token, but only when
talking to that stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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
    "AsJson",
    "Token",
    "Url",
    "api_client",
    "err",
    "out",
    "print_json",
    "resolve_api",
    "transfer_progress",
]

out = Console()
err = Console(stderr=True)

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LORAFLEET_API_URL",
        help="Registry API base URL; default the running `lorafleet up`'s, else "
        "http://LORAFLEET_API_HOST:LORAFLEET_API_PORT.",
        show_default=False,
    ),
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="LORAFLEET_TOKEN", help="Bearer token.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]


def resolve_api(url: str | None, token: str | None) -> tuple[str, str | None]:
    """The API URL and token a command uses: the options (or their variables), else the
    settings' URL; the running stack's admin token only for the running stack's URL."""
    from store.settings import StoreSettings

    settings = StoreSettings()
    url = (url or settings.resolved_api_url()).rstrip("/")
    if token is None:
        stack = settings.running_stack()
        if stack is not None and stack.api_url == url:
            token = stack.token()
    return url, token


@contextmanager
def api_client(url: str | None, token: str | None) -> Iterator[RegistryClient]:
    """A client (``resolve_api``) whose API errors end the command with a one-line message
    and exit code 1."""
    url, token = resolve_api(url, token)
    try:
        with RegistryClient(url, token, timeout=60.0) as client:
            yield client
    except ApiError as exc:
        # escaped: a message may quote a pattern like ^[a-z0-9]..., which is not markup.
        status = f"{exc.status} " if exc.status else ""
        message = f"[red]error[/red] {status}{exc.code}: {escape(exc.message)}"
        err.print(message, highlight=False, soft_wrap=True)  # one line, however long
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
