"""The fence guard compares lease tokens when fences are equal; decisions come back whole.

Two different leases could carry the same fence (a lock node that lost its
counters), and ``fence <= :fence`` let both write. ``products.fence_token`` keeps
a digest of the token of the lease that last wrote the stock; a write with an
equal fence must come from that same lease. ``flashsale_settle`` and
``flashsale_place`` (as deployed then: `tasks.migrations.functions_0005`) take
the token digest and return every order they decided
(status, reason, age), so that a worker can count its decisions exactly.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tasks.migrations import functions_0005

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Revision 0003's signatures, kept for the workers of the previous release.
OLD_SETTLE = "flashsale_settle(text[], bigint, integer, uuid, double precision)"
OLD_PLACE = (
    "flashsale_place(uuid, text, text, text[], integer[], boolean, bigint, integer,"
    " double precision, double precision, integer)"
)
NEW_SETTLE = "flashsale_settle(text[], bigint, text, integer, uuid, double precision)"
NEW_PLACE = (
    "flashsale_place(uuid, text, text, text[], integer[], boolean, bigint, text, integer,"
    " double precision, double precision, integer)"
)


def upgrade() -> None:
    op.add_column("products", sa.Column("fence_token", sa.String(length=16), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    # The new functions take one more argument, so they are overloads: revision
    # 0003's stay, and workers of the previous release that still run while the
    # new ones start keep working (with the previous guard) until they stop. A
    # later revision drops them (OLD_PLACE, OLD_SETTLE).
    op.execute(functions_0005.SETTLE)
    op.execute(functions_0005.PLACE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {NEW_PLACE}")
        op.execute(f"DROP FUNCTION IF EXISTS {NEW_SETTLE}")
        # 0004 left 0003's flashsale_record in place: nothing to restore.
    with op.batch_alter_table("products") as batch:
        batch.drop_column("fence_token")
