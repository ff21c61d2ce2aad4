"""Per-arm usage (issue 13, engine side).

* ``usage_buckets.alias``: the alias a request named (``ns/name@alias``; "" for exact
  coordinates), part of the bucket's unique key, so the arms of one alias count apart and
  ``GET /v1/usage?group_by=alias`` can report them side by side.
* ``usage_buckets.latency_ms``: the summed request latency of the bucket (its mean is
  ``latency_ms / requests``).

Revision ID: 0007_alias_usage
Revises: 0006_aliases
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_alias_usage"
down_revision = "0006_aliases"
branch_labels = None
depends_on = None

_OLD_KEY = ["hour", "token_id", "namespace", "adapter", "base_model"]
_NEW_KEY = ["hour", "token_id", "namespace", "adapter", "alias", "base_model"]
_COUNTERS = ["requests", "prompt_tokens", "completion_tokens", "errors", "cancelled"]


def upgrade() -> None:
    with op.batch_alter_table("usage_buckets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("alias", sa.String(length=256), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("latency_ms", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.drop_constraint("uq_usage_bucket", type_="unique")
        batch_op.create_unique_constraint("uq_usage_bucket", _NEW_KEY)
    with op.batch_alter_table("usage_buckets", schema=None) as batch_op:
        # Server defaults only filled the rows that existed; the models set both.
        batch_op.alter_column("alias", server_default=None)
        batch_op.alter_column("latency_ms", server_default=None)


def downgrade() -> None:
    # Buckets that differ only by alias become one per old key: the first keeps the sums.
    same_key = " AND ".join(f"b.{c} = usage_buckets.{c}" for c in _OLD_KEY)
    sums = ", ".join(
        f"{c} = (SELECT SUM(b.{c}) FROM usage_buckets b WHERE {same_key})" for c in _COUNTERS
    )
    firsts = f"SELECT MIN(id) FROM usage_buckets GROUP BY {', '.join(_OLD_KEY)}"
    op.execute(f"UPDATE usage_buckets SET {sums} WHERE id IN ({firsts})")
    op.execute(f"DELETE FROM usage_buckets WHERE id NOT IN ({firsts})")
    with op.batch_alter_table("usage_buckets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_usage_bucket", type_="unique")
        batch_op.create_unique_constraint("uq_usage_bucket", _OLD_KEY)
        batch_op.drop_column("latency_ms")
        batch_op.drop_column("alias")
