"""Hugging Face-compatible API (issue 14): placeholder.

Revision ID: 0004_hf_api
Revises: 0003_governance
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = '0004_hf_api'
down_revision = '0003_governance'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
