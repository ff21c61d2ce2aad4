"""Evaluation gate (issue 17): placeholder.

Revision ID: 0009_evaluation
Revises: 0008_recovery
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = '0009_evaluation'
down_revision = '0008_recovery'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
