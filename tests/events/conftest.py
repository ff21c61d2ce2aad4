"""Events tests use the session's Redis DB index (6 for this package unless set)."""

from __future__ import annotations

import os

os.environ.setdefault("LORAFLEET_TEST_REDIS_DB", "6")
