"""The oracle itself: fastrnn.reference checked against finite differences and the book.

Everything the fast layers are compared against comes from :mod:`fastrnn.reference`, so
its backward passes are checked here by central differences (float64), its forward passes
against the book's formulas written out by hand, and its dtype handling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _support import GATES, make_params

from fastrnn import reference as ref

#: Step of the central differences; truncation error ~EPS**2, rounding error ~1e-16 / EPS.
EPS = 1e-6
#: Tolerance of finite differences against the analytic gradients (float64).
FD_TOL = dict(rtol=1e-6, atol=1e-8)

CELLS = {"RNN": ref.RNN, "LSTM": ref.LSTM, "GRU": ref.GRU}
TIME_LAYERS = {"TimeRNN": ref.TimeRNN, "TimeLSTM": ref.TimeLSTM, "TimeGRU": ref.TimeGRU}
FAMILY = {"TimeRNN": "RNN", "TimeLSTM": "LSTM", "TimeGRU": "GRU"}

#: (N, T, D, H): a general case and edge shapes.
FD_SHAPES = {
    "N2-T3-D3-H4": (2, 3, 3, 4),
    "N1-T1-D1-H1": (1, 1, 1, 1),
    "N3-T4-D5-H2": (3, 4, 5, 2),
}


def numerical_grad(loss, x):
    """Central-difference gradient of ``loss()`` w.r.t. ``x``, which is perturbed in place."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        saved = x[idx]
        x[idx] = saved + EPS
        up = loss()
        x[idx] = saved - EPS
        down = loss()
        x[idx] = saved
        grad[idx] = (up - down) / (2 * EPS)
    return grad


def assert_fd(analytic, loss, x, name):
    """``analytic`` must match the finite-difference gradient of ``loss`` w.r.t. ``x``."""
    numeric = numerical_grad(loss, x)
    assert np.any(numeric != 0), f"{name}: the loss does not depend on it"
    np.testing.assert_allclose(analytic, numeric, err_msg=name, **FD_TOL)


# --------------------------------------------------------------------------------------
# Finite differences: cells
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "N, D, H", [(2, 3, 4), (1, 1, 1), (3, 5, 2)], ids=["N2-D3-H4", "all1", "N3-D5-H2"]
)
@pytest.mark.parametrize("family", ["RNN", "GRU"])
def test_cell_gradients_match_finite_differences(rng, family, N, D, H):
    """RNN/GRU cell backward: dx, dh_prev and every grad match central differences."""
    params = make_params(rng, family, D, H, np.float64)
    x = rng.standard_normal((N, D))
    h_prev = rng.standard_normal((N, H))
    w = rng.standard_normal((N, H))
    cell = CELLS[family](*params)

    def loss():
        return np.sum(cell.forward(x, h_prev) * w)

    loss()
    dx, dh_prev = cell.backward(w)
    grads = [g.copy() for g in cell.grads]
    assert_fd(dx, loss, x, "dx")
    assert_fd(dh_prev, loss, h_prev, "dh_prev")
    for name, p, g in zip(("dWx", "dWh", "db"), params, grads, strict=True):
        assert_fd(g, loss, p, name)


@pytest.mark.parametrize(
    "N, D, H", [(2, 3, 4), (1, 1, 1), (3, 5, 2)], ids=["N2-D3-H4", "all1", "N3-D5-H2"]
)
def test_lstm_cell_gradients_match_finite_differences(rng, N, D, H):
    """LSTM cell backward with both dh and dc: dx, dh_prev, dc_prev and grads match FD."""
    params = make_params(rng, "LSTM", D, H, np.float64)
    x = rng.standard_normal((N, D))
    h_prev = rng.standard_normal((N, H))
    c_prev = rng.standard_normal((N, H))
    wh = rng.standard_normal((N, H))
    wc = rng.standard_normal((N, H))
    cell = ref.LSTM(*params)

    def loss():
        h, c = cell.forward(x, h_prev, c_prev)
        return np.sum(h * wh) + np.sum(c * wc)

    loss()
    dx, dh_prev, dc_prev = cell.backward(wh, wc)
    grads = [g.copy() for g in cell.grads]
    assert_fd(dx, loss, x, "dx")
    assert_fd(dh_prev, loss, h_prev, "dh_prev")
    assert_fd(dc_prev, loss, c_prev, "dc_prev")
    for name, p, g in zip(("dWx", "dWh", "db"), params, grads, strict=True):
        assert_fd(g, loss, p, name)


# --------------------------------------------------------------------------------------
# Finite differences: time layers
# --------------------------------------------------------------------------------------


def assert_time_layer_fd(layer, loss, xs, w, params, param_names, states=()):
    """Run ``loss()`` and ``layer.backward(w)``, then check ``dxs``, every grad (named
    ``param_names``) and each state gradient in ``states`` against central differences.

    ``states`` holds ``(name, attribute getter, state array)``: the getter reads the
    layer's gradient of that initial state right after backward.
    """
    loss()
    dxs = layer.backward(w)
    grads = [g.copy() for g in layer.grads]
    state_grads = [(name, get(layer).copy(), x) for name, get, x in states]
    assert_fd(dxs, loss, xs, "dxs")
    for name, g, x in state_grads:
        assert_fd(g, loss, x, name)
    for pname, p, g in zip(param_names, params, grads, strict=True):
        assert_fd(g, loss, p, pname)


@pytest.mark.parametrize("shape", FD_SHAPES.values(), ids=FD_SHAPES.keys())
@pytest.mark.parametrize("name", TIME_LAYERS)
def test_time_layer_gradients_match_finite_differences(rng, name, shape):
    """TimeRNN/LSTM/GRU backward from a random initial state (set_state, stateful): dxs,
    every grad and dh match central differences of ``sum(hs * W)``."""
    N, T, D, H = shape
    params = make_params(rng, FAMILY[name], D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H))
    c0 = rng.standard_normal((N, H))
    w = rng.standard_normal((N, T, H))
    layer = TIME_LAYERS[name](*params, stateful=True)

    def loss():
        if name == "TimeLSTM":
            layer.set_state(h0, c0)
        else:
            layer.set_state(h0)
        return np.sum(layer.forward(xs) * w)

    dh = ("dh", lambda layer: layer.dh, h0)
    assert_time_layer_fd(layer, loss, xs, w, params, ("dWx", "dWh", "db"), [dh])


@pytest.mark.parametrize("name", TIME_LAYERS)
def test_time_layer_gradients_from_zero_state(rng, name):
    """Non-stateful (zero initial state) dxs and grads match central differences."""
    N, T, D, H = 2, 3, 2, 3
    params = make_params(rng, FAMILY[name], D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    w = rng.standard_normal((N, T, H))
    layer = TIME_LAYERS[name](*params)

    def loss():
        return np.sum(layer.forward(xs) * w)

    assert_time_layer_fd(layer, loss, xs, w, params, ("dWx", "dWh", "db"))


@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (1, 2, 1, 1)], ids=["N2-T3-D3-H2", "N1-T2-D1-H1"])
def test_time_lstm_gradients_depend_on_initial_c(rng, shape):
    """TimeLSTM dh and grads are right when only ``c`` starts non-zero (set_state(h0, c0))."""
    N, T, D, H = shape
    params = make_params(rng, "LSTM", D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    h0 = np.zeros((N, H))
    c0 = 2 * rng.standard_normal((N, H))
    w = rng.standard_normal((N, T, H))
    layer = ref.TimeLSTM(*params, stateful=True)

    def loss():
        layer.set_state(h0, c0)
        return np.sum(layer.forward(xs) * w)

    dh = ("dh", lambda layer: layer.dh, h0)
    assert_time_layer_fd(layer, loss, xs, w, params, ("dWx", "dWh", "db"), [dh])


@pytest.mark.parametrize("shape", [(2, 3, 3, 2), (1, 1, 1, 1)], ids=["N2-T3-D3-H2", "all1"])
def test_time_bilstm_gradients_match_finite_differences(rng, shape):
    """TimeBiLSTM: dxs, all six grads (in params order) and both directions' dh match FD."""
    N, T, D, H = shape
    params = make_params(rng, "LSTM", D, H, np.float64) + make_params(rng, "LSTM", D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    states = [rng.standard_normal((N, H)) for _ in range(4)]
    w = rng.standard_normal((N, T, 2 * H))
    layer = ref.TimeBiLSTM(*params, stateful=True)

    def loss():
        layer.forward_lstm.set_state(states[0], states[1])
        layer.backward_lstm.set_state(states[2], states[3])
        return np.sum(layer.forward(xs) * w)

    names = ("dWx1", "dWh1", "db1", "dWx2", "dWh2", "db2")
    state_grads = [
        ("forward_lstm.dh", lambda layer: layer.forward_lstm.dh, states[0]),
        ("backward_lstm.dh", lambda layer: layer.backward_lstm.dh, states[2]),
    ]
    assert_time_layer_fd(layer, loss, xs, w, params, names, state_grads)


# --------------------------------------------------------------------------------------
# The book's formulas, written out by hand
# --------------------------------------------------------------------------------------


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_time_rnn_two_steps_by_hand(rng):
    """TimeRNN, T=2: h1 = tanh(x0 Wx + h0 Wh + b), h2 = tanh(x1 Wx + h1 Wh + b)."""
    Wx, Wh, b = make_params(rng, "RNN", 3, 2, np.float64)
    xs = rng.standard_normal((2, 2, 3))
    h0 = rng.standard_normal((2, 2))
    layer = ref.TimeRNN(Wx, Wh, b, stateful=True)
    layer.set_state(h0)
    hs = layer.forward(xs)
    h1 = np.tanh(xs[:, 0] @ Wx + h0 @ Wh + b)
    h2 = np.tanh(xs[:, 1] @ Wx + h1 @ Wh + b)
    np.testing.assert_allclose(hs, np.stack([h1, h2], axis=1), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(layer.h, h2, rtol=1e-14, atol=1e-15)


def test_time_rnn_scalar_by_hand():
    """TimeRNN with D = H = N = 1 and round numbers, computed with math.tanh."""
    layer = ref.TimeRNN(np.array([[0.5]]), np.array([[-2.0]]), np.array([0.25]))
    hs = layer.forward(np.array([[[1.0], [3.0]]]))
    h1 = math.tanh(0.5 * 1.0 + 0.25)
    h2 = math.tanh(0.5 * 3.0 - 2.0 * h1 + 0.25)
    np.testing.assert_allclose(hs.ravel(), [h1, h2], rtol=1e-15)


def test_time_rnn_backward_scalar_by_hand():
    """TimeRNN, N = D = H = 1, T = 2: BPTT written out with the chain rule."""
    wx, wh, b = 0.5, -2.0, 0.25
    x1, x2, g1, g2 = 1.0, 3.0, 0.7, -1.3
    layer = ref.TimeRNN(np.array([[wx]]), np.array([[wh]]), np.array([b]))
    layer.forward(np.array([[[x1], [x2]]]))
    dxs = layer.backward(np.array([[[g1], [g2]]]))
    h1 = math.tanh(wx * x1 + b)
    h2 = math.tanh(wx * x2 + wh * h1 + b)
    da2 = g2 * (1 - h2**2)
    da1 = (g1 + da2 * wh) * (1 - h1**2)
    np.testing.assert_allclose(dxs.ravel(), [da1 * wx, da2 * wx], rtol=1e-14)
    np.testing.assert_allclose(layer.grads[0], [[da1 * x1 + da2 * x2]], rtol=1e-14)
    np.testing.assert_allclose(layer.grads[1], [[da2 * h1]], rtol=1e-14)
    np.testing.assert_allclose(layer.grads[2], [da1 + da2], rtol=1e-14)
    np.testing.assert_allclose(layer.dh, [[da1 * wh]], rtol=1e-14)


def test_time_lstm_two_steps_by_hand(rng):
    """TimeLSTM, T=2, gates packed f, g, i, o: c = f c_prev + g i, h = o tanh(c)."""
    H = 3
    Wx, Wh, b = make_params(rng, "LSTM", 2, H, np.float64)
    xs = rng.standard_normal((2, 2, 2))
    h, c = rng.standard_normal((2, H)), rng.standard_normal((2, H))
    layer = ref.TimeLSTM(Wx, Wh, b, stateful=True)
    layer.set_state(h, c)
    hs = layer.forward(xs)
    expected = []
    for t in range(2):
        A = xs[:, t] @ Wx + h @ Wh + b
        f, g, i, o = (
            _sig(A[:, :H]),
            np.tanh(A[:, H : 2 * H]),
            _sig(A[:, 2 * H : 3 * H]),
            _sig(A[:, 3 * H :]),
        )
        c = f * c + g * i
        h = o * np.tanh(c)
        expected.append(h)
    np.testing.assert_allclose(hs, np.stack(expected, axis=1), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.h, h, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.c, c, rtol=1e-13, atol=1e-15)


def test_time_gru_two_steps_by_hand(rng):
    """TimeGRU, T=2, gates z, r, h~ with the reset applied before the product with Whh."""
    H = 3
    Wx, Wh, b = make_params(rng, "GRU", 2, H, np.float64)
    xs = rng.standard_normal((2, 2, 2))
    h = rng.standard_normal((2, H))
    layer = ref.TimeGRU(Wx, Wh, b, stateful=True)
    layer.set_state(h)
    hs = layer.forward(xs)
    expected = []
    for t in range(2):
        x = xs[:, t]
        z = _sig(x @ Wx[:, :H] + h @ Wh[:, :H] + b[:H])
        r = _sig(x @ Wx[:, H : 2 * H] + h @ Wh[:, H : 2 * H] + b[H : 2 * H])
        h_hat = np.tanh(x @ Wx[:, 2 * H :] + (r * h) @ Wh[:, 2 * H :] + b[2 * H :])
        h = (1 - z) * h + z * h_hat
        expected.append(h)
    np.testing.assert_allclose(hs, np.stack(expected, axis=1), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(layer.h, h, rtol=1e-13, atol=1e-15)


def test_time_bilstm_is_two_lstms_concatenated(rng):
    """TimeBiLSTM hs = [LSTM1(xs), reversed LSTM2(reversed xs)] along the last axis."""
    N, T, D, H = 2, 4, 3, 2
    p1 = make_params(rng, "LSTM", D, H, np.float64)
    p2 = make_params(rng, "LSTM", D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    hs = ref.TimeBiLSTM(*p1, *p2).forward(xs)
    fwd = ref.TimeLSTM(*p1).forward(xs)
    bwd = ref.TimeLSTM(*p2).forward(np.ascontiguousarray(xs[:, ::-1]))[:, ::-1]
    np.testing.assert_array_equal(hs[..., :H], fwd)
    np.testing.assert_array_equal(hs[..., H:], bwd)
    # the last backward-direction output (t = T-1) has seen only x_{T-1}
    one_step = ref.TimeLSTM(*p2).forward(xs[:, T - 1 :])
    np.testing.assert_allclose(hs[:, T - 1, H:], one_step[:, 0], rtol=1e-14)


# --------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("xs_dtype", [np.float32, np.float64], ids=["xs-f32", "xs-f64"])
@pytest.mark.parametrize("name", [*TIME_LAYERS, "TimeBiLSTM"])
def test_time_layers_compute_in_float32(rng, name, xs_dtype):
    """float32 params give float32 hs, dxs, grads, h, dh, even from float64 xs; and the
    values agree with the float64 computation to float32 precision."""
    N, T, D, H = 2, 3, 3, 4
    family = FAMILY.get(name, "LSTM")
    n_sets = 2 if name == "TimeBiLSTM" else 1
    p64 = [p for _ in range(n_sets) for p in make_params(rng, family, D, H, np.float64)]
    p32 = [p.astype(np.float32) for p in p64]
    cls = ref.TimeBiLSTM if name == "TimeBiLSTM" else TIME_LAYERS[name]
    xs = rng.standard_normal((N, T, D)).astype(xs_dtype)
    dhs = rng.standard_normal((N, T, n_sets * H)).astype(xs_dtype)
    layer32, layer64 = cls(*p32), cls(*p64)
    hs32, hs64 = layer32.forward(xs), layer64.forward(xs.astype(np.float32).astype(np.float64))
    dxs32 = layer32.backward(dhs)
    dxs64 = layer64.backward(dhs.astype(np.float32).astype(np.float64))
    assert hs32.dtype == np.float32
    assert dxs32.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer32.grads)
    lstms = [layer32.forward_lstm, layer32.backward_lstm] if n_sets == 2 else [layer32]
    for lstm in lstms:
        assert lstm.h.dtype == np.float32
        assert lstm.dh.dtype == np.float32
        if hasattr(lstm, "c"):
            assert lstm.c.dtype == np.float32
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hs32, hs64, **tol)
    np.testing.assert_allclose(dxs32, dxs64, **tol)
    for g32, g64 in zip(layer32.grads, layer64.grads, strict=True):
        np.testing.assert_allclose(g32, g64, **tol)


@pytest.mark.parametrize("family", sorted(GATES))
def test_cells_keep_float32(rng, family):
    """Cells with float32 params and inputs return float32 states, dx and grads, equal to
    the float64 computation to float32 precision."""
    N, D, H = 2, 3, 4
    p32 = make_params(rng, family, D, H, np.float32)
    x, h, dh = (rng.standard_normal((N, w)).astype(np.float32) for w in (D, H, H))
    results = {}
    for dtype in (np.float32, np.float64):
        cell = CELLS[family](*[p.astype(dtype) for p in p32])
        args = [a.astype(dtype) for a in (x, h)]
        if family == "LSTM":
            out = cell.forward(*args, args[1])
            back = cell.backward(dh.astype(dtype), dh.astype(dtype))
        else:
            out = (cell.forward(*args),)
            back = cell.backward(dh.astype(dtype))
        results[dtype] = [*out, *back, *cell.grads]
    assert [a.dtype for a in results[np.float32]] == [np.float32] * len(results[np.float32])
    for a32, a64 in zip(results[np.float32], results[np.float64], strict=True):
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5)
