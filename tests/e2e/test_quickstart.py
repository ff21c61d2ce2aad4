"""The README's Quick start runs as written: every line of its bash block, in one shell.

The one substitution is the first line: ``make venv && . .venv/bin/activate`` becomes the test
interpreter's own virtual environment on ``PATH`` (building a second venv is ``.ci/run``'s
job). The block runs in a scratch directory holding a link to ``examples/``, with no
``LORAFLEET_*`` variable inherited, on the README's own ports (8080 and 8000).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_LINE = "make venv && . .venv/bin/activate"

pytestmark = pytest.mark.slow


def quickstart_block() -> str:
    """The first ```bash block under the README's "Quick start without the demo" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start without the demo") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the Quick start has no bash block"
    return match.group(1)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_readme_quickstart_block_starts_by_making_the_venv() -> None:
    block = quickstart_block()
    assert block.splitlines()[0] == VENV_LINE
    assert "--no-announce" in block, "the Quick start must create the adapter it uploads"
    assert "NIM_PEFT_REFRESH_INTERVAL" in block, "the Quick start's engine needs a live source"


def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    for port in (8080, 8000):
        assert port_is_free(port), f"port {port} is taken; the Quick start needs it"
    block = quickstart_block().replace(
        VENV_LINE, f'export PATH="{Path(sys.executable).parent}:$PATH"'
    )
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAFLEET_", "NIM_"))}
    env["LORAFLEET_LOG_FORMAT"] = "console"
    script = tmp_path / "quickstart.sh"
    script.write_text("set -euo pipefail\n" + block)
    log = tmp_path / "quickstart.log"
    # Output to a file, not a pipe: the API and the engine the block leaves running in the
    # background would hold a pipe open past the script's end.
    with log.open("w") as sink:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the Quick start did not finish in 240 s:\n{log.read_text()[-4000:]}")
        finally:
            # Stop what the block left running, as closing the user's shell would.
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    last = out.strip().splitlines()[-1]
    answer = json.loads(last)
    assert answer["model"] == "acme/support-bot@1.0.0", last
    assert answer["choices"][0]["text"].strip(), last
    assert (tmp_path / "my-lora" / "adapter_model.safetensors").is_file()
