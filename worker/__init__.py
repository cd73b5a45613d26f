"""The flash-sale worker: ``celery -A worker worker`` and ``celery -A worker flower``.

The app is built from the environment (see `worker.settings`); importing this
package reads settings but connects to nothing.
"""

from worker import signals as _signals  # noqa: F401  (connects the lifecycle handlers)
from worker.app import create_app
from worker.settings import Settings

app = create_app(Settings.from_env())

__all__ = ["Settings", "app", "create_app"]
