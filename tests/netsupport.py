"""Plain helpers shared by test modules (import as ``from netsupport import ...``).

Kept out of ``conftest.py`` because several directories have a conftest of their own and
``from conftest import`` would pick whichever was imported first.
"""

from __future__ import annotations

import socket

S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
