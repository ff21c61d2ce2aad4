"""The README stays true to the code: every setting's environment variable is documented."""

from __future__ import annotations

from pathlib import Path

from engine.settings import EngineSettings
from events.s3 import S3Settings
from store.settings import StoreSettings
from workers.evaluate import EvalSettings
from workers.settings import WorkerSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _env_names(cls: type) -> set[str]:
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.add(str(choices[0]))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def test_every_environment_variable_is_in_the_readme_configuration_table() -> None:
    documented = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    classes = (StoreSettings, S3Settings, WorkerSettings, EngineSettings, EvalSettings)
    names = set().union(*(_env_names(c) for c in classes))
    missing = sorted(n for n in names if f"`{n}`" not in documented and n not in documented)
    assert not missing, f"README's configuration table lacks {missing}"


def test_readme_puts_the_two_commands_first() -> None:
    top = README.split("## ", 1)[0]
    assert "make demo" in top and "make test" in top


def test_deploying_documents_the_required_admin_token_and_the_engines_reader_token() -> None:
    deploying = README.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    kubernetes = (Path(__file__).resolve().parents[1] / "docs" / "deploy-kubernetes.md").read_text()
    for text in (deploying, kubernetes):
        assert "LORAFLEET_ADMIN_TOKEN" in text and "no default" in text
        assert "--role reader --name engine" in text
        assert "engine-token" in text
        assert "whl/cu130" in text
    assert "change-me" not in deploying + kubernetes
