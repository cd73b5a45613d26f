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
from tasks.errors import DatabaseUnavailable, InvalidOrder, OrderConflict, TryLater
from tasks.models import OrderStatus
from tasks.orders import OrderState
from tasks.validation import TASK_NAME, OrderRequest, order_id_or_none, parse_order

logger = logging.getLogger(__name__)

_rng = random.Random()


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
    order_runtime = runtime.current()
    try:
        state = order_runtime.placer.place(request)
    except OrderConflict as error:
        logger.warning("Order %r refused: %s", str(error.order_id), error)
        return {"order_id": str(error.order_id), "status": "conflict"}
    except TryLater as error:
        return _retry_or_fail(self, request, error, error.cause)
    except DatabaseUnavailable as error:
        return _retry_or_fail(self, request, error, "database_unavailable")
    except SoftTimeLimitExceeded as error:
        return _retry_or_fail(self, request, error, "time_limit")
    if state.status is OrderStatus.PENDING:
        busy = TryLater(request.order_id, "row_busy", "settled by another run")
        return _retry_or_fail(self, request, busy, busy.cause)
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
        return runtime.current().placer.reject_invalid(order_id, customer_id, reason)
    except Exception:
        # The rejection is final whether or not it could be stored; say so loudly.
        logger.exception(
            "Order %r rejected (%s) but the rejection was not stored.", str(order_id), reason
        )
        return None


def _retry_or_fail(
    self: Task, request: OrderRequest, error: BaseException, cause: str
) -> dict[str, Any]:
    order_runtime = runtime.current()
    schedule = order_runtime.retries
    retries = self.request.retries
    if retries < schedule.max_retries:
        countdown_s = schedule.delay_s(retries, _rng)
        logger.info(
            "Order %r not decided yet (%s); retry %d in %.3f s.",
            str(request.order_id),
            error,
            retries + 1,
            countdown_s,
        )
        order_runtime.events.task_retry(cause)
        raise self.retry(countdown=countdown_s, max_retries=schedule.max_retries)
    reason = "database_unavailable" if cause == "database_unavailable" else "lock_unavailable"
    logger.warning("Order %r failed after %d retries: %s", str(request.order_id), retries, error)
    return _outcome(order_runtime.placer.fail(request, reason))


def _outcome(state: OrderState) -> dict[str, Any]:
    return {"order_id": str(state.order_id), "status": state.status.value, "reason": state.reason}
