"""What a team deploying the package relies on: migrations from a checkout, license,
type markers, exact versions, and a light install for a web app."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.domain import TABLES, head_revision, schema

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def _name(requirement: str) -> str:
    return re.split(r"[\\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_alembic_upgrade_head_from_a_checkout_migrates_database_url(
    empty_database_url: str,
) -> None:
    done = subprocess.run(
        [ALEMBIC, "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": empty_database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert schema(empty_database_url) == (TABLES, head_revision())


def test_the_license_file_is_the_mit_license_pyproject_names() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_locking_and_tasks_ship_their_type_marker() -> None:
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package in ("locking", "tasks"):
        assert (ROOT / package / "py.typed").exists(), package
        assert "py.typed" in package_data[package], package


def test_the_constraints_pin_every_dependency_and_extra() -> None:
    pinned = {
        _name(line): line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    }
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += [r for r in extra if not r.startswith("flashsale")]
    for requirement in wanted:
        line = pinned.get(_name(requirement))
        assert line is not None and "==" in line, f"{requirement} not pinned in constraints.txt"


def test_a_web_app_install_needs_neither_flower_nor_the_demo() -> None:
    names = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert "flower" not in names
    assert any(
        _name(r) == "flower" for r in PYPROJECT["project"]["optional-dependencies"]["worker"]
    )


def _imports(package: str) -> dict[str, set[str]]:
    """Module file -> top-level names (and ``worker.demo``) it imports, anywhere in the file."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            for module in modules:
                names.add(
                    "worker.demo" if module.startswith("worker.demo") else module.split(".")[0]
                )
        found[str(path.relative_to(ROOT))] = names
    return found


def test_imports_point_downward_only() -> None:
    below = {"locking": {"locking"}, "tasks": {"tasks", "locking"}}
    ours = {"locking", "tasks", "worker", "worker.demo", "tests", "bench"}
    for package, allowed in below.items():
        for path, names in _imports(package).items():
            assert names & ours <= allowed, f"{path} imports {sorted(names & ours - allowed)}"
    for path, names in _imports("worker").items():
        assert not names & {"tests", "bench"}, f"{path} imports test or benchmark code"
        if not path.startswith("worker/demo/") and path != "worker/cli.py":
            assert "worker.demo" not in names, f"{path} imports the demo"
