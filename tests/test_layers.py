"""fastrnn against fastrnn.reference: every layer and cell, every output and gradient.

Each test runs the fast layer and the reference layer on the same inputs (the reference
gets its own copies of the parameters, so a fast layer that wrote into them would be
caught) and compares hs, dxs, every grad, dh and the final h (and c) with the shared
``TOLERANCE`` table. Besides shapes, dtypes and memory layouts, the tests pin down the
book's API contract that trainers and optimizers rely on: aliased params, grads written
in place, fresh outputs, stateful chains and set_state/reset_state.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _support import DTYPES, FAMILY, GATES, assert_close, make_params

import fastrnn
from fastrnn import _kernels as kernels_module
from fastrnn import _planner
from fastrnn import layers as layers_module
from fastrnn import reference as ref

#: name -> (fast class, reference class, gate family, number of parameter sets)
TIME_LAYERS = {
    "TimeRNN": (fastrnn.TimeRNN, ref.TimeRNN, "RNN", 1),
    "TimeLSTM": (fastrnn.TimeLSTM, ref.TimeLSTM, "LSTM", 1),
    "TimeGRU": (fastrnn.TimeGRU, ref.TimeGRU, "GRU", 1),
    "TimeBiLSTM": (fastrnn.TimeBiLSTM, ref.TimeBiLSTM, "LSTM", 2),
}
UNI_LAYERS = ["TimeRNN", "TimeLSTM", "TimeGRU"]
CELLS = {
    "RNN": (fastrnn.RNN, ref.RNN),
    "LSTM": (fastrnn.LSTM, ref.LSTM),
    "GRU": (fastrnn.GRU, ref.GRU),
}
DTYPE_IDS = {np.float32: "f32", np.float64: "f64"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
time_layers = pytest.mark.parametrize("name", TIME_LAYERS)
uni_layers = pytest.mark.parametrize("name", UNI_LAYERS)

#: (N, T, D, H) edge shapes and larger cases (every BLAS orientation of the per-step
#: products is pinned in turn by test_every_route_matches_reference).
SHAPES = {
    "N1": (1, 4, 3, 5),
    "T1": (3, 1, 4, 5),
    "H1": (3, 4, 3, 1),
    "D1": (3, 4, 1, 5),
    "D6-H2": (2, 3, 6, 2),
    "all1": (1, 1, 1, 1),
    "N7-T9-D5-H11": (7, 9, 5, 11),
    "N17-T8-D4-H9": (17, 8, 4, 9),
    "N25-T3-D4-H6": (25, 3, 4, 6),
    "N65-T2-D3-H4": (65, 2, 3, 4),
    "N3-T8-D4-H512": (3, 8, 4, 512),
}

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_pair(rng, name, D, H, dtype, stateful=False):
    """A fast and a reference layer with equal parameters (separate copies).

    Returns ``(fast, reference, params, ref_params)``; ``params`` are the fast layer's.
    """
    fast_cls, ref_cls, family, sets = TIME_LAYERS[name]
    params = [p for _ in range(sets) for p in make_params(rng, family, D, H, dtype)]
    ref_params = [p.copy() for p in params]
    return (
        fast_cls(*params, stateful=stateful),
        ref_cls(*ref_params, stateful=stateful),
        params,
        ref_params,
    )


def out_width(name, H):
    return 2 * H if name == "TimeBiLSTM" else H


def directions(layer):
    """The unidirectional layers holding ``h``, ``c``, ``dh``: one, or two for TimeBiLSTM."""
    if hasattr(layer, "forward_lstm"):
        return [layer.forward_lstm, layer.backward_lstm]
    return [layer]


def assert_states(fast, reference, dtype, attrs, label=""):
    """``h``/``c``/``dh`` of every direction of ``fast`` match ``reference``."""
    for k, (f, r) in enumerate(zip(directions(fast), directions(reference), strict=True)):
        for attr in attrs:
            if not hasattr(r, attr):  # c of RNN/GRU
                continue
            expected = getattr(r, attr)
            actual = getattr(f, attr)
            assert actual is not None, f"{label}{attr} of direction {k} is None"
            assert actual.dtype == dtype, f"{label}{attr} dtype"
            assert_close(actual, expected, dtype, err_msg=f"{label}{attr} of direction {k}")


def forward_both(fast, reference, xs, dtype, label=""):
    """Forward both layers; compare hs and the final states; return the fast hs. The fast
    layer must leave ``xs`` as it was."""
    xs_before = xs.copy()
    hs = fast.forward(xs)
    np.testing.assert_array_equal(xs, xs_before, err_msg=f"{label}forward modified xs")
    hs_ref = reference.forward(xs)
    assert isinstance(hs, np.ndarray) and hs.dtype == dtype and hs.shape == hs_ref.shape
    assert_close(hs, hs_ref, dtype, err_msg=f"{label}hs")
    assert_states(fast, reference, dtype, ("h", "c"), label)
    return hs


def backward_both(fast, reference, dhs, dtype, label=""):
    """Backward both layers; compare dxs, every grad and dh; return the fast dxs. The fast
    layer must leave ``dhs`` as it was (the kernels read the caller's array)."""
    dhs_before = dhs.copy()
    dxs = fast.backward(dhs)
    np.testing.assert_array_equal(dhs, dhs_before, err_msg=f"{label}backward modified dhs")
    dxs_ref = reference.backward(dhs)
    assert isinstance(dxs, np.ndarray) and dxs.dtype == dtype and dxs.shape == dxs_ref.shape
    assert_close(dxs, dxs_ref, dtype, err_msg=f"{label}dxs")
    assert len(fast.grads) == len(reference.grads)
    for i, (g, g_ref) in enumerate(zip(fast.grads, reference.grads, strict=True)):
        assert g.dtype == dtype and g.shape == g_ref.shape
        assert_close(g, g_ref, dtype, err_msg=f"{label}grads[{i}]")
    assert_states(fast, reference, dtype, ("dh",), label)
    return dxs


def run_both(fast, reference, xs, dhs, dtype, label=""):
    """One forward and one backward of both layers, everything compared."""
    hs = forward_both(fast, reference, xs, dtype, label)
    dxs = backward_both(fast, reference, dhs, dtype, label)
    return hs, dxs


def randn(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def set_state(layer, name, h, c):
    """Give ``layer`` the initial state ``h`` (and ``c``); TimeBiLSTM: both directions."""
    if name == "TimeBiLSTM":
        layer.forward_lstm.set_state(h, c)
        layer.backward_lstm.set_state(-h, None if c is None else -c)
    elif name == "TimeLSTM":
        layer.set_state(h, c)
    else:
        layer.set_state(h)


# --------------------------------------------------------------------------------------
# Time layers: values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@dtypes
@time_layers
def test_time_layer_matches_reference(rng, name, dtype, shape):
    """hs, dxs, every grad, dh and the final h (and c) match the reference."""
    N, T, D, H = shape
    fast, reference, params, ref_params = make_pair(rng, name, D, H, dtype)
    xs = randn(rng, (N, T, D), dtype)
    dhs = randn(rng, (N, T, out_width(name, H)), dtype)
    run_both(fast, reference, xs, dhs, dtype)
    for p, p_ref in zip(params, ref_params, strict=True):
        np.testing.assert_array_equal(p, p_ref, err_msg="the layer modified its params")


def make_layout(rng, layout, shape):
    """A float64 array of ``shape`` with the memory layout named ``layout``."""
    N, T, W = shape
    if layout == "reversed-T":
        return rng.standard_normal((N, T, W))[:, ::-1]
    if layout == "fortran":
        return np.asfortranarray(rng.standard_normal((N, T, W)))
    if layout == "stepped-slice":
        return rng.standard_normal((2 * N + 1, 3 * T, 2 * W))[1::2, ::3, ::2]
    if layout == "all-reversed":
        return rng.standard_normal((N, T, W))[::-1, ::-1, ::-1]
    if layout == "time-major":
        return rng.standard_normal((T, N, W)).transpose(1, 0, 2)
    if layout == "broadcast-batch":
        return np.broadcast_to(rng.standard_normal((1, T, W)), (N, T, W))
    raise ValueError(layout)


LAYOUTS = [
    "reversed-T",
    "fortran",
    "stepped-slice",
    "all-reversed",
    "time-major",
    "broadcast-batch",
]


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
@time_layers
def test_time_layer_strided_inputs(rng, name, dtype, layout):
    """xs and dhs given as non-contiguous views give the reference's numbers."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    xs = make_layout(rng, layout, (N, T, D)).astype(dtype, copy=False)
    dhs = make_layout(rng, layout, (N, T, out_width(name, H))).astype(dtype, copy=False)
    if dtype == np.float64:  # the layout survives (astype to float32 copies)
        assert not xs.flags.c_contiguous and not dhs.flags.c_contiguous
    run_both(fast, reference, xs, dhs, dtype)


#: (input dtype, parameter dtype): xs and dhs in another float dtype than the params.
MIXED = {
    "f64-into-f32": (np.float64, np.float32),
    "f16-into-f32": (np.float16, np.float32),
    "f32-into-f64": (np.float32, np.float64),
    "f16-into-f64": (np.float16, np.float64),
}


@pytest.mark.parametrize("in_dtype, dtype", MIXED.values(), ids=MIXED.keys())
@time_layers
def test_time_layer_mixed_dtype_inputs(rng, name, in_dtype, dtype):
    """xs and dhs of another float dtype are computed in the params' dtype."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    xs = randn(rng, (N, T, D), in_dtype)
    dhs = randn(rng, (N, T, out_width(name, H)), in_dtype)
    run_both(fast, reference, xs, dhs, dtype)


@pytest.mark.parametrize("layout", ["reversed-T", "stepped-slice"])
def test_time_layer_strided_float64_into_float32(rng, layout):
    """A strided float64 view into float32 params: conversion and layout at once."""
    N, T, D, H = 3, 5, 4, 2
    for name in TIME_LAYERS:
        fast, reference, _, _ = make_pair(rng, name, D, H, np.float32)
        xs = make_layout(rng, layout, (N, T, D))
        dhs = make_layout(rng, layout, (N, T, out_width(name, H)))
        run_both(fast, reference, xs, dhs, np.float32, label=f"{name}: ")


# --------------------------------------------------------------------------------------
# Stateful chains, batch sizes, set_state / reset_state
# --------------------------------------------------------------------------------------


@dtypes
@time_layers
def test_stateful_chain(rng, name, dtype):
    """Four stateful forward/backward calls from a set initial state: h, c carried over
    and every output, grad, dh and state compared after each call."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype, stateful=True)
    h0, c0 = randn(rng, (N, H), dtype), randn(rng, (N, H), dtype)
    set_state(fast, name, h0, c0)
    set_state(reference, name, h0, c0)
    previous_h = h0
    for call in range(4):
        xs = randn(rng, (N, T, D), dtype)
        dhs = randn(rng, (N, T, out_width(name, H)), dtype)
        run_both(fast, reference, xs, dhs, dtype, label=f"call {call}: ")
        h = directions(fast)[0].h
        assert not np.allclose(h, previous_h)  # the state moves on
        previous_h = h.copy()


@pytest.mark.parametrize("stateful", [False, True], ids=["non-stateful", "stateful+reset"])
@dtypes
@time_layers
def test_batch_size_changes(rng, name, dtype, stateful):
    """The batch size may change between calls (stateful layers after reset_state)."""
    T, D, H = 3, 2, 4
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype, stateful=stateful)
    for call, N in enumerate([3, 5, 5, 1, 2]):
        if stateful and call in (1, 3, 4):  # N changes
            fast.reset_state()
            reference.reset_state()
        xs = randn(rng, (N, T, D), dtype)
        dhs = randn(rng, (N, T, out_width(name, H)), dtype)
        run_both(fast, reference, xs, dhs, dtype, label=f"call {call} (N={N}): ")


@dtypes
@uni_layers
def test_set_state_is_used_by_stateful_forward(rng, name, dtype):
    """set_state(h) (and c) with states in any layout and float dtype start the next call."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype, stateful=True)
    run_both(fast, reference, randn(rng, (N, T, D), dtype), randn(rng, (N, T, H), dtype), dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    h0 = randn(rng, (H, N), other).T  # non-contiguous, other dtype
    c0 = randn(rng, (2 * N, H))[::2]  # stepped
    set_state(fast, name, h0, c0)
    set_state(reference, name, h0, c0)
    xs, dhs = randn(rng, (N, T, D), dtype), randn(rng, (N, T, H), dtype)
    run_both(fast, reference, xs, dhs, dtype, label="after set_state: ")


@dtypes
def test_lstm_set_state_without_c_means_zero_c(rng, dtype):
    """TimeLSTM.set_state(h) after a call that left c != 0 starts from c = 0."""
    N, T, D, H = 2, 3, 2, 3
    fast, reference, _, _ = make_pair(rng, "TimeLSTM", D, H, dtype, stateful=True)
    run_both(fast, reference, randn(rng, (N, T, D), dtype), randn(rng, (N, T, H), dtype), dtype)
    assert np.any(fast.c != 0)
    h0 = randn(rng, (N, H), dtype)
    fast.set_state(h0)
    reference.set_state(h0, np.zeros((N, H), dtype))  # explicit zeros in the oracle
    xs, dhs = randn(rng, (N, T, D), dtype), randn(rng, (N, T, H), dtype)
    run_both(fast, reference, xs, dhs, dtype, label="set_state(h): ")


@dtypes
@time_layers
def test_reset_state_starts_from_zeros(rng, name, dtype):
    """After stateful calls, reset_state() makes the next call start from zero states."""
    N, T, D, H = 2, 3, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype, stateful=True)
    fresh = TIME_LAYERS[name][1](*[p.copy() for p in reference.params])  # non-stateful
    for _ in range(2):
        xs = randn(rng, (N, T, D), dtype)
        run_both(fast, reference, xs, randn(rng, (N, T, out_width(name, H)), dtype), dtype)
    fast.reset_state()
    xs = randn(rng, (N, T, D), dtype)
    dhs = randn(rng, (N, T, out_width(name, H)), dtype)
    run_both(fast, fresh, xs, dhs, dtype, label="after reset_state: ")


@dtypes
@time_layers
def test_non_stateful_ignores_state(rng, name, dtype):
    """stateful=False: a set state and the previous call's state are both ignored."""
    N, T, D, H = 2, 3, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype, stateful=False)
    for call in range(3):
        set_state(fast, name, randn(rng, (N, H), dtype), randn(rng, (N, H), dtype))
        xs = randn(rng, (N, T, D), dtype)
        dhs = randn(rng, (N, T, out_width(name, H)), dtype)
        run_both(fast, reference, xs, dhs, dtype, label=f"call {call}: ")


# --------------------------------------------------------------------------------------
# The API contract: params, grads, fresh outputs
# --------------------------------------------------------------------------------------


@dtypes
@time_layers
def test_in_place_param_updates_are_seen(rng, name, dtype):
    """An optimizer's in-place updates of params between calls (SGD ``W -= lr * grad``,
    then a wholesale ``W[...] = new``) are used by the next forward and backward."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, params, ref_params = make_pair(rng, name, D, H, dtype)
    xs = randn(rng, (N, T, D), dtype)
    dhs = randn(rng, (N, T, out_width(name, H)), dtype)
    hs_before, _ = run_both(fast, reference, xs, dhs, dtype)
    for update in ("sgd", "overwrite"):
        for p, g, p_ref in zip(fast.params, fast.grads, ref_params, strict=True):
            if update == "sgd":
                p -= dtype(0.5) * g
            else:
                p[...] = randn(rng, p.shape, dtype)
            p_ref[...] = p
        assert all(p is q for p, q in zip(fast.params, params, strict=True))
        hs, _ = run_both(fast, reference, xs, dhs, dtype, label=f"after {update}: ")
        assert not np.allclose(hs, hs_before)
        hs_before = hs


@time_layers
@pytest.mark.parametrize("shape_id", ["N17-T8-D4-H9", "N3-T8-D4-H512"])
def test_update_between_forward_and_backward(rng, name, shape_id, pinned_routes):
    """An in-place change of Wh after forward is seen by backward, as in the book, on every
    route the backward product can take (and after a forward that copied Wh.T)."""
    N, T, D, H = SHAPES[shape_id]
    fast, reference, _, ref_params = make_pair(rng, name, D, H, np.float64)
    xs = randn(rng, (N, T, D))
    dhs = randn(rng, (N, T, out_width(name, H)))
    forward_both(fast, reference, xs, np.float64)
    for p, p_ref in zip(fast.params, ref_params, strict=True):
        if p.ndim == 2 and p.shape[0] == H:  # every Wh (TimeBiLSTM has two)
            p *= -0.5
            p_ref[...] = p
    backward_both(fast, reference, dhs, np.float64)


@time_layers
@pytest.mark.parametrize("layout", ["read-only", "unaligned", "float64", "reversed"])
def test_backward_with_unusual_dhs(rng, name, layout):
    """``dhs`` that the kernels cannot read as it is (read-only, unaligned, another dtype,
    strided) is copied first, with the same results, and left unchanged."""
    N, T, D, H = SHAPES["N17-T8-D4-H9"]
    fast, reference, _, _ = make_pair(rng, name, D, H, np.float32)
    width = out_width(name, H)
    dhs = randn(rng, (N, T, width), np.float32)
    if layout == "read-only":
        dhs.flags.writeable = False
    elif layout == "unaligned":
        raw = np.empty(dhs.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(dhs.shape)
        raw[...] = dhs
        dhs = raw
        assert not dhs.flags.aligned
    elif layout == "float64":
        dhs = dhs.astype(np.float64)
    else:
        dhs = randn(rng, (N, T, width), np.float32)[:, ::-1]
    forward_both(fast, reference, randn(rng, (N, T, D), np.float32), np.float32)
    backward_both(fast, reference, dhs, np.float32)


@time_layers
def test_params_are_the_callers_arrays(rng, name):
    """params[i] is the array passed in (weight tying), grads have params' shapes/dtypes."""
    fast, _, params, _ = make_pair(rng, name, 2, 3, np.float32)
    assert len(fast.params) == len(params)
    for p, q, g in zip(fast.params, params, fast.grads, strict=True):
        assert p is q
        assert g.shape == p.shape and g.dtype == p.dtype
        assert not np.shares_memory(g, p)


@uni_layers
def test_tied_weights_between_layers(rng, name):
    """Two layers sharing one Wh (weight tying): a training step through the first one
    is seen by the second, which still matches the reference."""
    N, T, D, H = 2, 3, 2, 3
    dtype = np.float64
    fast1, ref1, params, ref_params = make_pair(rng, name, D, H, dtype)
    fast_cls, ref_cls, family, _ = TIME_LAYERS[name]
    Wx2, _, b2 = make_params(rng, family, D, H, dtype)
    fast2 = fast_cls(Wx2, params[1], b2)
    ref2 = ref_cls(Wx2.copy(), ref_params[1], b2.copy())
    assert fast2.params[1] is fast1.params[1]
    xs, dhs = randn(rng, (N, T, D)), randn(rng, (N, T, H))
    run_both(fast1, ref1, xs, dhs, dtype)
    fast1.params[1] -= 0.5 * fast1.grads[1]
    ref_params[1][...] = params[1]
    run_both(fast2, ref2, xs, dhs, dtype, label="tied layer: ")


@dtypes
@time_layers
def test_grads_are_overwritten_in_place(rng, name, dtype):
    """grads stay the same array objects across calls and are overwritten, not
    accumulated: garbage (as a trainer's in-place grad edits) does not leak through."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    grads = list(fast.grads)
    for call in range(3):
        for g in fast.grads:
            g[...] = 1e3 * (call + 1)
        xs = randn(rng, (N, T, D), dtype)
        dhs = randn(rng, (N, T, out_width(name, H)), dtype)
        run_both(fast, reference, xs, dhs, dtype, label=f"call {call}: ")
        assert len(fast.grads) == len(grads)
        assert all(g is h for g, h in zip(fast.grads, grads, strict=True))


def _fresh_cases():
    # N == 1 and T == 1 matter: there a time-major/batch-major transpose is contiguous
    # already, and a lazy copy would hand out a view of the workspace.
    return [
        pytest.param(name, shape_id, id=f"{name}-{shape_id}")
        for name in TIME_LAYERS
        for shape_id in ("N2-T3", "N1", "T1")
    ]


FRESH_SHAPES = {"N2-T3": (2, 3), "N1": (1, 3), "T1": (2, 1)}


@pytest.mark.parametrize("name, shape_id", _fresh_cases())
def test_forward_returns_fresh_hs(rng, name, shape_id):
    """forward returns a new array each call: writing into it does not change backward,
    and the next forward neither reuses nor overwrites it."""
    N, T = FRESH_SHAPES[shape_id]
    D, H, dtype = 2, 3, np.float64
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    W = out_width(name, H)
    xs1, xs2, dhs = randn(rng, (N, T, D)), randn(rng, (N, T, D)), randn(rng, (N, T, W))
    hs1 = forward_both(fast, reference, xs1, dtype)
    hs1[...] = 0.75  # e.g. an in-place dropout or activation downstream
    backward_both(fast, reference, dhs, dtype, label="after writing into hs: ")
    hs2 = forward_both(fast, reference, xs2, dtype, label="second forward: ")
    np.testing.assert_array_equal(hs1, 0.75, err_msg="the second forward overwrote hs")
    assert not np.shares_memory(hs1, hs2), "two forwards returned the same memory"


@pytest.mark.parametrize("name, shape_id", _fresh_cases())
def test_backward_returns_fresh_dxs(rng, name, shape_id):
    """backward returns a new dxs each call, which the next backward does not overwrite;
    writing into it changes nothing for the next call."""
    N, T = FRESH_SHAPES[shape_id]
    D, H, dtype = 2, 3, np.float64
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    W = out_width(name, H)
    forward_both(fast, reference, randn(rng, (N, T, D)), dtype)
    dxs1 = backward_both(fast, reference, randn(rng, (N, T, W)), dtype)
    expected = dxs1.copy()
    dxs2 = backward_both(fast, reference, randn(rng, (N, T, W)), dtype, label="second: ")
    np.testing.assert_array_equal(dxs1, expected, err_msg="the second backward overwrote dxs")
    assert not np.shares_memory(dxs1, dxs2), "two backwards returned the same memory"
    dxs2[...] = 0.5
    forward_both(fast, reference, randn(rng, (N, T, D)), dtype, label="third: ")
    backward_both(fast, reference, randn(rng, (N, T, W)), dtype, label="third: ")


@pytest.mark.parametrize("shape_id", FRESH_SHAPES)
@time_layers
def test_states_are_not_overwritten_by_later_calls(rng, name, shape_id):
    """h, c and dh read after a call keep their values through later calls, and writing
    into the returned hs does not change them."""
    N, T = FRESH_SHAPES[shape_id]
    D, H, dtype = 2, 3, np.float64
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype, stateful=True)
    W = out_width(name, H)
    hs, _ = run_both(fast, reference, randn(rng, (N, T, D)), randn(rng, (N, T, W)), dtype)
    kept = [
        (getattr(d, attr), getattr(d, attr).copy())
        for d in directions(fast)
        for attr in ("h", "c", "dh")
        if hasattr(d, attr)
    ]
    hs[...] = 0.25
    run_both(fast, reference, randn(rng, (N, T, D)), randn(rng, (N, T, W)), dtype, "second: ")
    for array, value in kept:
        np.testing.assert_array_equal(array, value)
    for d in directions(fast):  # the states are not views of each other or of outputs
        assert not np.shares_memory(d.h, hs)
        if hasattr(d, "c"):
            assert not np.shares_memory(d.h, d.c)


@dtypes
@time_layers
def test_backward_twice_gives_identical_results(rng, name, dtype):
    """Two backward calls after one forward give identical dxs, grads and dh."""
    N, T, D, H = 3, 4, 2, 3
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    dhs = randn(rng, (N, T, out_width(name, H)), dtype)
    _, dxs1 = run_both(fast, reference, randn(rng, (N, T, D), dtype), dhs, dtype)
    first = [dxs1.copy(), *(g.copy() for g in fast.grads)]
    first += [d.dh.copy() for d in directions(fast)]
    dxs2 = backward_both(fast, reference, dhs, dtype, label="second backward: ")
    second = [dxs2, *fast.grads, *(d.dh for d in directions(fast))]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@time_layers
def test_non_contiguous_params(rng, name):
    """Params that are non-contiguous views (Fortran order, column slices) give the
    reference's numbers, and in-place updates of them are seen."""
    N, T, D, H = 2, 3, 3, 2
    dtype = np.float64
    _, ref_cls, family, sets = TIME_LAYERS[name]
    contiguous = [p for _ in range(sets) for p in make_params(rng, family, D, H, dtype)]
    views = []
    for p in contiguous:
        if p.ndim == 2:
            view = np.asfortranarray(p) if len(views) % 3 == 0 else np.repeat(p, 2, axis=1)[:, ::2]
        else:
            view = np.repeat(p, 2)[::2]
        assert not view.flags.c_contiguous and np.array_equal(view, p)
        views.append(view)
    fast = TIME_LAYERS[name][0](*views)
    reference = ref_cls(*contiguous)
    xs, dhs = randn(rng, (N, T, D)), randn(rng, (N, T, out_width(name, H)))
    run_both(fast, reference, xs, dhs, dtype)
    for view, p in zip(views, contiguous, strict=True):
        view *= 1.5
        p *= 1.5
    run_both(fast, reference, xs, dhs, dtype, label="after an in-place update: ")


# --------------------------------------------------------------------------------------
# TimeBiLSTM specifics
# --------------------------------------------------------------------------------------


@dtypes
def test_bilstm_halves_and_grads_ordering(rng, dtype):
    """TimeBiLSTM hs[..., :H] is LSTM1 over xs, hs[..., H:] LSTM2 over reversed xs; grads
    are [dWx1, dWh1, db1, dWx2, dWh2, db2], checked against two separate reference LSTMs."""
    N, T, D, H = 2, 5, 3, 4
    p1 = make_params(rng, "LSTM", D, H, dtype)
    p2 = make_params(rng, "LSTM", D, H, dtype)
    fast = fastrnn.TimeBiLSTM(*p1, *p2)
    assert all(a is b for a, b in zip(fast.params, p1 + p2, strict=True))
    lstm1 = ref.TimeLSTM(*[p.copy() for p in p1])
    lstm2 = ref.TimeLSTM(*[p.copy() for p in p2])
    xs = randn(rng, (N, T, D), dtype)
    dhs = randn(rng, (N, T, 2 * H), dtype)
    hs = fast.forward(xs)
    assert_close(hs[..., :H], lstm1.forward(xs), dtype, "forward half")
    assert_close(hs[..., H:], lstm2.forward(xs[:, ::-1])[:, ::-1], dtype, "backward half")
    dxs = fast.backward(dhs)
    expected = lstm1.backward(dhs[..., :H]) + lstm2.backward(dhs[:, ::-1, H:])[:, ::-1]
    assert_close(dxs, expected, dtype, "dxs")
    names = ["dWx1", "dWh1", "db1", "dWx2", "dWh2", "db2"]
    for g, g_ref, gname in zip(fast.grads, lstm1.grads + lstm2.grads, names, strict=True):
        assert_close(g, g_ref, dtype, gname)
    assert_close(fast.forward_lstm.dh, lstm1.dh, dtype, "forward_lstm.dh")
    assert_close(fast.backward_lstm.dh, lstm2.dh, dtype, "backward_lstm.dh")


def test_bilstm_with_both_directions_sharing_weights(rng):
    """TimeBiLSTM given the same three arrays for both directions (tied weights) keeps
    two separate grad lists, each matching the reference."""
    N, T, D, H = 2, 4, 3, 2
    p = make_params(rng, "LSTM", D, H, np.float64)
    p_ref = [a.copy() for a in p]
    fast = fastrnn.TimeBiLSTM(*p, *p)
    reference = ref.TimeBiLSTM(*p_ref, *p_ref)
    assert fast.params[0] is fast.params[3]
    xs, dhs = randn(rng, (N, T, D)), randn(rng, (N, T, 2 * H))
    run_both(fast, reference, xs, dhs, np.float64)
    assert not np.allclose(fast.grads[0], fast.grads[3])


# --------------------------------------------------------------------------------------
# Single-step cells
# --------------------------------------------------------------------------------------

CELL_SHAPES = {
    "N1": (1, 3, 4),
    "H1": (3, 2, 1),
    "D1": (3, 1, 4),
    "D6-H2": (2, 6, 2),
    "all1": (1, 1, 1),
    "N7-D5-H11": (7, 5, 11),
}


def cell_step(cell, family, x, h, c, dh, dc):
    """The book's cell API: forward then backward; returns every output as a list."""
    if family == "LSTM":
        out = cell.forward(x, h, c)
        assert isinstance(out, tuple) and len(out) == 2
        back = cell.backward(dh, dc)
        assert isinstance(back, tuple) and len(back) == 3
        return [*out, *back]
    h_next = cell.forward(x, h)
    assert isinstance(h_next, np.ndarray)
    back = cell.backward(dh)
    assert isinstance(back, tuple) and len(back) == 2
    return [h_next, *back]


CELL_OUTPUTS = {"LSTM": ["h_next", "c_next", "dx", "dh_prev", "dc_prev"]}


def compare_cells(fast, reference, family, args, ref_args, dtype, label=""):
    """One step of both cells: outputs, gradients and grads compared; the fast cell must
    leave its arguments as they were."""
    before = [a.copy() for a in args]
    got = cell_step(fast, family, *args)
    for a, a_before in zip(args, before, strict=True):
        np.testing.assert_array_equal(a, a_before, err_msg=f"{label}an argument was modified")
    expected = cell_step(reference, family, *ref_args)
    names = CELL_OUTPUTS.get(family, ["h_next", "dx", "dh_prev"])
    for a, e, what in zip(got, expected, names, strict=True):
        assert a.dtype == dtype and a.shape == e.shape, what
        assert_close(a, e, dtype, f"{label}{what}")
    for i, (g, g_ref) in enumerate(zip(fast.grads, reference.grads, strict=True)):
        assert_close(g, g_ref, dtype, f"{label}grads[{i}]")
    return got


def make_cells(rng, family, D, H, dtype):
    params = make_params(rng, family, D, H, dtype)
    fast_cls, ref_cls = CELLS[family]
    return fast_cls(*params), ref_cls(*[p.copy() for p in params]), params


@pytest.mark.parametrize("shape", CELL_SHAPES.values(), ids=CELL_SHAPES.keys())
@dtypes
@pytest.mark.parametrize("family", CELLS)
def test_cell_matches_reference(rng, family, dtype, shape):
    """RNN/LSTM/GRU cells: h (c), dx, dh_prev (dc_prev) and grads match the reference,
    over calls with another batch size; grads keep their identity; params are aliased."""
    N, D, H = shape
    fast, reference, params = make_cells(rng, family, D, H, dtype)
    assert all(p is q for p, q in zip(fast.params, params, strict=True))
    grads = list(fast.grads)
    for call, n in enumerate([N, N + 2]):
        args = [randn(rng, (n, w), dtype) for w in (D, H, H, H, H)]  # x, h, c, dh, dc
        compare_cells(fast, reference, family, args, args, dtype, f"call {call}: ")
    assert all(g is h for g, h in zip(fast.grads, grads, strict=True))


CELL_LAYOUTS = ["fortran", "stepped", "reversed-rows", "transposed"]


def cell_layout(rng, layout, shape):
    n, w = shape
    if layout == "fortran":
        return np.asfortranarray(rng.standard_normal((n, w)))
    if layout == "stepped":
        return rng.standard_normal((2 * n, 3 * w))[::2, 1::3]
    if layout == "reversed-rows":
        return rng.standard_normal((n, w))[::-1, ::-1]
    return rng.standard_normal((w, n)).T


@pytest.mark.parametrize("layout", CELL_LAYOUTS)
@pytest.mark.parametrize("family", CELLS)
def test_cell_strided_inputs(rng, family, layout):
    """Cells accept x, h_prev, c_prev, dh_next, dc_next as non-contiguous views."""
    N, D, H = 3, 2, 4
    fast, reference, _ = make_cells(rng, family, D, H, np.float64)
    args = [cell_layout(rng, layout, (N, w)) for w in (D, H, H, H, H)]
    assert not any(a.flags.c_contiguous for a in args)
    compare_cells(fast, reference, family, args, args, np.float64)


@pytest.mark.parametrize("in_dtype, dtype", MIXED.values(), ids=MIXED.keys())
@pytest.mark.parametrize("family", CELLS)
def test_cell_mixed_dtype_inputs(rng, family, in_dtype, dtype):
    """Cells compute in the params' dtype whatever float dtype the inputs have (the
    reference cell, which does not convert, gets the inputs converted)."""
    N, D, H = 3, 2, 4
    fast, reference, _ = make_cells(rng, family, D, H, dtype)
    args = [randn(rng, (N, w), in_dtype) for w in (D, H, H, H, H)]
    compare_cells(fast, reference, family, args, [a.astype(dtype) for a in args], dtype)


@pytest.mark.parametrize("family", CELLS)
def test_cell_outputs_are_fresh_and_grads_overwritten(rng, family):
    """A cell's outputs survive the next call, backward twice gives identical results,
    and grads pre-filled with garbage are overwritten."""
    N, D, H = 1, 2, 3  # N = 1: where a view of a workspace would be contiguous
    fast, reference, _ = make_cells(rng, family, D, H, np.float64)
    args = [randn(rng, (N, w)) for w in (D, H, H, H, H)]
    first = compare_cells(fast, reference, family, args, args, np.float64)
    kept = [a.copy() for a in first]
    grads = [g.copy() for g in fast.grads]
    for g in fast.grads:
        g[...] = 1e3
    dh, dc = args[3:]
    again = fast.backward(dh, dc) if family == "LSTM" else fast.backward(dh)
    for a, b in zip(again, first[-len(again) :], strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)
    for g, g_first in zip(fast.grads, grads, strict=True):
        np.testing.assert_array_equal(g, g_first)
    args2 = [randn(rng, (N, w)) for w in (D, H, H, H, H)]
    compare_cells(fast, reference, family, args2, args2, np.float64, "second call: ")
    for a, k in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, k)


ROUTE_PINS = [
    f"forward={forward},backward={backward}"
    for forward in _planner.FORWARD_ROUTES
    for backward in _planner.BACKWARD_ROUTES
]


@pytest.fixture(params=ROUTE_PINS)
def pinned_routes(request):
    """Every combination of the planner's routes, pinned for one test."""
    _planner.pin(request.param)
    yield request.param
    _planner.pin(os.environ.get(_planner.PLAN_VARIABLE, ""))


@pytest.mark.parametrize("shape_id", ["N7-T9-D5-H11", "N17-T8-D4-H9", "N3-T8-D4-H512"])
@dtypes
@time_layers
def test_every_route_matches_reference(rng, name, dtype, shape_id, pinned_routes):
    """Whichever orientation the planner picks for the per-step products, the numbers are
    the reference's."""
    N, T, D, H = SHAPES[shape_id]
    fast, reference, _, _ = make_pair(rng, name, D, H, dtype)
    xs = randn(rng, (N, T, D), dtype)
    dhs = randn(rng, (N, T, out_width(name, H)), dtype)
    run_both(fast, reference, xs, dhs, dtype)
    routes = _planner.plans()[(GATES[FAMILY[name]], N, T, H, np.dtype(dtype).str)]
    assert routes.source == "pinned"
    assert pinned_routes == f"forward={routes.forward},backward={routes.backward}"


# --------------------------------------------------------------------------------------
# LSTM and GRU steps split between the BLAS library's threads
# --------------------------------------------------------------------------------------


@pytest.fixture(params=["calling-thread", "blas-threads"])
def cell_threads(request, monkeypatch):
    """Where an LSTM or GRU step's element-wise work runs: on the calling thread, or
    (``blas-threads``) split by batch rows between the BLAS library's threads however
    small the step, which with one BLAS thread, or a BLAS without a thread dispatch, is
    the calling thread too."""
    limit = 1 if request.param == "blas-threads" else 2**62
    monkeypatch.setattr(layers_module, "CELL_VALUES_PER_THREAD", limit)
    return request.param


def _stateful_run(layer, xs_list, dhs_list):
    """Copies of everything a stateful chain of forward/backward calls produces."""
    record = []
    for xs, dhs in zip(xs_list, dhs_list, strict=True):
        record.append(layer.forward(xs).copy())
        record.append(layer.backward(dhs).copy())
        record += [g.copy() for g in layer.grads]
        for d in directions(layer):
            record += [d.h.copy(), d.dh.copy()] + ([d.c.copy()] if hasattr(d, "c") else [])
    return record


@pytest.mark.parametrize(
    "shape_id", ["N1", "T1", "H1", "N7-T9-D5-H11", "N25-T3-D4-H6", "N3-T8-D4-H512"]
)
@dtypes
@pytest.mark.parametrize("name", ["TimeLSTM", "TimeBiLSTM", "TimeGRU"])
def test_split_steps_match_reference(rng, name, dtype, shape_id, cell_threads):
    """Split by batch rows or not, a stateful chain of LSTM or GRU calls gives the
    reference's numbers, and exactly the bits of the calling thread alone."""
    N, T, D, H = SHAPES[shape_id]
    fast, reference, params, _ = make_pair(rng, name, D, H, dtype, stateful=True)
    xs_list = [randn(rng, (N, T, D), dtype) for _ in range(3)]
    dhs_list = [randn(rng, (N, T, out_width(name, H)), dtype) for _ in range(3)]
    for call, (xs, dhs) in enumerate(zip(xs_list, dhs_list, strict=True)):
        run_both(fast, reference, xs, dhs, dtype, label=f"call {call}: ")
    if cell_threads == "blas-threads":
        alone = TIME_LAYERS[name][0](*[p.copy() for p in params], stateful=True)
        split = TIME_LAYERS[name][0](*[p.copy() for p in params], stateful=True)
        split_record = _stateful_run(split, xs_list, dhs_list)
        layers_module.CELL_VALUES_PER_THREAD = 2**62  # restored by the fixture
        alone_record = _stateful_run(alone, xs_list, dhs_list)
        for i, (a, b) in enumerate(zip(split_record, alone_record, strict=True)):
            np.testing.assert_array_equal(a, b, err_msg=f"output {i}")


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
@dtypes
def test_cell_split_step_matches_reference(rng, family, dtype, cell_threads):
    """The single-step LSTM and GRU cells split their rows like the time layers."""
    N, D, H = 9, 5, 13
    fast, reference, _ = make_cells(rng, family, D, H, dtype)
    args = [randn(rng, (N, width), dtype) for width in (D, H, H, H, H)]  # x, h, c, dh, dc
    compare_cells(fast, reference, family, args, args, dtype)


@pytest.mark.parametrize(("family", "gates"), [("LSTM", 4), ("GRU", 3)])
@dtypes
def test_steps_split_between_blas_threads_above_the_limit(rng, family, gates, dtype, monkeypatch):
    """From ``2 * CELL_VALUES_PER_THREAD`` gate values per step (and two batch rows), both
    kernels hand each step's rows to the BLAS library's threads; below, and with one BLAS
    thread, they stay on the calling thread."""
    from threadpoolctl import threadpool_limits

    from fastrnn._blas import BINDING, blas_threads
    from fastrnn._tiles import DISPATCH, THREADS

    threads_used = []
    name = family.lower()
    for kernel_name in (f"{name}_forward", f"{name}_backward"):
        kernel = getattr(kernels_module, kernel_name)

        def spy(*args, kernel=kernel):
            cell_pool = args[-1]
            threads_used.append(int(cell_pool[0, THREADS]) if cell_pool[0, DISPATCH] else 1)
            return kernel(*args)

        monkeypatch.setattr(kernels_module, kernel_name, spy)
    D, H = 3, 8  # 8 * gates gate values per batch row
    limit = layers_module.CELL_VALUES_PER_THREAD
    big_N = -(-2 * limit // (gates * H))  # the fewest rows with 2 * limit gate values
    for N in (big_N - 1, big_N, 1):
        layer = getattr(fastrnn, f"Time{family}")(*make_params(rng, family, D, H, dtype))
        layer.forward(randn(rng, (N, 2, D), dtype))
        layer.backward(randn(rng, (N, 2, H), dtype))
    with threadpool_limits(1, user_api="blas"):
        layer.forward(randn(rng, (big_N, 2, D), dtype))
        layer.backward(randn(rng, (big_N, 2, H), dtype))
    split = min(blas_threads(), 2) if BINDING.thread_dispatch else 1
    assert threads_used == [1, 1, split, split, 1, 1, 1, 1]
