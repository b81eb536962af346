"""Plain-NumPy reference layers: the oracle for tests and the baseline for benchmarks.

These are the layers of *Deep Learning from Scratch 2*, written to be read: one cell object
per time step, one line per formula, a Python loop over time. They are dtype-generic (all
work happens in the parameters' dtype or, for layers without parameters, in the input's
float dtype) and follow the same API as the fast layers in :mod:`fastrnn.layers`. Nothing
here is tuned for speed: they cost what the book's layers cost.

Shapes: ``N`` batch, ``T`` time steps, ``D`` input size, ``H`` hidden size, ``V``
vocabulary size, ``M`` output size of an affine layer.
"""

from __future__ import annotations

import numpy as np


def sigmoid(x):
    """The logistic function ``1 / (1 + exp(-x))``, as in the book."""
    with np.errstate(over="ignore"):  # exp(-x) = inf for very negative x gives exactly 0
        return 1 / (1 + np.exp(-x))


def softmax(x):
    """Softmax over the last axis (each row of a 2-D ``x``), as in the book.

    The row maximum is subtracted first so that ``exp`` cannot overflow.
    """
    x = x - x.max(axis=-1, keepdims=True)
    x = np.exp(x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _cross_entropy_error(y, t):
    """The book's ``cross_entropy_error``: mean over rows of ``-log(y[n, t[n]] + 1e-7)``.

    ``y`` (N, C) probabilities, ``t`` (N,) integer ids. The ``1e-7`` is the book's guard
    against ``log(0)``, kept so that the numbers are the book's.
    """
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


def _float_dtype(*arrays):
    """The dtype layers without parameters compute in: float32 or float64 as given (the
    common dtype of ``arrays``), float32 for anything else (integers, bool, float16)."""
    dtype = np.result_type(*(np.asarray(a) for a in arrays))
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)


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


# --------------------------------------------------------------------------------------
# Embedding and affine layers
# --------------------------------------------------------------------------------------


class Embedding:
    """One embedding lookup: row ``idx[n]`` of ``W`` for each sample ``n``.

    Parameters
    ----------
    W : (V, D) array
        One row per word id.
    """

    def __init__(self, W):
        self.params = [W]
        self.grads = _zero_grads(self.params)
        self.idx = None

    def forward(self, idx):
        """``idx`` (N,) integer ids -> ``W[idx]`` (N, D)."""
        (W,) = self.params
        self.idx = idx
        return W[idx]

    def backward(self, dout):
        """``dout`` (N, D) -> None; sets ``grads[0]`` (V, D), ``dout`` summed per id."""
        (dW,) = self.grads
        dW[...] = 0
        # np.add.at rather than dW[idx] += dout: a repeated id must add up, not overwrite
        np.add.at(dW, self.idx, _as_param_dtype(dout, self.params))
        return None


class TimeEmbedding:
    """Embedding lookups over ``T`` steps, one :class:`Embedding` per step as in the book.

    Each step's layer allocates and fills a gradient as large as ``W``; ``backward`` adds
    them up. That is the book's cost, which this reference keeps.

    Parameters
    ----------
    W : (V, D) array
    """

    def __init__(self, W):
        self.params = [W]
        self.grads = _zero_grads(self.params)
        self.layers = None
        self.W = W

    def forward(self, xs):
        """``xs`` (N, T) integer ids -> ``out`` (N, T, D), ``out[n, t] = W[xs[n, t]]``."""
        xs = np.asarray(xs)
        N, T = xs.shape
        D = self.W.shape[1]
        out = np.empty((N, T, D), dtype=self.W.dtype)
        self.layers = []
        for t in range(T):
            layer = Embedding(self.W)
            out[:, t, :] = layer.forward(xs[:, t])
            self.layers.append(layer)
        return out

    def backward(self, dout):
        """``dout`` (N, T, D) -> None; sets ``grads[0]`` (V, D), ``dout`` summed per id."""
        T = dout.shape[1]
        grad = np.zeros_like(self.W)
        for t in range(T):
            layer = self.layers[t]
            layer.backward(dout[:, t, :])
            grad += layer.grads[0]
        self.grads[0][...] = grad
        return None


class TimeAffine:
    """``x @ W + b`` at every step, computed as one product over the ``N * T`` rows.

    Parameters
    ----------
    W : (D, M) array
        Used as given, views included: with weight tying the book passes ``embed_W.T``.
        ``grads[0]`` is allocated with ``W``'s memory layout.
    b : (M,) array
    """

    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = _zero_grads(self.params)
        self.x = None

    def forward(self, x):
        """``x`` (N, T, D) -> ``out`` (N, T, M)."""
        W, b = self.params
        N, T, D = x.shape
        x = _as_param_dtype(x, self.params)
        out = np.dot(x.reshape(N * T, D), W) + b
        self.x = x
        return out.reshape(N, T, -1)

    def backward(self, dout):
        """``dout`` (N, T, M) -> ``dx`` (N, T, D); sets ``grads`` (``dW``, ``db``)."""
        W, b = self.params
        x = self.x
        N, T, D = x.shape
        dout = _as_param_dtype(dout, self.params).reshape(N * T, -1)
        rx = x.reshape(N * T, D)
        self.grads[0][...] = np.dot(rx.T, dout)
        self.grads[1][...] = np.sum(dout, axis=0)
        dx = np.dot(dout, W.T)
        return dx.reshape(N, T, D)


# --------------------------------------------------------------------------------------
# Loss layers
# --------------------------------------------------------------------------------------


class TimeSoftmaxWithLoss:
    """Softmax cross-entropy at every step, averaged over the positions not ignored.

    ``loss = -mean(log(softmax(xs[n, t])[ts[n, t]]))`` over the positions where
    ``ts != ignore_label``; ignored positions contribute neither loss nor gradient. As in
    the book there is no ``1e-7`` in this log.

    When every position is ignored there is nothing to average over: the loss is ``nan``
    and the gradient all zeros, without a NumPy warning (the book divides 0 by 0).
    Unlike the book, ``backward`` leaves the forward cache intact, so it can be repeated.
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.cache = None
        self.ignore_label = -1

    def forward(self, xs, ts):
        """``xs`` (N, T, V) scores, ``ts`` (N, T) integer ids or (N, T, V) one-hot -> loss.

        Returns
        -------
        float
        """
        xs = np.asarray(xs)
        xs = xs.astype(_float_dtype(xs), copy=False)
        ts = np.asarray(ts)
        N, T, V = xs.shape
        if ts.ndim == 3:  # one-hot targets: the id is where the 1 is
            ts = ts.argmax(axis=2)
        ts = ts.reshape(N * T)
        mask = ts != self.ignore_label
        count = int(mask.sum())
        ys = softmax(xs.reshape(N * T, V))
        # logs only at real targets (the book takes them everywhere, then multiplies by the
        # mask): an ignored position's log may be -inf, and -inf * 0 would make the loss nan
        ls = np.zeros(N * T, dtype=ys.dtype)
        ls[mask] = np.log(ys[np.arange(N * T)[mask], ts[mask]])
        loss = -float(np.sum(ls)) / count if count else float("nan")
        self.cache = (ts, ys, mask, count, (N, T, V))
        return loss

    def backward(self, dout=1):
        """``dout`` scalar -> ``dxs`` (N, T, V) = ``(softmax(xs) - onehot(ts)) * dout / count``
        at the ``count`` positions not ignored, 0 at the others."""
        ts, ys, mask, count, (N, T, V) = self.cache
        if count == 0:
            return np.zeros((N, T, V), dtype=ys.dtype)
        dx = ys.copy()  # the book subtracts from its cached ys, so a second call would be wrong
        dx[np.arange(N * T)[mask], ts[mask]] -= 1
        dx *= dout
        dx /= count
        dx *= mask[:, np.newaxis]
        return dx.reshape(N, T, V)


class SigmoidWithLoss:
    """Sigmoid and binary cross-entropy for one step, as the book's layer.

    ``loss = -mean(log(p + 1e-7))`` with ``p = sigmoid(x)`` where the label is 1 and
    ``1 - sigmoid(x)`` where it is 0; the ``1e-7`` is the book's (see
    ``cross_entropy_error``). The gradient is the book's ``(sigmoid(x) - t) / N``, which
    ignores the ``1e-7``.
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.loss = None
        self.y = None  # sigmoid(x)
        self.t = None  # labels

    def forward(self, x, t):
        """``x`` (N,) scores, ``t`` (N,) integer labels 0 or 1 -> loss.

        Returns
        -------
        float
        """
        x = np.asarray(x)
        x = x.astype(_float_dtype(x), copy=False)
        self.t = np.asarray(t)
        self.y = sigmoid(x)
        # column 0 is P(label 0), column 1 is P(label 1): the label indexes its probability
        self.loss = float(_cross_entropy_error(np.c_[1 - self.y, self.y], self.t))
        return self.loss

    def backward(self, dout=1):
        """``dout`` scalar -> ``dx`` (N,) = ``(sigmoid(x) - t) * dout / N``."""
        batch_size = self.t.shape[0]
        dx = self.y - self.t.astype(self.y.dtype)
        dx *= dout
        dx /= batch_size
        return dx


class TimeSigmoidWithLoss:
    """:class:`SigmoidWithLoss` at every step, one layer per step; losses averaged over T.

    ``loss = sum over t of SigmoidWithLoss(xs[:, t], ts[:, t]) / T``, so
    ``dxs = (sigmoid(xs) - ts) * dout / (T * N)``.
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.xs_shape = None
        self.dtype = None
        self.layers = None

    def forward(self, xs, ts):
        """``xs`` (N, T) scores, ``ts`` (N, T) integer labels 0 or 1 -> loss.

        Returns
        -------
        float
        """
        xs = np.asarray(xs)
        xs = xs.astype(_float_dtype(xs), copy=False)
        ts = np.asarray(ts)
        N, T = xs.shape
        self.xs_shape, self.dtype = xs.shape, xs.dtype
        self.layers = []
        loss = 0.0
        for t in range(T):
            layer = SigmoidWithLoss()
            loss += layer.forward(xs[:, t], ts[:, t])
            self.layers.append(layer)
        return loss / T

    def backward(self, dout=1):
        """``dout`` scalar -> ``dxs`` (N, T)."""
        N, T = self.xs_shape
        dxs = np.empty(self.xs_shape, dtype=self.dtype)
        dout = dout * (1 / T)
        for t in range(T):
            dxs[:, t] = self.layers[t].backward(dout)
        return dxs


# --------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------


class TimeDropout:
    """Inverted dropout over a whole sequence, active while ``train_flg`` is True.

    The keep mask is drawn from NumPy's global random state (``np.random.rand``) exactly as
    in the book, so a run seeded with ``np.random.seed`` reproduces the book's masks. The
    mask is in the input's float dtype (float32 for non-float inputs); for float32 it is the
    book's mask exactly.

    Parameters
    ----------
    dropout_ratio : float
        Probability that an element is dropped. Kept elements are scaled by
        ``1 / (1 - dropout_ratio)`` so that the output has the input's expectation.
    """

    def __init__(self, dropout_ratio=0.5):
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.train_flg = True

    def forward(self, xs):
        """``xs`` (N, T, D), or any shape -> ``xs * mask``; ``xs`` itself when not training."""
        if not self.train_flg:
            return xs
        xs = np.asarray(xs)
        dtype = _float_dtype(xs)
        flg = np.random.rand(*xs.shape) > self.dropout_ratio
        self.mask = flg.astype(dtype) * (1 / (1 - self.dropout_ratio))
        return xs.astype(dtype, copy=False) * self.mask

    def backward(self, dout):
        """``dout`` (xs's shape) -> ``dout * mask``, the mask of the last training forward."""
        return np.asarray(dout, dtype=self.mask.dtype) * self.mask


# --------------------------------------------------------------------------------------
# Attention (the book's chapter 8)
# --------------------------------------------------------------------------------------


class Softmax:
    """The book's softmax layer over the last axis; used by :class:`AttentionWeight`."""

    def __init__(self):
        self.params, self.grads = [], []
        self.out = None

    def forward(self, x):
        """``x`` (N, T) -> ``softmax(x)`` (N, T), one distribution per row."""
        x = np.asarray(x)
        self.out = softmax(x.astype(_float_dtype(x), copy=False))
        return self.out

    def backward(self, dout):
        """``dout`` (N, T) -> ``dx`` (N, T) = ``y * (dout - sum(y * dout))`` per row."""
        y = self.out
        dx = y * np.asarray(dout, dtype=y.dtype)
        sumdx = np.sum(dx, axis=-1, keepdims=True)
        dx -= y * sumdx
        return dx


class WeightSum:
    """The context vector: the encoder states ``hs`` summed with the weights ``a``."""

    def __init__(self):
        self.params, self.grads = [], []
        self.cache = None

    def forward(self, hs, a):
        """``hs`` (N, T, H), ``a`` (N, T) -> ``c`` (N, H) = ``sum over t of a[:, t] hs[:, t]``."""
        dtype = _float_dtype(hs, a)
        hs, a = np.asarray(hs, dtype=dtype), np.asarray(a, dtype=dtype)
        N, T, H = hs.shape
        ar = a.reshape(N, T, 1)
        c = np.sum(hs * ar, axis=1)
        self.cache = (hs, ar)
        return c

    def backward(self, dc):
        """``dc`` (N, H) -> ``(dhs (N, T, H), da (N, T))``."""
        hs, ar = self.cache
        N, T, H = hs.shape
        # repeated over T as in the book (broadcasting would do), to cost what the book does
        dt = np.asarray(dc, dtype=hs.dtype).reshape(N, 1, H).repeat(T, axis=1)
        dhs = dt * ar
        da = np.sum(dt * hs, axis=2)
        return dhs, da


class AttentionWeight:
    """Attention weights: softmax over the encoder steps of the dot products ``hs[:, t] . h``."""

    def __init__(self):
        self.params, self.grads = [], []
        self.softmax = Softmax()
        self.cache = None

    def forward(self, hs, h):
        """``hs`` (N, T, H), ``h`` (N, H) -> ``a`` (N, T), each row summing to 1."""
        dtype = _float_dtype(hs, h)
        hs, h = np.asarray(hs, dtype=dtype), np.asarray(h, dtype=dtype)
        N, T, H = hs.shape
        hr = h.reshape(N, 1, H)
        s = np.sum(hs * hr, axis=2)
        a = self.softmax.forward(s)
        self.cache = (hs, hr)
        return a

    def backward(self, da):
        """``da`` (N, T) -> ``(dhs (N, T, H), dh (N, H))``."""
        hs, hr = self.cache
        N, T, H = hs.shape
        ds = self.softmax.backward(da)
        # repeated over H as in the book (broadcasting would do), to cost what the book does
        dt = ds.reshape(N, T, 1).repeat(H, axis=2)
        dhs = dt * hr
        dh = np.sum(dt * hs, axis=1)
        return dhs, dh


class Attention:
    """One decoder step of attention: :class:`AttentionWeight`, then :class:`WeightSum`.

    ``attention_weight`` keeps the last weights ``a`` (N, T).
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.attention_weight_layer = AttentionWeight()
        self.weight_sum_layer = WeightSum()
        self.attention_weight = None

    def forward(self, hs, h):
        """``hs`` (N, T, H) encoder states, ``h`` (N, H) decoder state -> context (N, H)."""
        a = self.attention_weight_layer.forward(hs, h)
        out = self.weight_sum_layer.forward(hs, a)
        self.attention_weight = a
        return out

    def backward(self, dout):
        """``dout`` (N, H) -> ``(dhs (N, T, H), dh (N, H))``."""
        dhs0, da = self.weight_sum_layer.backward(dout)
        dhs1, dh = self.attention_weight_layer.backward(da)
        # hs feeds both the weights and the weighted sum
        return dhs0 + dhs1, dh


class TimeAttention:
    """:class:`Attention` for every decoder step, one layer per step as in the book.

    ``attention_weights`` is the list of the ``Td`` weight arrays (N, Te), one per step.
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.layers = None
        self.attention_weights = None
        self.cache = None

    def forward(self, hs_enc, hs_dec):
        """``hs_enc`` (N, Te, H), ``hs_dec`` (N, Td, H) -> contexts (N, Td, H)."""
        dtype = _float_dtype(hs_enc, hs_dec)
        hs_enc, hs_dec = np.asarray(hs_enc, dtype=dtype), np.asarray(hs_dec, dtype=dtype)
        N, T, H = hs_dec.shape
        out = np.empty((N, T, H), dtype=dtype)
        self.layers = []
        self.attention_weights = []
        for t in range(T):
            layer = Attention()
            out[:, t, :] = layer.forward(hs_enc, hs_dec[:, t, :])
            self.layers.append(layer)
            self.attention_weights.append(layer.attention_weight)
        self.cache = (hs_enc.shape, dtype)
        return out

    def backward(self, dout):
        """``dout`` (N, Td, H) -> ``(dhs_enc (N, Te, H), dhs_dec (N, Td, H))``."""
        enc_shape, dtype = self.cache
        N, T, H = dout.shape
        dhs_enc = np.zeros(enc_shape, dtype=dtype)
        dhs_dec = np.empty((N, T, H), dtype=dtype)
        for t in range(T):
            dhs, dh = self.layers[t].backward(dout[:, t, :])
            dhs_enc += dhs  # every decoder step attends to all of hs_enc
            dhs_dec[:, t, :] = dh
        return dhs_enc, dhs_dec
