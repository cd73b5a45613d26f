"""Hostile input through a real worker: arbitrary JSON payloads, and messages that are not ours.

Property-based: any JSON shape sent as the task's arguments ends as a stored
``rejected`` order with the validator's reason when it carries a valid UUID
order id (or as a decided order, when it happens to be valid), and as a logged
rejection otherwise; a good order sent right after it is confirmed.

Raw messages published with kombu straight into the ``celery`` queue: a pickle
that would create a file when unpickled, a wrong content type, a garbage body,
a message of another application, a call of an unregistered task, a 4 MB body.
None is executed; each leaves the queue; the worker stays up and confirms the
next good order.
"""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection
from sqlalchemy import Engine

from tasks.errors import InvalidOrder
from tasks.migrate import upgrade
from tasks.validation import TASK_NAME, parse_order
from tests.chaos.figures import observer_engine, scalar_rows
from tests.chaos.harness import broker_backlog, wait_until
from tests.chaos.report import Recorder
from tests.pg import create_database, drop_database
from tests.sale import producer, seed_products
from worker.demo.stack import LocalStack, WorkerProcess

NO_ORDER_ID = "Rejected a message with no usable order id"
#: Replaced by a fresh UUID in each example (hypothesis repeats values; a reused id
#: would meet the first example's order instead).
FRESH_ID = "<fresh uuid>"
FRESH_UPPER_ID = "<fresh uuid, upper case>"
DECIDED_S = 30.0
HUGE_BYTES = 4 * 1024 * 1024


@dataclass
class Shop:
    """One worker (two processes) on its own database, broker and lock nodes."""

    stack: LocalStack
    engine: Engine
    worker: WorkerProcess
    app: Celery

    def outcome(self, order_id: str) -> tuple[str, str | None] | None:
        rows = scalar_rows(
            self.engine,
            "SELECT status::text, reason FROM orders WHERE id = CAST(:id AS uuid)",
            id=order_id,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def wait_decided(self, order_id: str) -> tuple[str, str | None]:
        wait_until(
            lambda: (self.outcome(order_id) or ("pending",))[0] != "pending",
            timeout_s=DECIDED_S,
            what=f"order {order_id} to be decided",
            poll_s=0.02,
        )
        outcome = self.outcome(order_id)
        assert outcome is not None
        return outcome

    def rejections_without_id(self) -> int:
        return self.worker.log().count(NO_ORDER_ID)

    def confirm_a_good_order(self) -> None:
        """Send a valid order and fail unless it is confirmed, by a living worker."""
        order_id = str(uuid.uuid4())
        self.app.send_task(TASK_NAME, kwargs=good_payload(order_id))
        assert self.wait_decided(order_id) == ("confirmed", None)
        assert self.worker.process.poll() is None, "the worker died"
        assert len(self.worker.pool_pids()) == 2


def good_payload(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "customer_id": "good", "items": [{"sku": "A", "quantity": 1}]}


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    """A shop shared by this module's tests: they only add orders with fresh ids."""
    url = create_database()
    engine = observer_engine(url)
    try:
        upgrade(url)
        seed_products(engine, {"A": 1_000_000, "B": 1_000_000})
        with LocalStack(env={"DATABASE_URL": url}) as stack:
            stack.start_lock_nodes(3)
            stack.start_broker()
            worker = stack.start_worker(concurrency=2)
            with producer(stack.env["CELERY_BROKER_URL"]) as app:
                yield Shop(stack, engine, worker, app)
    finally:
        engine.dispose()
        drop_database(url)


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


Strategy = st.SearchStrategy[Any]


def mostly(valid: Strategy, hostile: Strategy) -> Strategy:
    """Draw from ``valid`` about three times in four, else from ``hostile``.

    Hypothesis favours small integers (and shrinks towards them): small means valid,
    so counterexamples shrink towards an otherwise valid order.
    """
    return st.integers(0, 3).flatmap(lambda pick: hostile if pick == 3 else valid)


SKUS = mostly(st.sampled_from(["A", "B"]), st.sampled_from(["NOPE", "", "A" * 65, "A\n"]) | JSON)
LINE = mostly(
    st.fixed_dictionaries({"sku": SKUS, "quantity": mostly(st.integers(1, 3), JSON)}),
    st.fixed_dictionaries({"sku": SKUS}, optional={"qty": JSON, "quantity": st.integers()}) | JSON,
)
#: Mostly near-valid values, so that examples reach every check of the validator.
FIELDS = {
    "order_id": mostly(st.sampled_from([FRESH_ID, FRESH_UPPER_ID]), JSON),
    "customer_id": mostly(st.sampled_from(["c1", "alice"]), st.text(max_size=140) | JSON),
    "items": mostly(st.lists(LINE, max_size=4), JSON),
}


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A payload near a valid order: each field may be hostile, missing or joined by another."""
    payload = {key: draw(strategy) for key, strategy in FIELDS.items()}
    dropped = draw(st.sampled_from([None] * 6 + list(FIELDS)))
    if dropped is not None:
        del payload[dropped]
    if draw(st.integers(0, 9)) == 0:
        payload[draw(st.text(max_size=8))] = draw(JSON)
    return payload


def fresh(value: object) -> object:
    """Replace the fresh-id markers by a new UUID."""
    if value == FRESH_ID:
        return str(uuid.uuid4())
    return str(uuid.uuid4()).upper() if value == FRESH_UPPER_ID else value


def expected_reason(args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """The reason the task must store (None: a valid order, decided on its merits)."""
    if args:
        return "positional_args"
    try:
        parse_order(kwargs)
    except InvalidOrder as error:
        return error.reason
    return None


def readable_id(kwargs: dict[str, Any]) -> str | None:
    value = kwargs.get("order_id")
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) else None
    except ValueError:
        return None


@settings(
    max_examples=40,
    deadline=None,
    # The same 40 examples every run: CI never meets a new failure by chance.
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=payloads(), args=mostly(st.just([]), st.lists(JSON, min_size=1, max_size=2)))
@example(payload={"order_id": str(uuid.uuid4()), "customer_id": "x\u0000", "items": []}, args=[])
def test_any_json_payload_is_rejected_with_a_reason_or_logged(
    shop: Shop, reliability: Recorder, payload: dict[str, Any], args: list[Any]
) -> None:
    kwargs = {key: fresh(value) for key, value in payload.items()}
    order_id = readable_id(kwargs)
    reason = expected_reason(args, kwargs)
    outcome = f"stored {reason or 'decided'}" if order_id else "logged, no order id"
    event(outcome)
    reliability.tally(
        "H-payloads",
        "Property-based task payloads (hypothesis, 40 examples)",
        outcome,
        notes="each stored with the validator's reason, or logged; then a good order confirmed",
    )
    logged = shop.rejections_without_id()
    shop.app.send_task(TASK_NAME, args=args, kwargs=kwargs)
    if order_id is None:
        wait_until(
            lambda: shop.rejections_without_id() > logged,
            timeout_s=DECIDED_S,
            what="the rejection to be logged",
            poll_s=0.02,
        )
    elif reason is None:
        assert shop.wait_decided(order_id)[0] in ("confirmed", "rejected")
    else:
        assert shop.wait_decided(order_id) == ("rejected", reason)
    shop.confirm_a_good_order()


class Exploit:
    """Unpickling this creates ``path``: proof that a pickle was deserialised."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def task_headers(task: str = TASK_NAME) -> dict[str, Any]:
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0}


def json_body(kwargs: dict[str, Any], args: list[Any] | None = None) -> bytes:
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([args or [], kwargs, embed]).encode()


#: name -> (body, content type, headers) of a message published as is.
RawMessage = tuple[bytes, str, dict[str, Any]]


def pickled(marker: Path) -> RawMessage:
    body = pickle.dumps(((), {"order_id": Exploit(marker)}, {}))
    return body, "application/x-python-serialize", task_headers()


def yaml_typed(marker: Path) -> RawMessage:
    return json_body(good_payload(str(uuid.uuid4()))), "application/x-yaml", task_headers()


def garbage(marker: Path) -> RawMessage:
    return b"\x00\xff{not json" * 10, "application/json", task_headers()


def foreign(marker: Path) -> RawMessage:
    return json.dumps({"event": "signup", "user": 7}).encode(), "application/json", {}


def unregistered_task(marker: Path) -> RawMessage:
    body = json_body({}, [f"touch {marker}"])
    return body, "application/json", task_headers("os.system")


def huge(marker: Path) -> RawMessage:
    payload = {**good_payload(str(uuid.uuid4())), "customer_id": "x" * HUGE_BYTES}
    return json_body(payload), "application/json", task_headers()


RAW_MESSAGES = [pickled, yaml_typed, garbage, foreign, unregistered_task, huge]


@pytest.mark.parametrize("build", RAW_MESSAGES, ids=lambda build: build.__name__)
def test_raw_messages_that_are_not_ours_are_dropped_and_the_worker_goes_on(
    shop: Shop, tmp_path: Path, reliability: Recorder, build: Callable[[Path], RawMessage]
) -> None:
    marker = tmp_path / "executed"
    body, content_type, headers = build(marker)
    # kombu is unannotated.
    with Connection(shop.stack.env["CELERY_BROKER_URL"]) as connection:  # type: ignore[no-untyped-call]
        connection.Producer().publish(
            body,
            exchange="",
            routing_key="celery",
            content_type=content_type,
            content_encoding="binary" if content_type.endswith("serialize") else "utf-8",
            headers=headers,
        )
    shop.confirm_a_good_order()
    wait_until(lambda: broker_backlog(shop.stack) == (0, 0), timeout_s=10, what="an empty queue")
    reliability.record(
        "H-raw",
        f"Raw broker message: {build.__name__.replace('_', ' ')} ({len(body):,} bytes)",
        notes="dropped, not executed; queue empty; worker alive; next good order confirmed",
    )
    assert not marker.exists(), "the message was executed"
