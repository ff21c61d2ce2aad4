"""Recovery at production defaults (issue 12 class 9): placeholder.

Revision ID: 0008_recovery
Revises: 0007_alias_usage
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = '0008_recovery'
down_revision = '0007_alias_usage'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
