"""batches, job dedupe fingerprints, reused results

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 22:20:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'batches',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('owner', sa.String(length=200), nullable=False),
        sa.Column('collection', sa.String(length=300), nullable=True),
        sa.Column('dataset_id', sa.String(length=32), nullable=False),
        sa.Column('loss', sa.String(length=40), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('force', sa.Boolean(), nullable=False),
        sa.Column('idempotency_key', sa.String(length=200), nullable=True),
        sa.Column('num_jobs', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='RESTRICT'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('owner', 'idempotency_key', name='uq_batches_owner_idempotency_key'),
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batches_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_batches_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index('ix_batches_owner_created_at', ['owner', 'created_at'], unique=False)
        batch_op.create_index('ix_batches_owner_collection', ['owner', 'collection'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('reused_from', sa.String(length=32), nullable=True))
        batch_op.create_foreign_key('fk_jobs_batch_id_batches', 'batches', ['batch_id'], ['id'], ondelete='CASCADE')
        batch_op.create_index(batch_op.f('ix_jobs_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index('ix_jobs_owner_fingerprint', ['owner', 'fingerprint'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_owner_fingerprint')
        batch_op.drop_index(batch_op.f('ix_jobs_batch_id'))
        batch_op.drop_constraint('fk_jobs_batch_id_batches', type_='foreignkey')
        batch_op.drop_column('reused_from')
        batch_op.drop_column('fingerprint')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_owner_collection')
        batch_op.drop_index('ix_batches_owner_created_at')
        batch_op.drop_index(batch_op.f('ix_batches_dataset_id'))
        batch_op.drop_index(batch_op.f('ix_batches_owner'))
    op.drop_table('batches')
