"""Fixtures shared by the test modules (plain helpers live in ``_support.py``)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A freshly seeded generator per test, so tests do not depend on their order."""
    return np.random.default_rng(20261128)
