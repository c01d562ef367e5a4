"""experiment_tags: labels an owner puts on an experiment after (or at) submission,
to filter lists by; one row per (experiment, tag), deleted with the experiment.

Written after ``alembic revision --autogenerate`` from fflab.db.models, then
reviewed: a new table only, so existing rows need nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 06:20:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('experiment_tags',
    sa.Column('experiment_id', sa.String(length=32), nullable=False),
    sa.Column('tag', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'],
                            name=op.f('fk_experiment_tags_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('experiment_id', 'tag', name=op.f('pk_experiment_tags'))
    )
    with op.batch_alter_table('experiment_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_tags_tag'), ['tag'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('experiment_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_tags_tag'))

    op.drop_table('experiment_tags')
