"""Evaluation gate (issue 17): evaluation sets, the namespace policy, one evaluation per version.

* ``eval_sets``: a namespace's JSONL evaluation rows, content-addressed in the blob store.
* ``eval_policies``: per namespace, the eval set, metrics and gate rules.
* ``evaluations``: the scores of a version (candidate, base, comparison), its gate outcome.

Revision ID: 0009_evaluation
Revises: 0008_recovery
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_evaluation"
down_revision = "0008_recovery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_sets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_key", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("namespace", "name", name="uq_eval_set_name"),
    )
    with op.batch_alter_table("eval_sets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_sets_namespace"), ["namespace"], unique=False)
        batch_op.create_index(batch_op.f("ix_eval_sets_blob_key"), ["blob_key"], unique=False)
    op.create_table(
        "eval_policies",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("eval_set", sa.String(length=128), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
        sa.PrimaryKeyConstraint("namespace"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.String(length=40), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("eval_set_id", sa.String(length=40), nullable=False),
        sa.Column("eval_set_name", sa.String(length=128), nullable=False),
        sa.Column("eval_set_sha256", sa.String(length=64), nullable=False),
        sa.Column("comparison_adapter_id", sa.String(length=40), nullable=True),
        sa.Column("comparison", sa.String(length=256), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("engine_build", sa.String(length=256), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapter_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adapter_id"),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_namespace"), ["namespace"], unique=False)


def downgrade() -> None:
    op.drop_table("evaluations")
    op.drop_table("eval_policies")
    with op.batch_alter_table("eval_sets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_sets_blob_key"))
        batch_op.drop_index(batch_op.f("ix_eval_sets_namespace"))
    op.drop_table("eval_sets")
