"""task records

Revision ID: 0001
Revises: 
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('task_records',
    sa.Column('task_id', sa.String(length=255), nullable=False),
    sa.Column('task_name', sa.String(length=255), nullable=False),
    sa.Column('queue', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('kwargs', sa.JSON(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=True),
    sa.Column('eta', sa.DateTime(timezone=True), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error_type', sa.String(length=255), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('traceback', sa.Text(), nullable=True),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('dead_lettered', sa.Boolean(), nullable=False),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('retry_of', sa.String(length=255), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('task_id'),
    sa.UniqueConstraint('idempotency_key')
    )
    with op.batch_alter_table('task_records', schema=None) as batch_op:
        batch_op.create_index('ix_task_records_created', ['created_at', 'task_id'], unique=False)
        batch_op.create_index('ix_task_records_queue_created', ['queue', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_task_records_retry_of'), ['retry_of'], unique=False)
        batch_op.create_index('ix_task_records_status_created', ['status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_task_records_task_name'), ['task_name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('task_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_records_task_name'))
        batch_op.drop_index('ix_task_records_status_created')
        batch_op.drop_index(batch_op.f('ix_task_records_retry_of'))
        batch_op.drop_index('ix_task_records_queue_created')
        batch_op.drop_index('ix_task_records_created')

    op.drop_table('task_records')
