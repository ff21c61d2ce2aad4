"""Security suites: the live registry stack per backend, and the formats engineer's
hostile-corpus builders (``tests/store/test_formats_hostile.py``) made importable."""

from __future__ import annotations

import sys
from pathlib import Path

_STORE_TESTS = str(Path(__file__).resolve().parents[1] / "store")
if _STORE_TESTS not in sys.path:
    # Reuse, not copy, the hostile-archive and pickle builders the formats tests define.
    sys.path.append(_STORE_TESTS)
