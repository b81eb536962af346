"""Helpers shared by the test modules: the tolerance table and parameter factories.

A plain module rather than ``conftest.py``: ``benchmarks/`` has a conftest of its own, and
two top-level ``conftest`` modules cannot both be imported by name.
"""

from __future__ import annotations

import numpy as np

#: One tolerance table for the whole suite, keyed by dtype: (rtol, atol) for comparing
#: fastrnn against fastrnn.reference. float32 allows for the kernels' tanh approximation
#: (a few ulp) and for BLAS summing in another order.
TOLERANCE = {
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-9, atol=1e-11),
}

DTYPES = [np.float32, np.float64]

#: Number of gate blocks per layer family.
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}

#: Layer class names, as in ``fastrnn`` and ``fastrnn.reference``, and their families.
TIME_KINDS = ("TimeRNN", "TimeLSTM", "TimeGRU", "TimeBiLSTM")
CELL_KINDS = ("RNN", "LSTM", "GRU")
ALL_KINDS = TIME_KINDS + CELL_KINDS
FAMILY = {
    "RNN": "RNN",
    "TimeRNN": "RNN",
    "LSTM": "LSTM",
    "TimeLSTM": "LSTM",
    "TimeBiLSTM": "LSTM",
    "GRU": "GRU",
    "TimeGRU": "GRU",
}


def assert_close(actual, expected, dtype=None, err_msg=""):
    """Compare with the tolerance of ``dtype`` (default: ``expected``'s dtype)."""
    dtype = np.dtype(dtype if dtype is not None else np.asarray(expected).dtype)
    np.testing.assert_allclose(actual, expected, err_msg=err_msg, **TOLERANCE[dtype])


def make_params(rng, family, D, H, dtype, scale=0.5):
    """``[Wx (D, G*H), Wh (H, G*H), b (G*H,)]`` for ``family`` in ``GATES``.

    Entries have standard deviation ``scale``, lowered to ``1.5 / sqrt(fan_in)`` for wide
    matrices so that pre-activations stay of order one, as with the book's initialisation.
    Otherwise a wide recurrence is chaotic and float32 rounding grows past any tolerance.
    """
    G = GATES[family]
    stds = (min(scale, 1.5 / np.sqrt(D)), min(scale, 1.5 / np.sqrt(H)), scale)
    return [
        (std * rng.standard_normal(shape)).astype(dtype)
        for std, shape in zip(stds, ((D, G * H), (H, G * H), (G * H,)), strict=True)
    ]
