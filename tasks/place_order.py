"""The public task ``tasks.place_order``: JSON kwargs in, a decided order out.

The task maps outcomes; the work is in `tasks.placement`. Nothing a payload
contains can crash the worker or loop: invalid input is rejected once, lock or
database trouble is retried with jittered backoff a bounded number of times and
then recorded as ``failed``.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from tasks import runtime
from tasks.errors import DatabaseUnavailable, InvalidOrder, OrderConflict, StockUnavailable
from tasks.models import OrderStatus
from tasks.orders import OrderState, record_rejected
from tasks.validation import TASK_NAME, OrderRequest, order_id_or_none, parse_order

logger = logging.getLogger(__name__)


@shared_task(name=TASK_NAME, bind=True, max_retries=None, ignore_result=True)
def place_order(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Place one order: ``order_id`` (UUID string), ``customer_id``, ``items``."""
    try:
        if args:
            raise InvalidOrder(
                "positional_args",
                "pass order_id, customer_id and items as kwargs",
                order_id=order_id_or_none(kwargs.get("order_id")),
            )
        request = parse_order(kwargs)
    except InvalidOrder as error:
        return _reject(error, kwargs.get("customer_id"))
    rt = runtime.current()
    try:
        state = rt.placer.place(request)
    except OrderConflict as error:
        logger.warning("Order %r refused: %s", str(error.order_id), error)
        return {"order_id": str(error.order_id), "status": "conflict"}
    except (StockUnavailable, DatabaseUnavailable, SoftTimeLimitExceeded) as error:
        return _retry_or_fail(self, request, error)
    if state.status is OrderStatus.PENDING:
        return _retry_or_fail(self, request, StockUnavailable(request.order_id, "row busy"))
    return _outcome(state)


def _reject(error: InvalidOrder, customer_id: object) -> dict[str, Any]:
    if error.order_id is None:
        logger.warning("Rejected a message with no usable order id: %s", error)
        return {"order_id": None, "status": "rejected", "reason": error.reason}
    logger.info("Order %r rejected: %s", str(error.order_id), error)
    state = _store_rejection(error.order_id, customer_id, error.reason)
    return (
        _outcome(state)
        if state
        else {"order_id": str(error.order_id), "status": "rejected", "reason": error.reason}
    )


def _store_rejection(order_id: uuid.UUID, customer_id: object, reason: str) -> OrderState | None:
    try:
        with runtime.current().sessions.begin() as session:
            return record_rejected(session, order_id, customer_id, reason)
    except Exception:
        # The rejection is final whether or not it could be stored; say so loudly.
        logger.exception(
            "Order %r rejected (%s) but the rejection was not stored.", str(order_id), reason
        )
        return None


def _retry_or_fail(self: Task, request: OrderRequest, error: Exception) -> dict[str, Any]:
    budget = runtime.current().budget
    retries = self.request.retries
    if retries < budget.max_retries:
        countdown_s = random.uniform(0, min(budget.max_s, budget.base_s * 2**retries))
        logger.info(
            "Order %r not decided yet (%s); retry %d in %.3f s.",
            str(request.order_id),
            error,
            retries + 1,
            countdown_s,
        )
        raise self.retry(countdown=countdown_s, max_retries=budget.max_retries)
    reason = (
        "database_unavailable" if isinstance(error, DatabaseUnavailable) else "lock_unavailable"
    )
    logger.warning("Order %r failed after %d retries: %s", str(request.order_id), retries, error)
    return _outcome(_fail(request, reason))


def _fail(request: OrderRequest, reason: str) -> OrderState:
    return runtime.current().placer.fail(request, reason)


def _outcome(state: OrderState) -> dict[str, Any]:
    return {"order_id": str(state.order_id), "status": state.status.value, "reason": state.reason}
