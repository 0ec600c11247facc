"""token datasets: what kind a dataset is, its token tensors, largest token id and sequence length

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 04:30:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=20), nullable=False, server_default='xy'))
        batch_op.add_column(sa.Column('tensors', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('max_token_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('seq_len', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('seq_len')
        batch_op.drop_column('max_token_id')
        batch_op.drop_column('tensors')
        batch_op.drop_column('kind')
