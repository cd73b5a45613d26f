"""The worker's lifecycle handlers belong to the app `create_app` built, and to no other.

A web app's own Celery worker that imports `worker` (to reach ``worker.app`` or
`create_app`) must start as if flashsale were not there.
"""

from __future__ import annotations

import pytest
from celery import Celery
from celery.signals import worker_init

import worker
from worker.settings import Settings


class _WorkController:
    """Stands for the sender of ``worker_init``: a worker of ``app``."""

    def __init__(self, app: Celery) -> None:
        self.app = app


def _raised(responses: list[tuple[object, object]]) -> list[object]:
    return [response for _, response in responses if isinstance(response, BaseException)]


def test_another_app_in_the_same_process_is_not_touched_by_the_worker_handlers() -> None:
    worker.create_app(Settings.from_env({}))
    other = Celery("someone-else", set_as_current=False)
    # The sender of worker_init is the WorkController; this one belongs to the other app.
    responses = worker_init.send(sender=_WorkController(other))
    assert _raised(responses) == []


def test_the_app_that_create_app_built_still_refuses_an_unsafe_configuration() -> None:
    unsafe = Settings.from_env({"REDLOCK_NODES": "redis://127.0.0.1:1/0"})
    app = worker.create_app(unsafe)
    with pytest.raises(SystemExit) as exit_info:
        worker_init.send(sender=_WorkController(app))
    assert exit_info.value.code == 2
