"""workers.devices: the GPUs a worker holds (name, index, memory each), shown by
/readyz and /metrics. A worker's slots are fair share's workers.concurrency
(0004), which a GPU worker registers as FFLAB_RUNS_PER_GPU.

Written by hand after ``alembic revision --autogenerate`` from fflab.db.models,
then reviewed: the column is NOT NULL with a server default (an empty JSON
list), so rows of workers alive during the upgrade need no backfill; a worker
registers its GPUs when it starts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 07:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('devices', sa.JSON(), server_default='[]', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('devices')
