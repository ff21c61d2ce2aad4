"""Per-arm usage (issue 13, engine side): placeholder.

Revision ID: 0007_alias_usage
Revises: 0006_aliases
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = '0007_alias_usage'
down_revision = '0006_aliases'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
