"""recovered: how many times a task whose message Redis lost was published again, and when last

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every record written before this revision was never recovered.
    with op.batch_alter_table('task_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recovered', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('recovered_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('task_records', schema=None) as batch_op:
        batch_op.drop_column('recovered_at')
        batch_op.drop_column('recovered')
