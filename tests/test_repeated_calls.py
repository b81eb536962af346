"""A forward that repeats the last one skips the argument checks (``_repeated_call``, and
``RepeatedCall`` for TimeEmbedding and TimeAffine): a decoding loop calls with N = T = 1
thousands of times, where the checks cost as much as the kernel. Here: everything that can
change between two calls is still caught, before any kernel runs, and repeated calls give
the reference's numbers.

Each test first makes two good calls, so that the second one already took the short way.
"""

from __future__ import annotations

import numpy as np
import pytest
from _support import GATES, TOLERANCE, KernelSpy, make_params

import fastrnn
import fastrnn._kernels as kernels_module
import fastrnn._kernels_sequence as sequence_kernels
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
        assert fast._last_call is None or fast._last_call.params[1] is not Wh_f
        np.testing.assert_allclose(fast.forward(xs), ref.forward(xs), **TOLERANCE[np.dtype("f8")])
        Wh_f *= 0.9
        ref.params[1] *= 0.9


# --------------------------------------------------------------------------------------
# TimeEmbedding and TimeAffine: the same short way (RepeatedCall), the same guarantees
# --------------------------------------------------------------------------------------


V, M = 7, 6


@pytest.fixture
def sequence_spy(monkeypatch):
    return KernelSpy().install(
        monkeypatch, sequence_kernels, ("embedding_forward", "affine_forward")
    )


def _armed_embedding(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((V, D)).astype(dtype)
    fast, ref = fastrnn.TimeEmbedding(W), reference.TimeEmbedding(W.copy())
    xs = rng.integers(0, V, (N, T))
    for _ in range(2):
        np.testing.assert_array_equal(fast.forward(xs), ref.forward(xs))
    assert fast._last_call is not None  # the next call at this shape may take the short way
    return fast, ref, xs


def _armed_affine(dtype=np.float64, tied=False, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((M, D) if tied else (D, M)).astype(dtype)
    W = W.T if tied else W  # tied: a transposed view, as the book passes embed_W.T
    b = rng.standard_normal(M).astype(dtype)
    fast, ref = fastrnn.TimeAffine(W, b), reference.TimeAffine(W.copy(), b.copy())
    x = rng.standard_normal((N, T, D)).astype(dtype)
    for _ in range(2):
        np.testing.assert_allclose(fast.forward(x), ref.forward(x), **TOLERANCE[np.dtype(dtype)])
    assert fast._last_call is not None
    return fast, ref, x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_repeated_embedding_calls_track_the_reference(dtype):
    fast, ref, _ = _armed_embedding(dtype)
    rng = np.random.default_rng(1)
    for step in range(4):
        xs = rng.integers(0, V, (N, T))
        fast.params[0] -= 0.01 * step  # in place, as an optimizer updates it
        ref.params[0] -= 0.01 * step
        np.testing.assert_array_equal(fast.forward(xs), ref.forward(xs.copy()))
    dout = rng.standard_normal((N, T, D)).astype(dtype)
    xs[...] = 0  # the caller reuses its ids array: backward uses the ids forward saw
    fast.backward(dout)
    ref.backward(dout)
    np.testing.assert_allclose(fast.grads[0], ref.grads[0], **TOLERANCE[np.dtype(dtype)])


@pytest.mark.parametrize("bad", [V, -1], ids=["too-large", "negative"])
def test_a_repeated_embedding_call_checks_its_ids(bad, sequence_spy):
    fast, ref, xs = _armed_embedding()
    bad_xs = xs.copy()
    bad_xs[-1, -1] = bad
    _raises_before_any_kernel(
        sequence_spy, ValueError, ["xs", str(bad)], lambda: fast.forward(bad_xs)
    )
    np.testing.assert_array_equal(fast.forward(xs), ref.forward(xs))  # still usable


def test_a_single_id_is_checked_on_the_short_way(sequence_spy):
    """A generation step, (1, 1): the ids check has its own branch for one id."""
    rng = np.random.default_rng(2)
    W = rng.standard_normal((V, D))
    fast = fastrnn.TimeEmbedding(W)
    for word in (0, V - 1, 3):
        np.testing.assert_array_equal(fast.forward(np.array([[word]])), W[[[word]]])
    for bad in (V, -1):
        _raises_before_any_kernel(
            sequence_spy, ValueError, ["xs", str(bad)], lambda b=bad: fast.forward(np.array([[b]]))
        )


def test_a_replaced_or_reshaped_embedding_weight_is_checked(sequence_spy):
    fast, _, xs = _armed_embedding()
    fast.params[0] = np.zeros(V * D)
    _raises_before_any_kernel(sequence_spy, ValueError, ["W", "(V, D)"], lambda: fast.forward(xs))
    fast, _, xs = _armed_embedding()
    fast.params[0].shape = (V * D,)  # the same object, another shape
    _raises_before_any_kernel(sequence_spy, ValueError, ["W", "(V, D)"], lambda: fast.forward(xs))
    fast, _, xs = _armed_embedding()
    _raises_before_any_kernel(
        sequence_spy, TypeError, ["xs", "float64"], lambda: fast.forward(xs.astype(np.float64))
    )


def test_another_ids_shape_or_dtype_still_matches():
    fast, ref, xs = _armed_embedding()
    for other in (xs[:, :1], xs.astype(np.int32), xs[::-1, ::-1]):  # strided too
        np.testing.assert_array_equal(fast.forward(other), ref.forward(other))


@pytest.mark.parametrize("tied", [False, True], ids=["own", "tied"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_repeated_affine_calls_track_the_reference(dtype, tied):
    fast, ref, _ = _armed_affine(dtype, tied)
    tolerance = TOLERANCE[np.dtype(dtype)]
    rng = np.random.default_rng(1)
    for step in range(4):
        x = rng.standard_normal((N, T, D)).astype(dtype)
        for p, q in zip(fast.params, ref.params, strict=True):
            p -= 0.01 * step
            q -= 0.01 * step
        np.testing.assert_allclose(fast.forward(x), ref.forward(x), **tolerance)
    dout = rng.standard_normal((N, T, M)).astype(dtype)
    np.testing.assert_allclose(fast.backward(dout), ref.backward(dout), **tolerance)
    for g, r in zip(fast.grads, ref.grads, strict=True):
        np.testing.assert_allclose(g, r, **tolerance)


def test_a_replaced_or_reshaped_affine_parameter_is_checked(sequence_spy):
    fast, _, x = _armed_affine()
    fast.params[1] = np.zeros(M + 1)
    _raises_before_any_kernel(
        sequence_spy, ValueError, ["b", f"({M},)", f"({M + 1},)"], lambda: fast.forward(x)
    )
    fast, _, x = _armed_affine()
    fast.params[0].shape = (M, D)  # the same object, another shape
    _raises_before_any_kernel(sequence_spy, ValueError, ["b", f"({D},)"], lambda: fast.forward(x))
    fast, _, x = _armed_affine()
    _raises_before_any_kernel(
        sequence_spy, ValueError, ["x", f"D={D}"], lambda: fast.forward(x[..., :-1])
    )


def test_an_affine_weight_that_needs_a_copy_never_takes_the_short_way():
    """A weight that is neither C-contiguous nor a transposed C-contiguous array runs as a
    copy made afresh every call, so in-place updates are seen."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((2 * D, M))[::2]  # every other row: no contiguous layout
    b = rng.standard_normal(M)
    fast, ref = fastrnn.TimeAffine(W, b), reference.TimeAffine(W.copy(), b.copy())
    x = rng.standard_normal((N, T, D))
    for _ in range(3):
        np.testing.assert_allclose(fast.forward(x), ref.forward(x), **TOLERANCE[np.dtype("f8")])
        assert fast._last_call is None
        W *= 0.9
        ref.params[0] *= 0.9
