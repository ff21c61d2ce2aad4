"""Performance (issue 16): placeholder.

Revision ID: 0010_performance
Revises: 0009_evaluation
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = '0010_performance'
down_revision = '0009_evaluation'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
