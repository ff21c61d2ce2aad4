"""Text the API accepts: bounded to its column, free of NUL and other control characters.

The database refuses what these types let through only as an unmapped ``DataError`` (a NUL
byte on PostgreSQL, a value longer than its ``VARCHAR``, a lone surrogate that does not encode),
so every string that reaches a column is checked here, at the edge, once:

* ``SafeText``: free text (descriptions, reasons), at most ``DESCRIPTION_MAX`` characters: tab,
  newline and carriage return allowed, every other control character (Unicode ``Cc``) and
  lone surrogates (``Cs``) refused;
* the named ``...Text`` types (``NamespaceText``, ...): one-line values
  (names, filters, keys) no longer than their column, no control character at all;
* ``check_json_strings``: every key and string inside a JSON value (custom fields, provenance,
  base-model config), bounded keys, no control characters;
* ``check_form_fields``: the upload's form fields, with the lengths of their columns.

The lengths are read from the tables (``column_length``), so a migration that widens a column
widens its check.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints

from store.errors import BadRequest
from store.models import AdapterVersion, ApiToken, BaseModelRecord, Namespace

__all__ = [
    "BaseModelText",
    "NamespaceText",
    "TokenNameText",
    "DESCRIPTION_MAX",
    "JSON_KEY_MAX",
    "SafeText",
    "check_form_fields",
    "check_json_strings",
    "column_length",
    "no_control_chars",
    "no_line_control_chars",
    "check_provenance_text",
]

# Free-text columns are TEXT (unbounded in the database); the API bounds them all the same.
DESCRIPTION_MAX = 4096
JSON_KEY_MAX = 256
_MULTILINE_OK = frozenset("\t\n\r")


def column_length(model: type, column: str) -> int:
    """The declared length of ``model``'s ``VARCHAR`` column ``column``."""
    length = model.__table__.c[column].type.length  # type: ignore[attr-defined]
    assert length, f"{model.__name__}.{column} has no length"
    return int(length)


def _bad_char(value: str, allowed: frozenset[str]) -> str | None:
    for ch in value:
        if ch in allowed:
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            return f"U+{ord(ch):04X}"
    return None


def no_control_chars(value: str) -> str:
    """``value`` unchanged, if it holds no control character but tab/newline/CR and no lone
    surrogate; ``ValueError`` otherwise (pydantic turns it into a validation error)."""
    bad = _bad_char(value, _MULTILINE_OK)
    if bad is not None:
        raise ValueError(f"must not contain the control character {bad}")
    return value


def no_line_control_chars(value: str) -> str:
    """``value`` unchanged if it holds no control character at all (one-line values)."""
    bad = _bad_char(value, frozenset())
    if bad is not None:
        raise ValueError(f"must not contain the control character {bad}")
    return value


SafeText = Annotated[
    str, StringConstraints(max_length=DESCRIPTION_MAX), AfterValidator(no_control_chars)
]


def check_json_strings(value: Any, where: str, *, max_string: int = DESCRIPTION_MAX) -> Any:
    """``value`` unchanged if every key (at most ``JSON_KEY_MAX`` characters, one line) and
    every string (no control character but tab/newline/CR; at most ``max_string`` characters)
    inside it is acceptable; ``ValueError`` naming the first offender otherwise.
    Iterative, so a deep value cannot overflow the stack here."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if len(item) > max_string:
                raise ValueError(f"{path}: longer than {max_string} characters")
            _check(no_control_chars, item, path)
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path}: keys must be strings")
                if len(key) > JSON_KEY_MAX:
                    raise ValueError(f"{path}: a key is longer than {JSON_KEY_MAX} characters")
                _check(no_line_control_chars, key, f"{path} key")
                stack.append((f"{path}.{key[:40]}", sub))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", sub) for i, sub in enumerate(item))
    return value


def _check(check: Any, item: str, path: str) -> None:
    try:
        check(item)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# The upload's form fields: (column length, one line?); any other field (the JSON ones) is
# bounded by the upload's own 1 MiB field cap and checked again once parsed.
_FORM_FIELDS: dict[str, tuple[int, bool]] = {
    "namespace": (column_length(AdapterVersion, "namespace"), True),
    "name": (column_length(AdapterVersion, "name"), True),
    "version": (column_length(AdapterVersion, "version"), True),
    "base_model": (column_length(AdapterVersion, "base_model"), True),
    "description": (DESCRIPTION_MAX, False),
}
_PROVENANCE_TEXT = {
    "job_id": column_length(AdapterVersion, "job_id"),
    "dataset": column_length(AdapterVersion, "dataset"),
}
_ANY_FIELD = (1 << 20, False)


def check_form_fields(fields: dict[str, str]) -> None:
    """``BadRequest`` unless every upload form field fits its column and holds no control
    character (one-line fields none at all, the others tab/newline/CR only)."""
    for name, value in fields.items():
        limit, one_line = _FORM_FIELDS.get(name, _ANY_FIELD)
        if len(value) > limit:
            raise BadRequest(f"form field {name[:64]!r} is longer than {limit} characters")
        bad = _bad_char(value, frozenset() if one_line else _MULTILINE_OK)
        if bad is not None:
            raise BadRequest(
                f"form field {name[:64]!r} must not contain the control character {bad}"
            )


def check_provenance_text(provenance: dict[str, Any]) -> None:
    """``BadRequest`` unless the upload's provenance (and custom fields) hold acceptable text:
    ``job_id``/``dataset`` within their columns, every key and string free of control
    characters."""
    try:
        for key, limit in _PROVENANCE_TEXT.items():
            value = provenance.get(key)
            if value is not None and len(str(value)) > limit:
                raise ValueError(f"provenance.{key}: longer than {limit} characters")
        check_json_strings(provenance, "provenance")
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


# The catalog's bounded names, from their columns.
NAMESPACE_MAX = column_length(Namespace, "name")
BASE_MODEL_MAX = column_length(BaseModelRecord, "name")
TOKEN_NAME_MAX = column_length(ApiToken, "name")

_line = AfterValidator(no_line_control_chars)
NamespaceText = Annotated[str, StringConstraints(min_length=1, max_length=NAMESPACE_MAX), _line]
BaseModelText = Annotated[str, StringConstraints(min_length=1, max_length=BASE_MODEL_MAX), _line]
TokenNameText = Annotated[str, StringConstraints(min_length=1, max_length=TOKEN_NAME_MAX), _line]
