"""The commands lorafleet prints for a user to run next (``up``'s banner, the demo's closing
hints) work in the user's own shell, where ``make demo``'s virtual environment is not
activated: they name ``.venv/bin/lorafleet`` then, and the bare name only when it is on PATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _shell(command: str, path: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def _hinted(path: str, cwd: Path) -> str:
    done = _shell(
        f"{sys.executable} -c 'from lorafleet.stack import lorafleet_command as c; print(c())'",
        path,
        cwd,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_unactivated_venv_is_named_and_the_hint_runs_in_that_shell() -> None:
    plain_path = "/usr/local/bin:/usr/bin:/bin"
    cwd = BIN.parent.parent if (BIN.parent.parent / "Makefile").exists() else ROOT
    hint = _hinted(plain_path, cwd)
    assert hint != "lorafleet" and hint.endswith("bin/lorafleet"), hint
    assert not Path(hint).is_absolute() or not BIN.is_relative_to(cwd), hint
    ran = _shell(f"{hint} --version", plain_path, cwd)
    assert ran.returncode == 0 and ran.stdout.startswith("lorafleet "), ran.stderr


def test_an_activated_venv_gets_the_bare_name() -> None:
    path = f"{BIN}:/usr/local/bin:/usr/bin:/bin"
    assert _hinted(path, ROOT) == "lorafleet"
    ran = _shell("lorafleet --version", path, ROOT)
    assert ran.returncode == 0, ran.stderr
