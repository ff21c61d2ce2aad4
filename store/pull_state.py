"""What ``lorafleet pull`` trusts on disk and from the registry: the directory an adapter
version gets (injective and stable), the state file (which directories are this tool's), and
which fleet entries are safe to write. Every name the registry sends is untrusted until it
passes ``events.models``' one coordinate pattern; every state entry until it names a
directory this tool would create directly inside the destination."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import structlog

from events.models import parse_coordinates, shown
from store.client_download import FILE_MODE

log = structlog.get_logger(__name__)

STATE_FILE = ".lorafleet-pull.json"

# Ids as the registry mints them (``ad_`` + hex); bounded, and safe in a URL and a log line.
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}", re.ASCII)
COORDINATE_FIELDS = ("namespace", "name", "version")


def adapter_dir_name(namespace: str, name: str, version: str) -> str:
    """The directory (and so NIM's served model) name of an adapter version: injective and
    stable. ``namespace--name--version`` (``acme--bot--1.2.0``) when no part holds ``--``;
    otherwise ``namespace~name~version`` (``a~x--y~1.0.0``).

    ``~`` is in no part's alphabet, so the second form splits one way only and never equals
    the first; in the first, a part holds no ``--`` and names and versions start with a
    letter or digit, so the separators are the two ``--`` followed by one. Before, every
    name was ``namespace--name--version`` and ``a/x--y`` and ``a--x/y`` shared one
    directory. The caller validates the parts (``parse_coordinates``)."""
    if "--" in namespace or "--" in name or "--" in version:
        return f"{namespace}~{name}~{version}"
    return f"{namespace}--{name}--{version}"


def legacy_dir_name(namespace: str, name: str, version: str) -> str:
    """The name pulls before the injective mapping gave a directory (cleaned up by this one)."""
    return f"{namespace}--{name}--{version}"


def read_state_file(dest: Path) -> dict:
    try:
        data = json.loads((dest / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_state(dest: Path) -> dict[str, dict]:
    """The state file's entries that name a directory this tool creates, directly inside
    ``dest``; any other entry (a hand-edited path, a symlink, a name pull never gives) is
    dropped with a warning and its target left alone."""
    adapters = read_state_file(dest).get("adapters")
    state: dict[str, dict] = {}
    for dirname, entry in (adapters if isinstance(adapters, dict) else {}).items():
        problem = _state_entry_problem(dest, dirname, entry)
        if problem is None:
            state[dirname] = entry
        else:
            log.warning("state_entry_ignored", entry=shown(dirname), reason=problem)
    return state


def _state_entry_problem(dest: Path, dirname: str, entry: object) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("adapter"), str):
        return "not an entry this tool writes"
    try:
        coordinates = parse_coordinates(entry["adapter"])
    except ValueError:
        return "its adapter is not namespace/name@version"
    if dirname not in (adapter_dir_name(*coordinates), legacy_dir_name(*coordinates)):
        return f"not the directory pull gives {shown(entry['adapter'])}"
    real = Path(os.path.realpath(dest / dirname))
    if real != Path(os.path.realpath(dest)) / dirname:
        return f"resolves outside {dest}"
    return None


def fleet_entry_problem(adapter: object) -> str | None:
    """Why a fleet entry from the registry is unsafe to write (None when it is not)."""
    if not isinstance(adapter, dict):
        return "not an object"
    parts = [adapter.get(key) for key in COORDINATE_FIELDS]
    if not all(isinstance(part, str) for part in parts):
        return "namespace, name and version must be strings"
    try:
        if parse_coordinates("{}/{}@{}".format(*parts)) != tuple(parts):
            return "not namespace/name@version"
    except ValueError as exc:
        return str(exc)
    if not isinstance(adapter.get("id"), str) or not _ID_RE.fullmatch(adapter["id"]):
        return f"invalid adapter id {shown(adapter.get('id'))}"
    if not isinstance(adapter.get("manifest_sha256"), str | None):
        return "manifest_sha256 must be a string"
    return None


def sent_as(adapter: object) -> str:
    if not isinstance(adapter, dict):
        return shown(adapter)
    return shown("{}/{}@{}".format(*(adapter.get(key) for key in COORDINATE_FIELDS)))


def write_state(dest: Path, state: dict[str, dict], generation: int, base_model: str) -> None:
    # Atomic replace: a crash mid-write must not forget which directories are ours.
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{STATE_FILE}.")
    os.fchmod(fd, FILE_MODE)
    doc = {"base_model": base_model, "generation": generation, "adapters": state}
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
    os.replace(tmp, dest / STATE_FILE)
