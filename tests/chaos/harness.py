"""The chaos harness: what every run registers and announces.

* ``fresh_database`` / ``write_artifacts``: a seeded PostgreSQL database and the shared
  adapter directories every run announces.
* ``Announced``: one announcement and the outcome it must end with.

The faults themselves are in ``faults.py``; the pipeline's processes in ``cluster.py``, on
``support.processes.Proc`` (a process ``kill9()`` takes down with its prefork children).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support.processes import CELERY_APP as DEFAULT_CELERY_APP
from support.services import fresh_postgres_database

BASE_MODEL = "tiny-llama"
AUTO_NS, MANUAL_NS = "acme", "gated"
# The Celery app the workers run; another module can be named to try a configuration change
# under the same faults (it must import ``workers.tasks``' app and adjust its ``conf``).
CELERY_APP = os.environ.get("LORAFLEET_CHAOS_CELERY_APP", DEFAULT_CELERY_APP)


@contextmanager
def fresh_database(prefix: str = "lorafleet_chaos") -> Iterator[str]:
    """A brand-new PostgreSQL database, migrated and seeded with namespaces ``acme`` (auto
    approval), ``gated`` (manual) and the base model; dropped afterwards."""
    from sqlmodel import Session

    from engine.tiny import tiny_config
    from store import tenancy
    from store.db import make_engine, upgrade

    with fresh_postgres_database(prefix) as url:
        upgrade(url)
        engine = make_engine(url)
        try:
            with Session(engine) as s:
                tenancy.create_namespace(s, AUTO_NS, approval_policy="auto", actor="chaos")
                tenancy.create_namespace(s, MANUAL_NS, approval_policy="manual", actor="chaos")
                tenancy.register_base_model(s, BASE_MODEL, tiny_config(), actor="chaos")
                s.commit()
        finally:
            engine.dispose()
        yield url


def write_artifacts(root: Path) -> dict[str, Path]:
    """Three valid HF PEFT adapters for the tiny model and one trained for another model
    (refused with ``shape_mismatch``), under the artifact root ``root``."""
    from support.factories import random_adapter, write_hf_peft

    from engine.tiny import tiny_config
    from store.formats import BaseModelSpec

    # engine.tiny's Llama, so the engine can load the base model the chaos runs register.
    spec = BaseModelSpec.from_hf_config(tiny_config())
    other = BaseModelSpec.from_hf_config(tiny_config(hidden_size=32, intermediate_size=64))
    out: dict[str, Path] = {"root": root}
    for seed in range(3):
        out[f"valid-{seed}"] = write_hf_peft(
            random_adapter(spec, rank=4, seed=seed), root / f"valid-{seed}"
        )
    out["invalid"] = write_hf_peft(random_adapter(other, rank=4, seed=9), root / "invalid")
    return out


@dataclass
class Announced:
    """One announcement we sent and the outcome the registry must end with."""

    event_id: str
    coordinates: str
    expected: str  # ready | pending | failed
    code: str | None = None  # the failure code when expected == "failed"
    sent_at: float = field(default_factory=time.time)
