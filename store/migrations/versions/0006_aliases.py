"""Aliases, A/B split and pinning (issue 13): placeholder.

Revision ID: 0006_aliases
Revises: 0005_hardening
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = '0006_aliases'
down_revision = '0005_hardening'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
