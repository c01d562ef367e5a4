"""analyses.results, analyses.tables: each re-analysis keeps its results.json and
tables, so that a later re-analysis, which replaces the experiment's current
results, leaves the earlier versions readable
(GET /v1/experiments/{id}/analyses/{analysis_id}/results).

Written by hand from fflab.db.models: two nullable columns, no backfill (a
re-analysis recorded before this has no kept version; the experiment's results are
its latest).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-14 10:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.add_column(sa.Column('results', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('tables', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('analyses', schema=None) as batch_op:
        batch_op.drop_column('tables')
        batch_op.drop_column('results')
