"""An index for finding a task by the start of its id, in any case, on PostgreSQL

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `stalk status 3f2a` lists tasks WHERE lower(task_id) LIKE '3f2a%'. PostgreSQL's primary key
    # index follows the database's collation, which LIKE cannot use, so every prefix scanned the
    # table; text_pattern_ops compares by bytes, which LIKE with a fixed start can. SQLite's LIKE
    # ignores case only through its own function and would use no index: it gets none.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX ix_task_records_id_prefix ON task_records (lower(task_id) text_pattern_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index('ix_task_records_id_prefix', table_name='task_records')
