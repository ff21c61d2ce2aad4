"""The one bounded parser for untrusted JSON, and the one check of a JSON value's shape.

``json.loads`` raises more than ``JSONDecodeError``: ``RecursionError`` on deep nesting,
``ValueError`` on an integer of more than 4,300 digits, and it takes ``NaN``/``Infinity`` and
duplicate keys silently. What it accepts may still break every later reader (a value nested
deeper than a serializer's limit, a float the database's JSON refuses). Every parse of
untrusted bytes (adapter configs, safetensors headers, upload form fields, request bodies,
events) goes through ``load_json``, and every JSON value that will be stored passes
``check_json_value``; both raise only ``UntrustedJson`` (a ``ValueError``) with a stable
``reason``, which each edge maps to its own typed error (``AdapterInvalid``, ``BadRequest``,
a dead letter).

``events`` imports nothing of ours, so the rule lives here and ``store`` uses it.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JsonLimits",
    "UntrustedJson",
    "STORED_JSON",
    "check_json_value",
    "control_character",
    "load_json",
]


@dataclass(frozen=True)
class JsonLimits:
    """Bounds of one kind of untrusted JSON document."""

    max_bytes: int = 1 << 20
    # Nesting of arrays/objects; the document itself is depth 1.
    max_depth: int = 32
    # Object members plus array elements over the whole document.
    max_items: int = 100_000
    # Digits of an integer (20 holds every int64/uint64) and characters of any number.
    max_int_digits: int = 20
    max_number_chars: int = 64
    max_string_chars: int = 1 << 20
    # Whether strings and keys may hold control characters other than tab/newline/CR (and
    # lone surrogates): never for what is stored, the database refuses a NUL.
    control_characters: bool = False


# Values stored in the registry (custom fields, provenance, hyperparameters, metrics,
# base-model configs, event payloads): what every reader's serializer takes back.
STORED_JSON = JsonLimits()


class UntrustedJson(ValueError):
    """Untrusted JSON refused; ``reason`` is stable (``not_json``, ``too_large``, ``too_deep``,
    ``too_many_items``, ``number_too_large``, ``non_finite_number``, ``duplicate_key``,
    ``string_too_long``, ``control_character``, ``not_utf8``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def load_json(data: bytes | str, limits: JsonLimits = STORED_JSON, *, what: str = "JSON") -> Any:
    """Parse ``data`` (UTF-8 bytes or text) as one JSON document within ``limits``.

    Raises only ``UntrustedJson``: never ``RecursionError`` or ``ValueError`` of another
    kind. Refuses ``NaN``/``Infinity`` (and numbers that overflow to them), duplicate object
    keys, integers of more than ``max_int_digits`` digits, and any bound exceeded.
    """
    if len(data) > limits.max_bytes:
        raise UntrustedJson("too_large", f"{what} is {len(data)} bytes, above {limits.max_bytes}")
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UntrustedJson("not_utf8", f"{what} is not UTF-8 ({exc.reason})") from None
    else:
        text = data
    items = 0

    def pairs(members: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal items
        items += len(members)
        if items > limits.max_items:
            raise UntrustedJson("too_many_items", f"{what} has more than {limits.max_items} items")
        out: dict[str, Any] = {}
        for key, value in members:
            if key in out:
                raise UntrustedJson("duplicate_key", f"{what} repeats the key {key[:64]!r}")
            out[key] = value
        return out

    def integer(token: str) -> int:
        if len(token.lstrip("-")) > limits.max_int_digits:
            raise UntrustedJson(
                "number_too_large",
                f"{what} holds an integer of {len(token)} digits, above {limits.max_int_digits}",
            )
        return int(token)

    def number(token: str) -> float:
        if len(token) > limits.max_number_chars:
            raise UntrustedJson("number_too_large", f"{what} holds a {len(token)}-character number")
        value = float(token)
        if not math.isfinite(value):
            raise UntrustedJson("non_finite_number", f"{what} holds {token[:32]}, not finite")
        return value

    def constant(token: str) -> Any:
        raise UntrustedJson("non_finite_number", f"{what} holds {token}, which is not JSON")

    try:
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_int=integer,
            parse_float=number,
            parse_constant=constant,
        )
    except UntrustedJson:
        raise
    except RecursionError:
        raise UntrustedJson("too_deep", f"{what} is nested too deeply") from None
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise UntrustedJson("not_json", f"{what} is not valid JSON ({str(exc)[:200]})") from None
    check_json_value(value, limits, what=what, parsed=True)
    return value


def check_json_value(
    value: Any, limits: JsonLimits = STORED_JSON, *, what: str = "value", parsed: bool = False
) -> Any:
    """``value`` unchanged if it is plain JSON within ``limits``: depth, items, integer
    digits, finite floats, string lengths, string keys. Iterative (a deep value cannot
    overflow the stack here). ``parsed``: the value came from ``load_json``, whose hooks
    already checked numbers and counted items."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    items = 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limits.max_depth:
                raise UntrustedJson(
                    "too_deep", f"{what} is nested deeper than {limits.max_depth} levels"
                )
            items += len(item)
            if items > limits.max_items:
                raise UntrustedJson(
                    "too_many_items", f"{what} has more than {limits.max_items} items"
                )
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise UntrustedJson("not_json", f"{what} has a key that is not a string")
                    _check_string(key, limits, what)
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            _check_string(item, limits, what)
        elif parsed or item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            # Compare magnitudes, not digits: str() of a huge int is itself a ValueError.
            if abs(item) >= 10**limits.max_int_digits:
                raise UntrustedJson(
                    "number_too_large",
                    f"{what} holds an integer above {limits.max_int_digits} digits",
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UntrustedJson("non_finite_number", f"{what} holds {item}, not finite")
        else:
            raise UntrustedJson("not_json", f"{what} holds a {type(item).__name__}")
    return value


def _check_string(value: str, limits: JsonLimits, what: str) -> None:
    if len(value) > limits.max_string_chars:
        raise UntrustedJson(
            "string_too_long", f"{what} holds a string above {limits.max_string_chars} characters"
        )
    if not limits.control_characters:
        bad = control_character(value)
        if bad is not None:
            raise UntrustedJson("control_character", f"{what} holds the control character {bad}")


_MULTILINE = frozenset("\t\n\r")


def control_character(value: str, *, multiline: bool = True) -> str | None:
    """The first control character (Unicode ``Cc``, but tab/newline/CR when ``multiline``)
    or lone surrogate (``Cs``) in ``value`` as ``U+XXXX``; None when there is none."""
    if value.isprintable():  # fast path: no Cc/Cs (nor other non-printables) at all
        return None
    allowed = _MULTILINE if multiline else frozenset()
    for ch in value:
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Cs"):
            return f"U+{ord(ch):04X}"
    return None
