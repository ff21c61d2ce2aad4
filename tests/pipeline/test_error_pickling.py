"""Typed errors survive pickling with their code and message: Celery hands ``on_failure`` a
copy that went through ``pickle`` (``celery.utils.serialization.get_pickleable_exception``),
and anything it cannot round-trip is replaced by a plain base exception without a code."""

from __future__ import annotations

import pickle

import pytest
from celery.utils.serialization import get_pickleable_exception

import store.blobs  # noqa: F401  (defines BlobCorrupt, a LorafleetError outside store.errors)
from store import errors
from store.errors import AdapterInvalid, LorafleetError


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _instance(cls: type[LorafleetError]) -> LorafleetError:
    if issubclass(cls, AdapterInvalid):
        return cls("bad_safetensors", "header of 9 GiB is over the limit")
    return cls(f"{cls.__name__} happened: ünïcode and 'quotes'")


ALL = sorted({LorafleetError, *_subclasses(LorafleetError)}, key=lambda c: c.__name__)


def test_every_class_of_store_errors_is_covered() -> None:
    declared = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, LorafleetError)
    }
    assert declared <= set(ALL)
    assert len(declared) >= 12


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL], ids=lambda p: f"proto{p}")
def test_error_round_trips_through_pickle(cls: type[LorafleetError], protocol: int) -> None:
    original = _instance(cls)
    copy = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(copy) is cls
    assert (copy.code, copy.message) == (original.code, original.message)
    assert copy.http_status == original.http_status
    assert copy.to_dict() == original.to_dict()
    assert str(copy) == str(original) and copy.args == original.args
    assert vars(copy) == vars(original)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_celery_keeps_the_typed_error_itself(cls: type[LorafleetError]) -> None:
    original = _instance(cls)
    assert get_pickleable_exception(original) is original


def test_adapter_invalid_keeps_code_detail_and_extra_attributes() -> None:
    original = AdapterInvalid("unsafe_pickle", "adapter_model.bin imports os.system")
    original.path = "adapter_model.bin"  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.code, copy.detail, copy.message) == (
        "unsafe_pickle",
        "adapter_model.bin imports os.system",
        "adapter_model.bin imports os.system",
    )
    assert copy.path == "adapter_model.bin"  # type: ignore[attr-defined]


def test_code_override_on_a_base_class_survives() -> None:
    original = errors.TransientError("db down", code="database_unavailable")
    copy = pickle.loads(pickle.dumps(original))
    assert (type(copy), copy.code, copy.message) == (
        errors.TransientError,
        "database_unavailable",
        "db down",
    )
