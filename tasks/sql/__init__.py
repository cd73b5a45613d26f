"""The living source of the PostgreSQL functions: one ``.sql`` file per function.

The latest migration that changed them (revision 0006) deploys these files;
earlier revisions keep frozen copies of what they deployed.
`tests/tasks/test_migrations.py` checks that the functions a fresh database
gets equal these files.
"""

from __future__ import annotations

from importlib import resources

#: The functions, in the order they must be created (flashsale_place calls the others).
FUNCTIONS = ("flashsale_record", "flashsale_settle", "flashsale_place")


def source(function: str) -> str:
    """Return the ``CREATE OR REPLACE FUNCTION`` statement of ``function``.

    :param function: one of `FUNCTIONS`.
    """
    if function not in FUNCTIONS:
        raise ValueError(f"no SQL source for {function!r}; known: {FUNCTIONS}")
    name = function.removeprefix("flashsale_") + ".sql"
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def body(function: str) -> str:
    """Return the function body of ``function``'s source: the text between the ``$$``."""
    return source(function).split("$$")[1]
