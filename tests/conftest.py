"""Fixtures shared by the test modules (plain helpers live in ``_support.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastrnn import _planner


@pytest.fixture(autouse=True)
def _planner_looks_once(monkeypatch):
    """No second look by the planner during a test: it can change a route, and with it the
    last bits of a result, a few seconds after a shape was first timed, and tests that
    compare two runs bit for bit must not straddle it. ``test_planner.py`` tests the second
    look with a clock of its own."""
    monkeypatch.setattr(_planner, "SECOND_LOOK_SECONDS", math.inf)


@pytest.fixture
def rng():
    """A freshly seeded generator per test, so tests do not depend on their order."""
    return np.random.default_rng(20261128)
