"""Governance: four-eyes, history, restore, webhooks (issue 15): placeholder.

Revision ID: 0003_governance
Revises: 0002_engine_tenancy
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = '0003_governance'
down_revision = '0002_engine_tenancy'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
