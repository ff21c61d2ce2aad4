"""Initial schema: namespaces, base models, adapter versions and files, API tokens, access
log, fleet generation, outbox, ingest records.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('access_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=256), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=512), nullable=True),
    sa.Column('namespace', sa.String(length=63), nullable=True),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('access_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_log_at'), ['at'], unique=False)

    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_hash')
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_namespace'), ['namespace'], unique=False)

    op.create_table('base_models',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('architecture', sa.String(length=128), nullable=False),
    sa.Column('hidden_size', sa.Integer(), nullable=False),
    sa.Column('intermediate_size', sa.Integer(), nullable=False),
    sa.Column('num_layers', sa.Integer(), nullable=False),
    sa.Column('num_heads', sa.Integer(), nullable=False),
    sa.Column('num_kv_heads', sa.Integer(), nullable=False),
    sa.Column('head_dim', sa.Integer(), nullable=False),
    sa.Column('vocab_size', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    fleet_state = op.create_table('fleet_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    # The one counter row: every serving change increments it under a row lock.
    op.bulk_insert(fleet_state, [{'id': 1, 'generation': 0}])
    op.create_table('ingest_records',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('job_id', sa.String(length=256), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('adapter_id', sa.String(length=40), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('event_id')
    )
    with op.batch_alter_table('ingest_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingest_records_job_id'), ['job_id'], unique=False)

    op.create_table('namespaces',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('approval_policy', sa.String(length=16), nullable=False),
    sa.Column('max_bytes', sa.BigInteger(), nullable=True),
    sa.Column('max_versions', sa.Integer(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stream', sa.String(length=128), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_sent_at_id', ['sent_at', 'id'], unique=False)

    op.create_table('adapter_versions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('base_model', sa.String(length=256), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=True),
    sa.Column('rank', sa.Integer(), nullable=True),
    sa.Column('alpha', sa.Float(), nullable=True),
    sa.Column('target_modules', sa.JSON(), nullable=True),
    sa.Column('job_id', sa.String(length=256), nullable=True),
    sa.Column('dataset', sa.String(length=1024), nullable=True),
    sa.Column('hyperparameters', sa.JSON(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('custom_fields', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.String(length=64), nullable=True),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('content_sha256', sa.String(length=64), nullable=True),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=True),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=256), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=256), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['namespace'], ['namespaces.name'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('namespace', 'name', 'version', name='uq_adapter_coordinates')
    )
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.create_index('ix_adapter_versions_base_status', ['base_model', 'status'], unique=False)
        batch_op.create_index('ix_adapter_versions_created_at', ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_versions_job_id'), ['job_id'], unique=False)
        batch_op.create_index('ix_adapter_versions_name', ['name'], unique=False)
        batch_op.create_index('ix_adapter_versions_ns_status_created', ['namespace', 'status', 'created_at'], unique=False)

    op.create_table('adapter_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.String(length=40), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('blob_key', sa.String(length=80), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapter_versions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('adapter_id', 'role', 'path', name='uq_adapter_file')
    )
    with op.batch_alter_table('adapter_files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_adapter_files_adapter_id'), ['adapter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_adapter_files_blob_key'), ['blob_key'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('adapter_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_adapter_files_blob_key'))
        batch_op.drop_index(batch_op.f('ix_adapter_files_adapter_id'))

    op.drop_table('adapter_files')
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_adapter_versions_ns_status_created')
        batch_op.drop_index('ix_adapter_versions_name')
        batch_op.drop_index(batch_op.f('ix_adapter_versions_job_id'))
        batch_op.drop_index('ix_adapter_versions_created_at')
        batch_op.drop_index('ix_adapter_versions_base_status')

    op.drop_table('adapter_versions')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_sent_at_id')

    op.drop_table('outbox')
    op.drop_table('namespaces')
    with op.batch_alter_table('ingest_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingest_records_job_id'))

    op.drop_table('ingest_records')
    op.drop_table('fleet_state')
    op.drop_table('base_models')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_namespace'))

    op.drop_table('api_tokens')
    op.drop_table('access_log')
