"""A forward that repeats the last one skips the argument checks (``_repeated_call``): a
decoding loop calls with N = T = 1 thousands of times, where the checks cost as much as the
kernel. Here: everything that can change between two calls is still caught, before any
kernel runs, and repeated calls give the reference's numbers.

Each test first makes two good calls, so that the second one already took the short way.
"""

from __future__ import annotations

import numpy as np
import pytest
from _support import GATES, TOLERANCE, KernelSpy, make_params

import fastrnn
import fastrnn._kernels as kernels_module
from fastrnn import _planner, reference

KINDS = ("TimeRNN", "TimeLSTM", "TimeGRU")
KERNEL_NAMES = ("rnn_forward", "lstm_forward", "gru_forward")
N, T, D, H = 3, 2, 5, 4


@pytest.fixture
def kernel_spy(monkeypatch):
    return KernelSpy().install(monkeypatch, kernels_module, KERNEL_NAMES)


def _armed(kind, dtype=np.float64, stateful=True, seed=0):
    """A layer after two identical-shape forwards, its reference twin and an input."""
    rng = np.random.default_rng(seed)
    family = kind.removeprefix("Time")
    params = make_params(rng, family, D, H, dtype)
    fast = getattr(fastrnn, kind)(*params, stateful=stateful)
    ref = getattr(reference, kind)(*[p.copy() for p in params], stateful=stateful)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    for _ in range(2):
        np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **TOLERANCE[np.dtype(dtype)])
    assert fast._last_call is not None  # the next call at this shape may take the short way
    return fast, ref, xs


def _raises_before_any_kernel(kernel_spy, exception, needles, call):
    before = kernel_spy.calls
    with pytest.raises(exception) as info:
        call()
    assert kernel_spy.calls == before, "a kernel ran before the error"
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stateful", [False, True], ids=["stateless", "stateful"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_repeated_calls_track_the_reference(kind, stateful, dtype):
    """A chain of short-way calls, parameters updated in place between them (as an
    optimizer does), then a backward: the reference's numbers throughout."""
    fast, ref, xs = _armed(kind, dtype, stateful)
    tolerance = TOLERANCE[np.dtype(dtype)]
    rng = np.random.default_rng(1)
    for step in range(5):
        xs = rng.standard_normal((N, T, D)).astype(dtype)
        for p, q in zip(fast.params, ref.params, strict=True):
            p -= 0.01 * step  # in place: the same objects, new values
            q -= 0.01 * step
        np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **tolerance)
        np.testing.assert_allclose(fast.h, ref.h, **tolerance)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    np.testing.assert_allclose(fast.backward(dhs), ref.backward(dhs), **tolerance)
    for g, r in zip(fast.grads, ref.grads, strict=True):
        np.testing.assert_allclose(g, r, **tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_a_replaced_parameter_is_checked(kind, kernel_spy):
    fast, _, xs = _armed(kind)
    G = GATES[kind.removeprefix("Time")]
    fast.params[1] = np.zeros((H + 1, G * (H + 1)))
    _raises_before_any_kernel(
        kernel_spy, ValueError, ["Wx", f"({D}, {G * (H + 1)})"], lambda: fast.forward(xs)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_parameter_reshaped_in_place_is_checked(kind, kernel_spy):
    fast, _, xs = _armed(kind)
    Wh = fast.params[1]
    Wh.shape = (1, Wh.size)  # the same object, another shape
    _raises_before_any_kernel(kernel_spy, ValueError, ["Wh"], lambda: fast.forward(xs))


@pytest.mark.parametrize("kind", KINDS)
def test_a_parameter_viewed_as_another_dtype_in_place_is_checked(kind, kernel_spy):
    fast, _, xs = _armed(kind)
    fast.params[2].dtype = np.float32  # float64 bytes read as twice as many float32
    _raises_before_any_kernel(kernel_spy, TypeError, ["share one dtype"], lambda: fast.forward(xs))


@pytest.mark.parametrize("kind", KINDS)
def test_params_given_as_a_tuple_still_run(kind):
    fast, ref, xs = _armed(kind)
    fast.params = tuple(fast.params)
    np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **TOLERANCE[np.dtype("f8")])


@pytest.mark.parametrize("kind", KINDS)
def test_another_input_shape_or_dtype_is_checked(kind, kernel_spy):
    fast, ref, xs = _armed(kind)
    _raises_before_any_kernel(
        kernel_spy, ValueError, ["xs", f"D={D}"], lambda: fast.forward(xs[..., :-1])
    )
    _raises_before_any_kernel(
        kernel_spy, TypeError, ["xs", "int64"], lambda: fast.forward(xs.astype(np.int64))
    )
    half = xs.astype(np.float16)  # accepted, converted: the reference's numbers
    np.testing.assert_allclose(fast.forward(half), ref.forward(half), **TOLERANCE[np.dtype("f8")])


@pytest.mark.parametrize("kind", KINDS)
def test_a_replaced_state_is_checked(kind, kernel_spy):
    fast, _, xs = _armed(kind)
    fast.h = np.zeros((N + 1, H))
    _raises_before_any_kernel(
        kernel_spy, ValueError, ["h", f"({N}, {H})", "reset_state"], lambda: fast.forward(xs)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_replaced_by_a_list_is_checked(kind, kernel_spy):
    fast, _, xs = _armed(kind)
    fast.h = fast.h.tolist()
    _raises_before_any_kernel(
        kernel_spy, TypeError, ["h", "numpy.ndarray", "list"], lambda: fast.forward(xs)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_state_reshaped_in_place_is_checked(kind, kernel_spy):
    fast, _, xs = _armed(kind)
    fast.h.shape = (H, N)
    _raises_before_any_kernel(
        kernel_spy, ValueError, ["h", f"({N}, {H})"], lambda: fast.forward(xs)
    )


def test_a_replaced_cell_state_is_checked(kernel_spy):
    fast, _, xs = _armed("TimeLSTM")
    fast.c = np.zeros((N, H + 1))
    _raises_before_any_kernel(
        kernel_spy, ValueError, ["c", f"({N}, {H})"], lambda: fast.forward(xs)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_set_and_reset_state_are_seen(kind):
    fast, ref, xs = _armed(kind)
    tolerance = TOLERANCE[np.dtype("f8")]
    fast.reset_state()
    ref.reset_state()
    np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **tolerance)
    h = np.full((N, H), 0.25)
    fast.set_state(h.copy())
    ref.set_state(h.copy())
    np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **tolerance)
    fast.h[...] = -0.5  # the state the last call left, changed in place
    ref.h[...] = -0.5
    np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **tolerance)


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_plan_is_used_at_once(kind):
    """Pinning other routes between two calls: the next call runs them."""
    fast, ref, xs = _armed(kind)
    try:
        for routes in ("forward=transposed,backward=scratch", "forward=direct,backward=direct"):
            _planner.pin(routes)
            np.testing.assert_allclose(
                fast.forward(xs), ref.forward(xs), **TOLERANCE[np.dtype("f8")]
            )
            chosen = fast._engine.saved["routes"]
            assert routes == f"forward={chosen.forward},backward={chosen.backward}"
    finally:
        _planner.pin("auto")


def test_a_non_contiguous_parameter_never_takes_the_short_way():
    """Such a parameter runs as a contiguous copy; the copy is made afresh every call, so
    that in-place updates of the caller's array are seen."""
    rng = np.random.default_rng(3)
    Wx, Wh, b = make_params(rng, "LSTM", D, H, np.float64)
    Wh_f = np.asfortranarray(Wh)
    fast = fastrnn.TimeLSTM(Wx, Wh_f, b)
    ref = reference.TimeLSTM(Wx.copy(), Wh.copy(), b.copy())
    xs = rng.standard_normal((N, T, D))
    for _ in range(3):
        assert fast._last_call is None or fast._last_call[1] is not Wh_f
        np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **TOLERANCE[np.dtype("f8")])
        Wh_f *= 0.9
        ref.params[1] *= 0.9
