"""Engine tenancy and metering (issue 11): placeholder, filled by that work.

Revision ID: 0002_engine_tenancy
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = '0002_engine_tenancy'
down_revision = '0001_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
