"""The light install: the registry CLI, ``lorafleet pull`` and announcing a job never import
torch (nor the rest of the ``engine`` extra); ``lorafleet --help`` and ``--version`` work
without it, and an engine command says which extra to install instead of a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.processes import process_env
from support.services import free_port

from lorafleet import __version__

ROOT = Path(__file__).resolve().parents[1]
ENGINE_EXTRA = ("torch", "numpy", "safetensors", "tokenizers")

# Runs the CLI in a fresh interpreter, then prints the exit code and which modules of the
# engine extra got imported. With BLOCK set, importing any of them fails as on a machine
# where the extra is not installed.
_PROBE = textwrap.dedent(
    """
    import importlib.abc, os, sys
    HEAVY = {heavy!r}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HEAVY:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    if os.environ.get("BLOCK"):
        sys.meta_path.insert(0, NotInstalled())
    from lorafleet.cli import app
    try:
        app(sys.argv[1:], prog_name="lorafleet")
        code = 0
    except SystemExit as exc:
        code = exc.code
    loaded = sorted(m for m in HEAVY if m in sys.modules)
    print("PROBE", code, ",".join(loaded) or "-", file=sys.stderr)
    """
).format(heavy=ENGINE_EXTRA)


def _probe(*args: str, block: bool = False, cwd: Path = ROOT) -> tuple[int, list[str], str]:
    """Exit code, engine-extra modules imported, and output of ``lorafleet ARGS``."""
    env_block = {"BLOCK": "1"} if block else {}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=process_env({"LORAFLEET_LOG_FORMAT": "console", **env_block}),
    )
    [probe] = [line for line in result.stderr.splitlines() if line.startswith("PROBE ")]
    _, code, loaded = probe.split(" ")
    return int(code), [] if loaded == "-" else loaded.split(","), result.stdout + result.stderr


def test_importing_the_cli_imports_no_torch() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import lorafleet.cli, sys; "
            f"loaded = [m for m in {ENGINE_EXTRA!r} if m in sys.modules]; "
            "assert not loaded, loaded",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["adapters", "--help"],
        ["adapters", "upload", "--help"],
        ["adapters", "pull", "--help"],
        ["pull", "--help"],
        ["events", "--help"],
        ["events", "status", "--help"],
        ["events", "publish-job-completed", "--help"],
        ["namespaces", "--help"],
    ],
    ids=" ".join,
)
def test_client_commands_import_no_torch(args: list[str]) -> None:
    code, loaded, output = _probe(*args)
    assert code == 0, output
    assert loaded == [], f"lorafleet {' '.join(args)} imported {loaded}"


def test_client_commands_run_without_the_engine_extra(tmp_path: Path) -> None:
    """The commands themselves, not only their help, against a registry that is down: each
    gets as far as the network (exit 1, a one-line error) with torch unimportable."""
    url = f"http://127.0.0.1:{free_port()}"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    runs = [
        ["adapters", "list", "--url", url],
        ["adapters", "pull", "acme/bot@1.0.0", str(tmp_path / "out"), "--url", url],
        ["pull", "--dest", str(tmp_path / "peft"), "--base-model", "tiny", "--url", url],
        ["events", "status", "job-1", "--url", url],
        [
            "adapters", "upload", str(adapter), "--namespace", "acme", "--name", "bot",
            "--version", "1.0.0", "--base-model", "tiny", "--url", url,
        ],
    ]  # fmt: skip
    for args in runs:
        code, loaded, output = _probe(*args, block=True, cwd=tmp_path)
        assert code == 1, (args, output)
        assert "Traceback" not in output, (args, output)
        assert loaded == [], (args, loaded)


def test_announcing_a_job_works_without_the_engine_extra(tmp_path: Path, redis_url: str) -> None:
    """What a trainer runs after a fine-tune: copy the output to an artifact store and
    publish the event, with torch unimportable."""
    import redis

    from events import streams

    url = redis_url
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    code, loaded, output = _probe(
        "events", "publish-job-completed", "--job-id", "light-1",
        "--output-model", "acme/bot@1.0.0", "--base-model", "tiny",
        "--output-dir", str(adapter), "--upload-to", f"file://{tmp_path / 'artifacts'}",
        "--redis-url", url, block=True, cwd=tmp_path,
    )  # fmt: skip
    client = redis.Redis.from_url(url)
    try:
        assert code == 0, output
        assert loaded == []
        assert client.xlen(streams.JOBS_STREAM) >= 1
    finally:
        client.close()


def test_an_engine_command_without_the_extra_names_it() -> None:
    code, _, output = _probe("engine", "serve", "--help", block=True)
    assert code == 2, output
    assert "pip install 'lorafleet[engine]'" in output
    assert "Traceback" not in output


def test_lorafleet_help_and_version_exit_zero() -> None:
    lorafleet = Path(sys.executable).parent / "lorafleet"
    helped = subprocess.run([lorafleet, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "engine" in helped.stdout and "adapters" in helped.stdout
    version = subprocess.run([lorafleet, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"lorafleet {__version__}"


def test_the_base_install_leaves_the_engine_extra_out_and_every_full_install_has_it() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=~!; ]", r, maxsplit=1)[0].lower() for r in requirements}

    extras = project["optional-dependencies"]
    assert names(project["dependencies"]).isdisjoint(ENGINE_EXTRA)
    assert names(extras["engine"]) == set(ENGINE_EXTRA)
    for extra in ("test", "bench", "demo"):  # make venv, make demo, .ci/run
        assert "lorafleet[engine]" in extras[extra], extra
