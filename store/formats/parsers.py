"""The bounded parsers of an adapter's untrusted files: one per format, each raising only
``AdapterInvalid`` with a stable code.

* JSON (``adapter_config.json``, safetensors headers): ``events.untrusted.load_json`` with
  this format's bounds;
* YAML (a ``.nemo``'s ``model_config.yaml``): ``yaml.SafeLoader`` with no aliases (no
  billion-laughs expansion), bounded nesting and node count, integers of at most 20 digits,
  no non-finite floats; timestamps and binary stay text (``2020-13-45`` is no error);
* a user-supplied regex (PEFT's ``target_modules`` as a string): bounded length, compiled
  inside the guard, matched only against the short module names.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

from events.untrusted import JsonLimits, UntrustedJson, check_json_value, load_json
from store.errors import AdapterInvalid

__all__ = [
    "CONFIG_LIMITS",
    "HEADER_LIMITS",
    "MAX_TARGET_PATTERN",
    "match_target_pattern",
    "parse_config_json",
    "parse_config_yaml",
    "parse_header_json",
]

# Config files are tiny and shallow (peft's adapter_config.json is depth 2, NeMo's config 3).
CONFIG_LIMITS = JsonLimits(max_bytes=1 << 20, max_depth=32, control_characters=True)
# A safetensors header is {name: {dtype, shape, data_offsets}, __metadata__: {str: str}}:
# depth 3; up to 100 MiB (guards.MAX_SAFETENSORS_HEADER) of entries.
HEADER_LIMITS = JsonLimits(
    max_bytes=100 * 1024 * 1024, max_depth=3, max_items=5_000_000, control_characters=True
)
MAX_TARGET_PATTERN = 256
_MAX_YAML_NODES = 100_000


def parse_config_json(data: bytes | str, name: str) -> Any:
    """``data`` parsed as JSON within ``CONFIG_LIMITS``; ``malformed_config`` otherwise."""
    try:
        return load_json(data, CONFIG_LIMITS, what=name)
    except UntrustedJson as exc:
        raise AdapterInvalid("malformed_config", str(exc)) from None


def parse_header_json(data: bytes, name: str) -> Any:
    """A safetensors header parsed within ``HEADER_LIMITS``; ``bad_safetensors`` otherwise."""
    try:
        return load_json(data, HEADER_LIMITS, what=f"{name}: header")
    except UntrustedJson as exc:
        raise AdapterInvalid("bad_safetensors", str(exc)) from None


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and counts depth and nodes while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not accepted")
        self._nodes += 1
        if self._nodes > _MAX_YAML_NODES:
            raise yaml.YAMLError(f"more than {_MAX_YAML_NODES} nodes")
        self._depth += 1
        try:
            if self._depth > CONFIG_LIMITS.max_depth:
                raise yaml.YAMLError(f"nested deeper than {CONFIG_LIMITS.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: Any) -> int:
        digits = sum(ch.isalnum() for ch in str(node.value))
        if digits > CONFIG_LIMITS.max_int_digits + 2:  # room for a 0x / 0o prefix
            raise yaml.YAMLError(f"an integer of {digits} digits")
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise yaml.YAMLError(f"{node.value!r} is not a finite number")
        return value


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader.construct_yaml_float)
# Timestamps and binary stay the text they are: nothing reads them, and a date that does not
# exist would be a ValueError from datetime().
for _tag in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"):
    _BoundedLoader.add_constructor(_tag, yaml.SafeLoader.construct_scalar)


def parse_config_yaml(data: bytes, name: str) -> Any:
    """``data`` parsed as one YAML document within ``CONFIG_LIMITS`` (no aliases, bounded
    nesting, node count and integers, finite floats); ``malformed_config`` otherwise."""
    if len(data) > CONFIG_LIMITS.max_bytes:
        raise AdapterInvalid("file_too_large", f"{name} is {len(data)} bytes, too large")
    try:
        text = data.decode("utf-8")
        loader = _BoundedLoader(text)
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
        return check_json_value(value, CONFIG_LIMITS, what=name)
    except UnicodeDecodeError as exc:
        raise AdapterInvalid("malformed_config", f"{name} is not UTF-8 ({exc.reason})") from None
    except (yaml.YAMLError, UntrustedJson, ValueError, TypeError, OverflowError) as exc:
        # ValueError/TypeError/OverflowError: a constructor's own (a date that does not exist).
        raise AdapterInvalid("malformed_config", f"{name}: {str(exc)[:300]}") from None
    except RecursionError:
        raise AdapterInvalid("malformed_config", f"{name} is nested too deeply") from None


def match_target_pattern(pattern: str, modules: tuple[str, ...], name: str) -> list[str]:
    """The ``modules`` that PEFT's string ``target_modules`` ``pattern`` selects (a full
    regex match, or the name itself); ``malformed_config`` for a pattern longer than
    ``MAX_TARGET_PATTERN`` or one that does not compile. Matched only against the short
    module names, so backtracking stays bounded."""
    if len(pattern) > MAX_TARGET_PATTERN:
        raise AdapterInvalid(
            "malformed_config",
            f"{name}: target_modules pattern is {len(pattern)} characters, above "
            f"{MAX_TARGET_PATTERN}",
        )
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise AdapterInvalid(
            "malformed_config", f"{name}: target_modules is not a valid pattern ({exc})"
        ) from None
    return [m for m in modules if m == pattern or compiled.fullmatch(m)]
