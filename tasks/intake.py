"""The intake record: an order stored in the web app's own transaction, published after it.

``submit_order(app, ..., session=session)`` inserts the order (and its lines)
with status ``accepted`` in the session's transaction and queues its message on
the session. The message is published only once that transaction commits
(SQLAlchemy's ``after_commit``); a rollback publishes nothing. A publish that
fails after the commit is logged and left to the relay (`tasks.relay`), which
publishes every ``accepted`` order the broker never got. So an order the web app
acknowledged is in its database whatever the broker does.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import Connection, Engine, event, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, SessionTransaction

from tasks.errors import OrderConflict
from tasks.models import ORDER_ITEMS, ORDERS, OrderStatus
from tasks.orders import Upsert
from tasks.validation import TASK_NAME, OrderRequest

logger = logging.getLogger(__name__)

#: One quick retry (a pooled connection the broker dropped), then it is the relay's
#: turn: the web request must not wait out a broker outage.
INTAKE_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0.0,
    "interval_step": 0.1,
    "interval_max": 0.1,
}
#: Where a session keeps the messages to publish once its transaction commits.
_OUTBOX = "flashsale.intake.outbox"


def accept_order(app: Celery, session: Session, request: OrderRequest) -> None:
    """Store the order as ``accepted`` in ``session``'s transaction; publish after its commit.

    The same id with the same payload again: nothing is stored or published twice.

    :param app: the Celery app the message is published with, after the commit.
    :param session: the web app's session, inside its transaction (not committed here).
    :raises OrderConflict: the id is known with another customer or cart.
    """
    if not store_accepted(session, request):
        return
    outbox = session.info.get(_OUTBOX)
    if outbox is None:
        outbox = session.info[_OUTBOX] = []
        event.listen(session, "after_commit", _publish_outbox)
        event.listen(session, "after_transaction_end", _forget_outbox)
    outbox.append((app, message_kwargs(request)))


def store_accepted(session: Session, request: OrderRequest) -> bool:
    """Insert the order and its lines as ``accepted``; False when the id was already stored.

    :raises OrderConflict: the id is known with another customer or cart.
    """
    values = {
        "id": request.order_id,
        "customer_id": request.customer_id,
        "status": OrderStatus.ACCEPTED,
        "payload_hash": request.payload_hash,
        "attempts": 0,
        # Set before the publish that follows the commit, reset if that publish fails:
        # the relay leaves it alone for INTAKE_REPUBLISH_AFTER_S either way.
        "published_at": datetime.now(UTC),
        "delivered_at": None,
    }
    inserted = session.execute(
        _upsert_of(session)(ORDERS)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[ORDERS.c.id])
        .returning(ORDERS.c.id)
    ).first()
    if inserted is None:
        known = session.execute(
            select(ORDERS.c.payload_hash).where(ORDERS.c.id == request.order_id)
        ).scalar_one()
        if known != request.payload_hash:
            raise OrderConflict(request.order_id)
        return False
    session.execute(
        insert(ORDER_ITEMS),
        [
            {"order_id": request.order_id, "sku": line.sku, "quantity": line.quantity}
            for line in request.lines
        ],
    )
    return True


def _upsert_of(session: Session) -> Upsert:
    """The INSERT with ON CONFLICT of the session's database (PostgreSQL or SQLite)."""
    name = session.get_bind().dialect.name
    return postgresql.insert if name == "postgresql" else sqlite.insert


def message_kwargs(request: OrderRequest) -> dict[str, Any]:
    """Return the kwargs of ``tasks.place_order`` for a validated order."""
    return {
        "order_id": str(request.order_id),
        "customer_id": request.customer_id,
        "items": [{"sku": line.sku, "quantity": line.quantity} for line in request.lines],
    }


def _publish_outbox(session: Session) -> None:
    """After the commit: publish the session's accepted orders; a failure is the relay's."""
    outbox = session.info.pop(_OUTBOX, None) or []
    failed: list[uuid.UUID] = []
    for app, kwargs in outbox:
        try:
            app.send_task(
                TASK_NAME, kwargs=kwargs, retry=True, retry_policy=INTAKE_PUBLISH_RETRY_POLICY
            )
        except Exception as error:
            # The order is committed: the caller already has its id. Never raise here.
            logger.warning(
                "Order %r stored but not published (%s); the relay will publish it.",
                kwargs["order_id"],
                error,
            )
            failed.append(uuid.UUID(kwargs["order_id"]))
    if failed:
        _mark_unpublished(session.get_bind(), failed)


def _forget_outbox(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without a commit: its orders do not exist."""
    if transaction.parent is None:
        session.info.pop(_OUTBOX, None)


def _mark_unpublished(bind: Engine | Connection, order_ids: list[uuid.UUID]) -> None:
    """Clear ``published_at`` so that the relay publishes these at its next round."""
    engine = bind.engine if isinstance(bind, Connection) else bind
    try:
        with engine.begin() as connection:
            connection.execute(
                update(ORDERS)
                .where(ORDERS.c.id.in_(order_ids), ORDERS.c.status == OrderStatus.ACCEPTED)
                .values(published_at=None)
            )
    except Exception as error:
        # Still safe: the relay republishes them INTAKE_REPUBLISH_AFTER_S after intake.
        logger.warning("Could not mark %d unpublished order(s): %s", len(order_ids), error)
