"""workers.slots: the runs a worker trains at once (its Celery concurrency; GPU
workers: FFLAB_RUNS_PER_GPU); workers.devices: the GPUs it holds (name, index,
memory each), shown by /readyz and /metrics.

Written by hand after ``alembic revision --autogenerate`` from fflab.db.models,
then reviewed: both columns are NOT NULL with server defaults (1 and an empty
JSON list), so rows of workers alive during the upgrade need no backfill; a
worker registers its values when it starts.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-29 10:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('slots', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('devices', sa.JSON(), server_default='[]', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('devices')
        batch_op.drop_column('slots')
