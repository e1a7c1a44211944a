"""Shared fixtures: offline Ultralytics, the ../shared/data folder (skipped when absent), small models."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported anywhere

from yolo_prune._ultralytics import go_offline  # noqa: E402

go_offline()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the shared data folder must sit beside the repository")
    return path


@pytest.fixture(scope="session")
def coco8() -> Path:
    return shared("coco8")


@pytest.fixture(scope="session")
def coco128() -> Path:
    return shared("coco128")


@pytest.fixture(scope="session")
def coco8_images(coco8) -> list[Path]:
    return sorted((coco8 / "images" / "val").glob("*.jpg"))
