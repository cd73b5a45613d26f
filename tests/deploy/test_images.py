"""Every image the deployment runs is one exact release; the Dockerfile uses the constraints."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.files import ROOT

#: ``name:version[-variant]``; PostgreSQL (10+) numbers its releases major.minor.
IMAGE_TAG = re.compile(r"(?P<name>[a-z0-9./-]+):v?(?P<version>\d+(?:\.\d+)*)(?:-[A-Za-z0-9.-]+)?")


def is_exact_image(image: str) -> bool:
    """Return true when ``image`` names one release (or one digest), not a moving tag."""
    if re.fullmatch(r"[a-z0-9./:-]+@sha256:[0-9a-f]{64}", image):
        return True
    match = IMAGE_TAG.fullmatch(image)
    if match is None:
        return False
    parts = match["version"].count(".") + 1
    return parts == (2 if match["name"] == "postgres" else 3)


def test_every_compose_image_is_pinned_to_an_exact_version(compose: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in compose["services"].items() if "build" not in s}
    assert images, "no third-party image in docker-compose.yml"
    for name, image in images.items():
        assert is_exact_image(image), f"{name}: image {image!r} is not an exact version"


def test_the_dockerfile_base_image_is_exact_and_installs_from_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases and all(is_exact_image(base) for base in bases), bases
    assert re.search(r"pip install -c constraints\.txt \"\.\[worker\]\"", dockerfile)
    assert "constraints.txt" in dockerfile.split("COPY", 1)[1]


def test_a_moving_tag_is_not_exact() -> None:
    for image in ("redis:7.2-alpine", "postgres:16-alpine", "python:3.11-slim", "redis"):
        assert not is_exact_image(image), image
    for image in ("redis:7.2.7-alpine", "postgres:16.6-alpine", "python:3.11.11-slim-bookworm"):
        assert is_exact_image(image), image
