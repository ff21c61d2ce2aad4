"""Hardening (issue 12): placeholder.

Revision ID: 0005_hardening
Revises: 0004_hf_api
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = '0005_hardening'
down_revision = '0004_hf_api'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
