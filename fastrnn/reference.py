"""Plain-NumPy reference layers: the oracle for tests and the baseline for benchmarks.

These are the layers of *Deep Learning from Scratch 2*, written to be read: one cell object
per time step, one line per formula, a Python loop over time. They are dtype-generic (all
work happens in the parameters' dtype) and follow the same API as the fast layers in
:mod:`fastrnn.layers`. Nothing here is tuned for speed.

Shapes: ``N`` batch, ``T`` time steps, ``D`` input size, ``H`` hidden size.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    """The logistic function ``1 / (1 + exp(-x))``, as in the book."""
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x gives exactly 0
        return 1 / (1 + np.exp(-x))


def _zero_grads(params):
    return [np.zeros_like(p) for p in params]


def _as_param_dtype(array, params):
    return np.asarray(array, dtype=params[0].dtype)


# --------------------------------------------------------------------------------------
# Plain RNN
# --------------------------------------------------------------------------------------


class RNN:
    """One plain RNN step: ``h_next = tanh(h_prev @ Wh + x @ Wx + b)``.

    Parameters
    ----------
    Wx : (D, H) array
    Wh : (H, H) array
    b : (H,) array
    """

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = _zero_grads(self.params)
        self.cache = None

    def forward(self, x, h_prev):
        """``x`` (N, D), ``h_prev`` (N, H) -> ``h_next`` (N, H)."""
        Wx, Wh, b = self.params
        t = np.dot(h_prev, Wh) + np.dot(x, Wx) + b
        h_next = np.tanh(t)
        self.cache = (x, h_prev, h_next)
        return h_next

    def backward(self, dh_next):
        """``dh_next`` (N, H) -> ``(dx (N, D), dh_prev (N, H))``; sets ``grads``."""
        Wx, Wh, b = self.params
        x, h_prev, h_next = self.cache
        dt = dh_next * (1 - h_next**2)
        db = np.sum(dt, axis=0)
        dWh = np.dot(h_prev.T, dt)
        dh_prev = np.dot(dt, Wh.T)
        dWx = np.dot(x.T, dt)
        dx = np.dot(dt, Wx.T)
        self.grads[0][...] = dWx
        self.grads[1][...] = dWh
        self.grads[2][...] = db
        return dx, dh_prev


# --------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------


class LSTM:
    """One LSTM step, gates packed ``f, g, i, o`` along the last axis of ``Wx``, ``Wh``, ``b``.

    Parameters
    ----------
    Wx : (D, 4H) array
    Wh : (H, 4H) array
    b : (4H,) array
    """

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = _zero_grads(self.params)
        self.cache = None

    def forward(self, x, h_prev, c_prev):
        """``x`` (N, D), ``h_prev``, ``c_prev`` (N, H) -> ``(h_next, c_next)``, each (N, H)."""
        Wx, Wh, b = self.params
        H = h_prev.shape[1]
        A = np.dot(x, Wx) + np.dot(h_prev, Wh) + b
        f = sigmoid(A[:, :H])
        g = np.tanh(A[:, H : 2 * H])
        i = sigmoid(A[:, 2 * H : 3 * H])
        o = sigmoid(A[:, 3 * H :])
        c_next = f * c_prev + g * i
        h_next = o * np.tanh(c_next)
        self.cache = (x, h_prev, c_prev, i, f, g, o, c_next)
        return h_next, c_next

    def backward(self, dh_next, dc_next):
        """``dh_next``, ``dc_next`` (N, H) -> ``(dx (N, D), dh_prev, dc_prev)``; sets ``grads``."""
        Wx, Wh, b = self.params
        x, h_prev, c_prev, i, f, g, o, c_next = self.cache
        tanh_c_next = np.tanh(c_next)
        ds = dc_next + (dh_next * o) * (1 - tanh_c_next**2)
        dc_prev = ds * f
        di = ds * g * i * (1 - i)
        df = ds * c_prev * f * (1 - f)
        do = dh_next * tanh_c_next * o * (1 - o)
        dg = ds * i * (1 - g**2)
        dA = np.hstack((df, dg, di, do))
        self.grads[0][...] = np.dot(x.T, dA)
        self.grads[1][...] = np.dot(h_prev.T, dA)
        self.grads[2][...] = dA.sum(axis=0)
        dx = np.dot(dA, Wx.T)
        dh_prev = np.dot(dA, Wh.T)
        return dx, dh_prev, dc_prev


# --------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------


class GRU:
    """One GRU step, gates packed ``z, r, h~``; the reset gate scales ``h`` before ``Whh``.

    Parameters
    ----------
    Wx : (D, 3H) array
    Wh : (H, 3H) array
    b : (3H,) array
    """

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = _zero_grads(self.params)
        self.cache = None

    def forward(self, x, h_prev):
        """``x`` (N, D), ``h_prev`` (N, H) -> ``h_next`` (N, H)."""
        Wx, Wh, b = self.params
        H = Wh.shape[0]
        Wxz, Wxr, Wxh = Wx[:, :H], Wx[:, H : 2 * H], Wx[:, 2 * H :]
        Whz, Whr, Whh = Wh[:, :H], Wh[:, H : 2 * H], Wh[:, 2 * H :]
        bz, br, bh = b[:H], b[H : 2 * H], b[2 * H :]
        z = sigmoid(np.dot(x, Wxz) + np.dot(h_prev, Whz) + bz)
        r = sigmoid(np.dot(x, Wxr) + np.dot(h_prev, Whr) + br)
        h_hat = np.tanh(np.dot(x, Wxh) + np.dot(r * h_prev, Whh) + bh)
        h_next = (1 - z) * h_prev + z * h_hat
        self.cache = (x, h_prev, z, r, h_hat)
        return h_next

    def backward(self, dh_next):
        """``dh_next`` (N, H) -> ``(dx (N, D), dh_prev (N, H))``; sets ``grads``."""
        Wx, Wh, b = self.params
        H = Wh.shape[0]
        Wxz, Wxr, Wxh = Wx[:, :H], Wx[:, H : 2 * H], Wx[:, 2 * H :]
        Whz, Whr, Whh = Wh[:, :H], Wh[:, H : 2 * H], Wh[:, 2 * H :]
        x, h_prev, z, r, h_hat = self.cache

        # candidate h~ (tanh)
        dt_h = dh_next * z * (1 - h_hat**2)
        dhr = np.dot(dt_h, Whh.T)
        dh_prev = dh_next * (1 - z) + r * dhr
        # update gate z
        dt_z = dh_next * (h_hat - h_prev) * z * (1 - z)
        # reset gate r
        dt_r = dhr * h_prev * r * (1 - r)

        dh_prev += np.dot(dt_z, Whz.T) + np.dot(dt_r, Whr.T)
        dx = np.dot(dt_z, Wxz.T) + np.dot(dt_r, Wxr.T) + np.dot(dt_h, Wxh.T)
        self.grads[0][...] = np.hstack((np.dot(x.T, dt_z), np.dot(x.T, dt_r), np.dot(x.T, dt_h)))
        self.grads[1][...] = np.hstack(
            (np.dot(h_prev.T, dt_z), np.dot(h_prev.T, dt_r), np.dot((r * h_prev).T, dt_h))
        )
        self.grads[2][...] = np.hstack((dt_z.sum(axis=0), dt_r.sum(axis=0), dt_h.sum(axis=0)))
        return dx, dh_prev


# --------------------------------------------------------------------------------------
# Time layers: one cell per step, the book's loop over t
# --------------------------------------------------------------------------------------


class _TimeLayer:
    """The loop over time shared by TimeRNN and TimeGRU (cells with a state ``h`` only)."""

    cell = None  # the cell class, set by subclasses

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = _zero_grads(self.params)
        self.layers = None
        self.h = None
        self.dh = None
        self.stateful = stateful

    def set_state(self, h):
        self.h = h

    def reset_state(self):
        self.h = None

    def forward(self, xs):
        """``xs`` (N, T, D) -> ``hs`` (N, T, H)."""
        Wx, Wh, b = self.params
        N, T, D = xs.shape
        H = Wh.shape[0]
        xs = _as_param_dtype(xs, self.params)
        self.layers = []
        hs = np.empty((N, T, H), dtype=Wx.dtype)
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=Wx.dtype)
        h = _as_param_dtype(self.h, self.params)
        for t in range(T):
            layer = self.cell(*self.params)
            h = layer.forward(xs[:, t, :], h)
            hs[:, t, :] = h
            self.layers.append(layer)
        self.h = h
        return hs

    def backward(self, dhs):
        """``dhs`` (N, T, H) -> ``dxs`` (N, T, D); sets ``grads`` and ``dh``."""
        Wx, Wh, b = self.params
        N, T, H = dhs.shape
        D = Wx.shape[0]
        dhs = _as_param_dtype(dhs, self.params)
        dxs = np.empty((N, T, D), dtype=Wx.dtype)
        dh = np.zeros((N, H), dtype=Wx.dtype)
        grads = _zero_grads(self.params)
        for t in reversed(range(T)):
            layer = self.layers[t]
            dx, dh = layer.backward(dhs[:, t, :] + dh)
            dxs[:, t, :] = dx
            for i, grad in enumerate(layer.grads):
                grads[i] += grad
        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        self.dh = dh
        return dxs


class TimeRNN(_TimeLayer):
    """A plain RNN over ``T`` steps: ``Wx`` (D, H), ``Wh`` (H, H), ``b`` (H,)."""

    cell = RNN


class TimeGRU(_TimeLayer):
    """A GRU over ``T`` steps: ``Wx`` (D, 3H), ``Wh`` (H, 3H), ``b`` (3H,)."""

    cell = GRU


class TimeLSTM:
    """An LSTM over ``T`` steps: ``Wx`` (D, 4H), ``Wh`` (H, 4H), ``b`` (4H,)."""

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = _zero_grads(self.params)
        self.layers = None
        self.h, self.c = None, None
        self.dh = None
        self.stateful = stateful

    def set_state(self, h, c=None):
        self.h, self.c = h, c

    def reset_state(self):
        self.h, self.c = None, None

    def forward(self, xs):
        """``xs`` (N, T, D) -> ``hs`` (N, T, H)."""
        Wx, Wh, b = self.params
        N, T, D = xs.shape
        H = Wh.shape[0]
        xs = _as_param_dtype(xs, self.params)
        self.layers = []
        hs = np.empty((N, T, H), dtype=Wx.dtype)
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=Wx.dtype)
        if not self.stateful or self.c is None:
            self.c = np.zeros((N, H), dtype=Wx.dtype)
        h = _as_param_dtype(self.h, self.params)
        c = _as_param_dtype(self.c, self.params)
        for t in range(T):
            layer = LSTM(*self.params)
            h, c = layer.forward(xs[:, t, :], h, c)
            hs[:, t, :] = h
            self.layers.append(layer)
        self.h, self.c = h, c
        return hs

    def backward(self, dhs):
        """``dhs`` (N, T, H) -> ``dxs`` (N, T, D); sets ``grads`` and ``dh``."""
        Wx, Wh, b = self.params
        N, T, H = dhs.shape
        D = Wx.shape[0]
        dhs = _as_param_dtype(dhs, self.params)
        dxs = np.empty((N, T, D), dtype=Wx.dtype)
        dh = np.zeros((N, H), dtype=Wx.dtype)
        dc = np.zeros((N, H), dtype=Wx.dtype)
        grads = _zero_grads(self.params)
        for t in reversed(range(T)):
            layer = self.layers[t]
            dx, dh, dc = layer.backward(dhs[:, t, :] + dh, dc)
            dxs[:, t, :] = dx
            for i, grad in enumerate(layer.grads):
                grads[i] += grad
        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        self.dh = dh
        return dxs


class TimeBiLSTM:
    """Two LSTMs, one reading ``xs`` forwards and one backwards; outputs concatenated.

    ``hs`` is (N, T, 2H): ``hs[..., :H]`` from the forward LSTM, ``hs[..., H:]`` from the
    backward one, re-aligned so that ``hs[:, t]`` belongs to input step ``t``.
    """

    lstm = TimeLSTM

    def __init__(self, Wx1, Wh1, b1, Wx2, Wh2, b2, stateful=False):
        self.forward_lstm = self.lstm(Wx1, Wh1, b1, stateful)
        self.backward_lstm = self.lstm(Wx2, Wh2, b2, stateful)
        self.params = self.forward_lstm.params + self.backward_lstm.params
        self.grads = self.forward_lstm.grads + self.backward_lstm.grads

    def forward(self, xs):
        """``xs`` (N, T, D) -> ``hs`` (N, T, 2H)."""
        o1 = self.forward_lstm.forward(xs)
        o2 = self.backward_lstm.forward(xs[:, ::-1])
        return np.concatenate((o1, o2[:, ::-1]), axis=2)

    def backward(self, dhs):
        """``dhs`` (N, T, 2H) -> ``dxs`` (N, T, D); sets ``grads``."""
        H = dhs.shape[2] // 2
        dxs1 = self.forward_lstm.backward(dhs[:, :, :H])
        dxs2 = self.backward_lstm.backward(dhs[:, :, H:][:, ::-1])
        return dxs1 + dxs2[:, ::-1]

    def reset_state(self):
        self.forward_lstm.reset_state()
        self.backward_lstm.reset_state()
