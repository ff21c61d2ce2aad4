"""The ``lorafleet`` command as a user runs it: a fresh interpreter against a live registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.live_api import LiveRegistry
from support.processes import process_env


def run_cli(
    reg: LiveRegistry, cwd: Path, *args: str, token: str | None = None, columns: int = 80
) -> subprocess.CompletedProcess[str]:
    """``lorafleet ARGS`` in ``cwd`` against ``reg`` with ``token`` (default: its admin
    token), ``LORAFLEET_HOME`` under ``cwd``; output captured as text."""
    env = process_env(
        {
            "LORAFLEET_API_URL": reg.base_url,
            "LORAFLEET_TOKEN": token or reg.admin_token,
            "LORAFLEET_HOME": str(cwd / ".lorafleet"),
            "COLUMNS": str(columns),
        }
    )
    return subprocess.run(
        [sys.executable, "-c", "from lorafleet.cli import app; app()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
