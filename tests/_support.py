"""Helpers shared by the test modules: the tolerance table, parameter factories and the
misuse tables' tools.

A plain module rather than ``conftest.py``: ``benchmarks/`` has a conftest of its own, and
two top-level ``conftest`` modules cannot both be imported by name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

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


def other_float(dtype):
    """The other compute dtype: float64 for float32 and the reverse."""
    return np.dtype(np.float32 if np.dtype(dtype) == np.float64 else np.float64)


def copy_arg(value):
    """A snapshot of an argument or attribute, to check later that a call left it alone."""
    return value.copy() if isinstance(value, np.ndarray) else copy.deepcopy(value)


def same_value(a, b):
    """Whether ``a`` and ``b`` are equal to the bit: arrays of one shape and dtype with the
    same entries (NaN equal to NaN), lists and tuples entry by entry, anything else equal."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
    return a is b or a == b


class KernelSpy:
    """Counts calls of a module's compiled kernels, to check that no kernel ran before an
    argument error was raised."""

    def __init__(self):
        self.calls = 0

    def wrap(self, kernel):
        def counted(*args):
            self.calls += 1
            return kernel(*args)

        return counted

    def install(self, monkeypatch, module, names):
        """Replace ``module``'s kernels ``names`` by counting wrappers (undone by
        ``monkeypatch``)."""
        for name in names:
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))
        return self


def assert_threads_give_serial_results(job: Callable, args: Iterable, workers: int = 4) -> None:
    """Run ``job(arg)`` for every ``arg`` one after another, then in ``workers`` threads at
    once: each job's list of arrays must come out the same, bit for bit."""
    args = list(args)
    serial = [job(arg) for arg in args]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        threaded = list(pool.map(job, args))
    for expected, got in zip(serial, threaded, strict=True):
        assert len(expected) == len(got)
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_array_equal(g, e)  # bit for bit, not within a tolerance
