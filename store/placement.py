"""Where an untrusted relative path may be placed on disk: checked before the disk is touched.

The operating system refuses a path component over 255 bytes (``ENAMETOOLONG``), a file
where a directory of the same name is needed or the other way round (``ENOTDIR`` /
``EISDIR``), and a name that decodes to ``..`` or holds a NUL writes elsewhere or raises
``ValueError``. Callers (the upload, the artifact fetch) ask ``path_problem`` and
``clashing_paths`` first and raise their own typed error, so none of these reaches the disk
as an ``OSError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

__all__ = [
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "MAX_PATH_DEPTH",
    "clashing_paths",
    "file_name_problem",
    "path_problem",
]

MAX_COMPONENT_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, tmpfs
MAX_PATH_BYTES = 1024  # far below PATH_MAX (4096) once under a staging directory
MAX_PATH_DEPTH = 16


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one path component, or None: empty, ``.``/``..``, a ``/``,
    ``\\`` or NUL (any control character), or more than ``MAX_COMPONENT_BYTES`` UTF-8
    bytes (a lone surrogate does not encode: refused too)."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name or "\\" in name or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return f"{name[:64]!r} holds a separator or a control character"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{name[:64]!r} is not encodable as UTF-8"
    if size > MAX_COMPONENT_BYTES:
        return f"a path component is {size} bytes, above {MAX_COMPONENT_BYTES}"
    return None


def path_problem(raw: str) -> str | None:
    """Why ``raw`` is not a relative POSIX path that stays inside its directory, or None:
    absolute, a drive letter, ``.``/``..``/empty components, backslashes, control
    characters, a component above ``MAX_COMPONENT_BYTES`` bytes, more than
    ``MAX_PATH_DEPTH`` components or ``MAX_PATH_BYTES`` bytes in all."""
    if not raw or raw.startswith("/") or ":" in raw[:3]:
        return f"unsafe file path {raw[:128]!r}"
    parts = raw.split("/")
    if len(parts) > MAX_PATH_DEPTH:
        return f"file path has {len(parts)} components, above {MAX_PATH_DEPTH}"
    for part in parts:
        problem = file_name_problem(part)
        if problem is not None:
            return f"unsafe file path {raw[:128]!r}: {problem}"
    if len(raw.encode("utf-8")) > MAX_PATH_BYTES:
        return f"file path is longer than {MAX_PATH_BYTES} bytes"
    return None


def clashing_paths(paths: Iterable[PurePosixPath]) -> tuple[str, str] | None:
    """Two of ``paths`` that cannot both be placed (one is a directory of the other, e.g.
    ``a`` and ``a/b``), or None. Duplicates are the caller's own check."""
    files = {str(p) for p in paths}
    for path in sorted(files):
        parent = PurePosixPath(path).parent
        while str(parent) not in ("", "."):
            if str(parent) in files:
                return str(parent), path
            parent = parent.parent
    return None
