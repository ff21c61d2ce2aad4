"""``lorafleet events ...`` against a Redis that is not there: one line naming the URL and the
setting, exit 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.services import free_port

COMMANDS = [
    [
        "publish-job-completed",
        "--job-id", "j-1",
        "--output-model", "acme/x@1.0.0",
        "--base-model", "tiny-llama",
        "--artifact-uri", "file:///tmp/nowhere",
    ],
    ["dlq", "list"],
    ["dlq", "replay", "--all"],
    ["dlq", "replay", "1-1"],
]  # fmt: skip


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_an_unreachable_redis_is_a_one_line_error(args: list[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "LORAFLEET_REDIS_URL": url}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lorafleet"), "events", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "LORAFLEET_REDIS_URL" in lines[0], lines
