"""The Jetson kit is not a package: its scripts import each other from their own folder, as on the device."""

import sys
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[2] / "deploy" / "jetson"


@pytest.fixture(scope="session")
def kit_dir() -> Path:
    return KIT


@pytest.fixture(scope="session")
def yolokit():
    sys.path.insert(0, str(KIT))
    import yolokit

    return yolokit


@pytest.fixture(scope="session")
def trtkit():
    sys.path.insert(0, str(KIT))
    import trtkit

    return trtkit


@pytest.fixture(scope="session")
def runtimes():
    sys.path.insert(0, str(KIT))
    import runtimes

    return runtimes
