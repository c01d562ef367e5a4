"""run_losses: each epoch's loss of a run, written while it trains (served by
/runs/{id}/metrics before the run ends); run_logs: what the worker logged while it
held a run (redacted, capped); runs.code_version: the fflab, git commit, torch,
numpy, Python versions and device that trained it.

Written by hand from fflab.db.models, then reviewed: two new tables and a nullable
column, so the upgrade needs no backfill (runs trained before it have no live
points, log or code version; their metrics come from metrics.json as before).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 14:30:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'run_losses',
        sa.Column('run_pk', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('stage', sa.Integer(), nullable=True),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('loss', sa.Float(), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_pk'], ['runs.id'], name=op.f('fk_run_losses_run_pk_runs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_pk', 'position', name=op.f('pk_run_losses')),
    )
    op.create_table(
        'run_logs',
        sa.Column('run_pk', sa.Integer(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('dropped_bytes', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_pk'], ['runs.id'], name=op.f('fk_run_logs_run_pk_runs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_pk', name=op.f('pk_run_logs')),
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('code_version', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('code_version')
    op.drop_table('run_logs')
    op.drop_table('run_losses')
