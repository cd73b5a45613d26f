"""The web app's side: enqueue an order with nothing but Celery, and read its status."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.errors import BrokerUnavailable
from tasks.intake import accept_order
from tasks.models import Order, OrderStatus
from tasks.validation import TASK_NAME, parse_order, parse_order_id

#: How kombu retries publishing one order before the producer reports the broker
#: unavailable (connection retries, not order retries).
BROKER_PUBLISH_RETRIES = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


@dataclass(frozen=True, slots=True)
class OrderView:
    """An order as a web app shows it."""

    order_id: str
    customer_id: str
    status: OrderStatus
    reason: str | None
    items: tuple[tuple[str, int], ...]
    created_at: datetime
    decided_at: datetime | None


def submit_order(
    app: Celery,
    *,
    customer_id: str,
    items: Sequence[Mapping[str, Any]],
    order_id: str | None = None,
    session: Session | None = None,
) -> str:
    """Validate an order locally, enqueue ``tasks.place_order`` and return the order id.

    Reuse ``order_id`` to resubmit safely: the worker moves stock once per id.

    With ``session`` (the web app's session, inside its transaction), the order is
    stored there as ``accepted`` and published after that transaction commits; the
    relay publishes it if that fails (`tasks.intake`). The broker's state does not
    matter then. Without it, the message is published now and nothing is stored:
    an order the broker loses is lost.

    :raises InvalidOrder: the order would be rejected; nothing was sent or stored.
    :raises OrderConflict: (with ``session``) the id is known with another payload.
    :raises BrokerUnavailable: (without ``session``) the broker did not take the
        message; nothing was sent.
    """
    kwargs = {
        "order_id": order_id or str(uuid.uuid4()),
        "customer_id": customer_id,
        "items": [dict(item) for item in items],
    }
    request = parse_order(kwargs)
    if session is not None:
        accept_order(app, session, request)
        return str(request.order_id)
    try:
        app.send_task(TASK_NAME, kwargs=kwargs, retry=True, retry_policy=BROKER_PUBLISH_RETRIES)
    except OperationalError as error:
        raise BrokerUnavailable(str(error)) from None
    return str(kwargs["order_id"])


def get_order(session: Session, order_id: str | uuid.UUID) -> OrderView | None:
    """Return the order's current view, or None when no such order is stored.

    An order stored by the intake record and not yet taken by a worker is ``accepted``.

    :raises InvalidOrder: ``order_id`` is not a UUID (reason ``invalid_order_id``):
        no order can have it (a web app answers 404 or 422).
    """
    key = order_id if isinstance(order_id, uuid.UUID) else parse_order_id(order_id)
    order = session.scalars(select(Order).where(Order.id == key)).one_or_none()
    if order is None:
        return None
    return OrderView(
        order_id=str(order.id),
        customer_id=order.customer_id,
        status=OrderStatus(order.status),
        reason=order.reason,
        items=tuple((item.sku, item.quantity) for item in order.items),
        created_at=order.created_at,
        decided_at=order.decided_at,
    )
