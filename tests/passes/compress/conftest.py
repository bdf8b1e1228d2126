"""Fixtures for the compression-pass tests (the tiny trained digits CNNs they share are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def ctx(tmp_path):
    from edgeopt.passes.base import PassContext

    return PassContext(stage_dir=tmp_path / "stage")
