"""Engine tenancy (issue 11): tokens that expire, and metered usage.

* ``api_tokens.expires_at``: when the token stops authenticating (null: never), next to
  ``revoked_at``; both answer 401 at the registry and at every engine.
* ``usage_buckets``: hourly counts per (token, namespace, adapter version, base model).
* ``usage_flushes``: the engine flushes already folded (a replay counts once).

Revision ID: 0002_engine_tenancy
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_engine_tenancy"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "usage_buckets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("adapter", sa.String(length=256), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("cancelled", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "hour", "token_id", "namespace", "adapter", "base_model", name="uq_usage_bucket"
        ),
    )
    with op.batch_alter_table("usage_buckets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_usage_buckets_hour"), ["hour"], unique=False)
        batch_op.create_index(batch_op.f("ix_usage_buckets_namespace"), ["namespace"], unique=False)
    op.create_table(
        "usage_flushes",
        sa.Column("engine_id", sa.String(length=128), nullable=False),
        sa.Column("flush_id", sa.String(length=80), nullable=False),
        sa.Column("folded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("engine_id", "flush_id"),
    )


def downgrade() -> None:
    op.drop_table("usage_flushes")
    with op.batch_alter_table("usage_buckets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_buckets_namespace"))
        batch_op.drop_index(batch_op.f("ix_usage_buckets_hour"))
    op.drop_table("usage_buckets")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
