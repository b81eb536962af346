"""Property tests: random shapes, dtypes, memory layouts and stateful call sequences, each
checked step by step against :mod:`fastrnn.reference`.

Hypothesis runs derandomized and without its example database, so CI sees the same
examples on every run. The arrays themselves come from NumPy generators seeded by a drawn
integer (fast to build; shrinking still works on shapes, layouts and call sequences).
"""

from __future__ import annotations

import numpy as np
import pytest
from _support import CELL_KINDS, DTYPES, FAMILY, GATES, TIME_KINDS, TOLERANCE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn
from fastrnn import reference

LAYOUTS = ("C", "F", "strided", "reversed")
INPUT_DTYPES = (np.float16, np.float32, np.float64)

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def lay_out(array, layout):
    """The same values in another memory layout: C, Fortran, every other element of a
    larger buffer, or negative strides."""
    if layout == "C":
        return np.ascontiguousarray(array)
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        big = np.full(tuple(2 * s + 1 for s in array.shape), np.nan, dtype=array.dtype)
        view = big[tuple(slice(1, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "reversed":
        flipped = np.ascontiguousarray(array[::-1])
        return flipped[::-1]
    raise AssertionError(layout)


def tolerance(*dtypes):
    single = np.dtype(np.float32)
    return TOLERANCE[single if single in {np.dtype(d) for d in dtypes} else np.dtype(np.float64)]


def assert_same(actual, expected, compute_dtype, what):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, compute_dtype, f"{what}[{i}]")
        return
    assert isinstance(actual, np.ndarray), what
    assert actual.shape == expected.shape, what
    tol = tolerance(actual.dtype, expected.dtype, compute_dtype)
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


class Pair:
    """A fast and a reference layer from the same parameters, driven in lockstep."""

    def __init__(self, kind, dtype, D, H, stateful, seed, param_layout):
        self.kind, self.D, self.H = kind, D, H
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(seed)
        G = GATES[FAMILY[kind]]
        sets = 2 if kind == "TimeBiLSTM" else 1
        self.params = [
            lay_out((0.6 * self.rng.standard_normal(shape)).astype(dtype), param_layout)
            for _ in range(sets)
            for shape in ((D, G * H), (H, G * H), (G * H,))
        ]
        args = () if kind in CELL_KINDS else (stateful,)
        self.fast = getattr(fastrnn, kind)(*self.params, *args)
        self.ref = getattr(reference, kind)(*self.params, *args)
        self.width = 2 * H if kind == "TimeBiLSTM" else H
        self.last = None  # shape of the last accepted forward's output

    def array(self, shape, layout, dtype):
        return lay_out(self.rng.standard_normal(shape).astype(dtype), layout)

    def subs(self, layer):
        if self.kind == "TimeBiLSTM":
            return [layer.forward_lstm, layer.backward_lstm]
        return [layer]

    def check_state(self):
        for fast, ref in zip(self.subs(self.fast), self.subs(self.ref), strict=True):
            for name in ("h", "c", "dh"):
                expected = getattr(ref, name, None)
                if expected is not None and self.kind not in CELL_KINDS:
                    assert_same(getattr(fast, name), expected, self.dtype, name)
            for i, (g, e) in enumerate(zip(fast.grads, ref.grads, strict=True)):
                assert_same(g, e, self.dtype, f"grads[{i}]")

    def both(self, method, *args):
        expected = getattr(self.ref, method)(*args)
        actual = getattr(self.fast, method)(*args)
        if expected is not None:
            assert_same(actual, expected, self.dtype, method)
        self.check_state()
        return actual


def _batch_of_state(pair):
    h = pair.subs(pair.fast)[0].h
    return None if h is None else h.shape[0]


OPS = st.tuples(
    st.sampled_from(("forward", "forward", "backward", "reset", "set_state")),
    st.integers(0, 4),  # N
    st.integers(0, 5),  # T
    st.sampled_from(LAYOUTS),
    st.sampled_from(INPUT_DTYPES),
)


@PROPERTY_SETTINGS
@given(
    kind=st.sampled_from(TIME_KINDS),
    dtype=st.sampled_from(DTYPES),
    D=st.integers(1, 6),
    H=st.integers(1, 6),
    stateful=st.booleans(),
    param_layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(OPS, min_size=1, max_size=7),
)
def test_time_layer_call_sequences(kind, dtype, D, H, stateful, param_layout, seed, ops):
    pair = Pair(kind, dtype, D, H, stateful, seed, param_layout)
    for op, N, T, layout, in_dtype in ops:
        if op == "forward":
            xs = pair.array((N, T, D), layout, in_dtype)
            state_batch = _batch_of_state(pair)
            if stateful and state_batch is not None and state_batch != N:
                with pytest.raises(ValueError, match="reset_state"):
                    pair.fast.forward(xs)
                continue
            hs = pair.both("forward", xs)
            assert hs.dtype == pair.dtype and hs.flags.c_contiguous
            pair.last = hs.shape
        elif op == "backward":
            if pair.last is None:
                with pytest.raises(ValueError, match="before forward"):
                    pair.fast.backward(pair.array((N, T, pair.width), layout, in_dtype))
                continue
            dxs = pair.both("backward", pair.array(pair.last, layout, in_dtype))
            assert dxs.shape == pair.last[:2] + (D,) and dxs.dtype == pair.dtype
        elif op == "reset":
            pair.both("reset_state")
        elif kind != "TimeBiLSTM":  # set_state; BiLSTM has none, in the book as here
            args = [pair.array((N, H), layout, in_dtype)]
            if kind == "TimeLSTM" and T % 2:  # sometimes with c, sometimes c=None
                args.append(pair.array((N, H), layout, in_dtype))
            pair.both("set_state", *args)


@PROPERTY_SETTINGS
@given(
    kind=st.sampled_from(CELL_KINDS),
    dtype=st.sampled_from(DTYPES),
    D=st.integers(1, 6),
    H=st.integers(1, 6),
    param_layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**32 - 1),
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(LAYOUTS), st.sampled_from(INPUT_DTYPES)),
        min_size=1,
        max_size=4,
    ),
)
def test_cell_steps(kind, dtype, D, H, param_layout, seed, steps):
    pair = Pair(kind, dtype, D, H, False, seed, param_layout)
    lstm = FAMILY[kind] == "LSTM"
    for N, layout, in_dtype in steps:
        # Inputs in a float dtype other than the parameters' are computed in the
        # parameters' dtype; the reference promotes, so compare at float32's tolerance then.
        args = [pair.array((N, D), layout, in_dtype), pair.array((N, H), layout, in_dtype)]
        if lstm:
            args.append(pair.array((N, H), layout, in_dtype))
        out = pair.both("forward", *args)
        for o in out if lstm else (out,):
            assert o.dtype == pair.dtype and o.shape == (N, H)
        grads_in = [pair.array((N, H), layout, in_dtype) for _ in range(2 if lstm else 1)]
        dx, *_ = pair.both("backward", *grads_in)
        assert dx.shape == (N, D)


@PROPERTY_SETTINGS
@given(
    kind=st.sampled_from(("TimeRNN", "TimeLSTM", "TimeGRU")),  # BiLSTM reads backwards too
    dtype=st.sampled_from(DTYPES),
    D=st.integers(1, 5),
    H=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    calls=st.integers(2, 6),
)
def test_stateful_chunks_equal_one_long_sequence(kind, dtype, D, H, seed, calls):
    """Feeding a sequence in chunks to a stateful layer gives the same ``hs`` as feeding it
    whole, for fastrnn as for the reference."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, size=calls)
    N = int(rng.integers(1, 4))
    xs = rng.standard_normal((N, int(lengths.sum()), D))
    chunked = Pair(kind, dtype, D, H, True, seed, "C")
    whole = Pair(kind, dtype, D, H, True, seed, "C")
    parts, start = [], 0
    for n in lengths:
        parts.append(chunked.both("forward", xs[:, start : start + n]))
        start += n
    expected = whole.both("forward", xs)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), expected, **tolerance(dtype))
