"""Fuzz suites reuse the security suites' live stack (``tests/security/live_stack.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

_SECURITY_TESTS = str(Path(__file__).resolve().parents[1] / "security")
if _SECURITY_TESTS not in sys.path:
    sys.path.append(_SECURITY_TESTS)

# ... and the engine suites' serving fixtures (``tests/engine/serving_fixtures.py``).
_ENGINE_TESTS = str(Path(__file__).resolve().parents[1] / "engine")
if _ENGINE_TESTS not in sys.path:
    sys.path.append(_ENGINE_TESTS)
