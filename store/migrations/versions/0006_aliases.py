"""Aliases, A/B split and pinning (issue 13).

* ``aliases``: ``namespace/name@alias`` -> a weighted list of ready versions (JSON targets).
* ``alias_revisions``: every revision of every alias, kept after the alias is deleted.
* ``adapter_versions.pinned``: engines keep the version resident (false for existing rows).

Revision ID: 0006_aliases
Revises: 0005_hardening
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_aliases"
down_revision = "0005_hardening"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "aliases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["namespace"], ["namespaces.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("namespace", "name", "alias", name="uq_alias"),
    )
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_aliases_base_model"), ["base_model"], unique=False)
    op.create_table(
        "alias_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias_id", sa.String(length=40), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=True),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alias_revisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alias_revisions_alias_id"), ["alias_id"], unique=False)
        batch_op.create_index(
            "ix_alias_revisions_coordinates", ["namespace", "name", "alias"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("alias_revisions", schema=None) as batch_op:
        batch_op.drop_index("ix_alias_revisions_coordinates")
        batch_op.drop_index(batch_op.f("ix_alias_revisions_alias_id"))
    op.drop_table("alias_revisions")
    with op.batch_alter_table("aliases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aliases_base_model"))
    op.drop_table("aliases")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_column("pinned")
