"""published: whether the API has seen a task's message reach Redis

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

UNPUBLISHED = sa.text("NOT published")


def upgrade() -> None:
    # Every record written before this revision, and every one a worker writes, is of a sent task.
    op.add_column('task_records', sa.Column('published', sa.Boolean(), nullable=False, server_default=sa.true()))
    # Few rows are ever unpublished (for milliseconds); the sweep for leftovers reads only those.
    op.create_index('ix_task_records_unpublished', 'task_records', ['created_at'], unique=False,
                    sqlite_where=UNPUBLISHED, postgresql_where=UNPUBLISHED)


def downgrade() -> None:
    op.drop_index('ix_task_records_unpublished', table_name='task_records')
    with op.batch_alter_table('task_records', schema=None) as batch_op:
        batch_op.drop_column('published')
