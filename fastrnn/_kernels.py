"""Fused Numba kernels for the forward pass and BPTT of the RNN, LSTM and GRU layers.

Everything here is pure compute: no validation, no Python objects, no allocation. The layer
classes in :mod:`fastrnn.layers` check every shape and dtype, own the buffers and call these
kernels with C-contiguous arrays of one float dtype (float32 or float64).

Conventions
-----------
* Workspaces are time-major, ``(T, N, .)``, so that ``buf[t]`` is a contiguous ``(N, .)``
  block and all ``T * N`` rows of a sequence form one ``(T * N, .)`` matrix.
* ``h_hist`` has ``T + 1`` steps: ``h_hist[0]`` is the initial state, ``h_hist[t + 1]`` the
  state after step ``t``. LSTM's ``c_hist`` likewise.
* Gate blocks are packed along the last axis in the book's order: LSTM ``f, g, i, o``,
  GRU ``z, r, h~``.
* Argument order: outputs and saved activations first, then inputs and parameters.
* The products that do not depend on the recurrence (``xs @ Wx``, ``dWx``, ``dWh``,
  ``dxs``) are single large GEMMs outside the time loop; only ``h @ Wh`` and
  ``dA @ Wh.T`` stay inside it.
* Every matrix product calls SciPy's BLAS through Numba's ``numba_xxgemm`` helper, so no
  call alternates between NumPy's and SciPy's OpenBLAS thread pools.

All kernels and the helpers they call live in this one module on purpose: Numba keys a
cached kernel on its own source file, so a helper in another file could change without the
cached kernels noticing.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload
from numba.np.linalg import ensure_blas

from ._jit import SAFE_FASTMATH, helper, kernel

ensure_blas()  # a clear ImportError now if SciPy (Numba's BLAS provider) is missing

# --------------------------------------------------------------------------------------
# BLAS
# --------------------------------------------------------------------------------------

# Numba's own C helper around SciPy's ?gemm (column-major, Fortran semantics). Pointers are
# passed as integers: the same registers as pointers on every 64-bit ABI Numba supports,
# and it lets one helper serve float32 and float64.
_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(
        types.char,  # kind: 's' or 'd'
        types.char,  # transa
        types.char,  # transb
        types.intp,  # m
        types.intp,  # n
        types.intp,  # k
        types.intp,  # alpha*
        types.intp,  # a*
        types.intp,  # lda
        types.intp,  # b*
        types.intp,  # ldb
        types.intp,  # beta*
        types.intp,  # c*
        types.intp,  # ldc
    ),
)

# alpha and beta are passed by address: static arrays live as long as the process.
_ZERO_ONE_F32 = np.array([0.0, 1.0], dtype=np.float32)
_ZERO_ONE_F64 = np.array([0.0, 1.0], dtype=np.float64)
_NO_TRANS = ord("n")
_TRANS = ord("t")


@helper
def _gemm(c, a, b, transpose_a, transpose_b, accumulate):
    """``c = op(a) @ op(b)`` (``+= `` when ``accumulate``), all row-major 2-D arrays.

    Each operand may be a column slice of a larger C-contiguous matrix: only the last
    axis must have unit stride. The caller guarantees matching shapes and dtypes.
    """
    m, n = c.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum; BLAS is not asked about degenerate leading dimensions
        if not accumulate:
            c[:, :] = 0
        return
    itemsize = c.itemsize
    if itemsize == 4:
        kind = ord("s")
        consts = _ZERO_ONE_F32.ctypes.data
    else:
        kind = ord("d")
        consts = _ZERO_ONE_F64.ctypes.data
    one = consts + itemsize
    beta = one if accumulate else consts
    lda = max(a.strides[0] // itemsize, a.shape[1], 1)
    ldb = max(b.strides[0] // itemsize, b.shape[1], 1)
    ldc = max(c.strides[0] // itemsize, n, 1)
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    _xxgemm(
        kind,
        _TRANS if transpose_b else _NO_TRANS,
        _TRANS if transpose_a else _NO_TRANS,
        n,
        m,
        k,
        one,
        b.ctypes.data,
        ldb,
        a.ctypes.data,
        lda,
        beta,
        c.ctypes.data,
        ldc,
    )


# --------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------


def fast_tanh(x):
    """tanh for kernels: a vectorisable rational approximation in float32, libm in float64.

    Callable from Numba-compiled code only.
    """
    raise NotImplementedError("fast_tanh is only available inside Numba kernels")


_TANH_CLAMP_F32 = np.float32(7.90531110763549805)
_ONE_F32 = np.float32(1.0)
# Odd numerator and even denominator of Eigen's float32 tanh approximation: at most a few
# float32 ulp from the true value, and 1 ns or less per element instead of ~20 ns for libm.
_TANH_P = tuple(
    np.float32(v)
    for v in (
        4.89352455891786e-03,
        6.37261928875436e-04,
        1.48572235717979e-05,
        5.12229709037114e-08,
        -8.60467152213735e-11,
        2.00018790482477e-13,
        -2.76076847742355e-16,
    )
)
_TANH_Q = tuple(
    np.float32(v)
    for v in (
        4.89352518554385e-03,
        2.26843463243900e-03,
        1.18534705686654e-04,
        1.19825839466702e-06,
    )
)


def _tanh_float32(x):
    # Comparisons, not min/max: a NaN fails every test below and flows through unchanged.
    x_in = x
    if x > _TANH_CLAMP_F32:
        x = _TANH_CLAMP_F32
    if x < -_TANH_CLAMP_F32:
        x = -_TANH_CLAMP_F32
    x2 = x * x
    p = x2 * _TANH_P[6] + _TANH_P[5]
    p = x2 * p + _TANH_P[4]
    p = x2 * p + _TANH_P[3]
    p = x2 * p + _TANH_P[2]
    p = x2 * p + _TANH_P[1]
    p = x2 * p + _TANH_P[0]
    q = x2 * _TANH_Q[3] + _TANH_Q[2]
    q = x2 * q + _TANH_Q[1]
    q = x2 * q + _TANH_Q[0]
    y = x * p / q
    # Saturate exactly, as np.tanh does in float32, so that 1 - tanh(x)**2 is 0 there too.
    if x_in > _TANH_CLAMP_F32:
        y = _ONE_F32
    if x_in < -_TANH_CLAMP_F32:
        y = -_ONE_F32
    return y


def _tanh_libm(x):
    return math.tanh(x)


@overload(fast_tanh, jit_options=dict(fastmath=set(SAFE_FASTMATH), error_model="numpy"))
def _fast_tanh_overload(x):
    if x == types.float32:
        return _tanh_float32
    return _tanh_libm


def fast_sigmoid(x):
    """The logistic function for kernels, as ``0.5 + 0.5 * tanh(0.5 * x)``: no overflow for
    large ``|x|`` and the same vectorisable path as :func:`fast_tanh`.

    Callable from Numba-compiled code only.
    """
    raise NotImplementedError("fast_sigmoid is only available inside Numba kernels")


@overload(fast_sigmoid, jit_options=dict(fastmath=set(SAFE_FASTMATH), error_model="numpy"))
def _fast_sigmoid_overload(x):
    half = np.float32(0.5) if x == types.float32 else np.float64(0.5)

    def sigmoid(x):
        return half + half * fast_tanh(half * x)

    return sigmoid


# --------------------------------------------------------------------------------------
# Pieces shared by every cell type
# --------------------------------------------------------------------------------------


@helper
def _project_inputs(pre, x2d, Wx, b):
    """``pre = x2d @ Wx + b`` for all ``T * N`` rows at once: ``(T*N, G*H)``."""
    _gemm(pre, x2d, Wx, False, False, False)
    for r in range(pre.shape[0]):
        for j in range(pre.shape[1]):
            pre[r, j] += b[j]


@helper
def _input_side_grads(dxs2d, dWx, db, dA2d, x2d, Wx):
    """The gradients that need no recurrence: ``dxs``, ``dWx`` and ``db`` from all rows."""
    _gemm(dxs2d, dA2d, Wx, False, True, False)
    _gemm(dWx, x2d, dA2d, True, False, False)
    db[:] = 0
    for r in range(dA2d.shape[0]):
        for j in range(dA2d.shape[1]):
            db[j] += dA2d[r, j]


@helper
def _recurrent_weight_grad(dWh, h_hist, dA):
    """``dWh = sum_t h_{t-1}.T @ dA_t`` as one product over all ``T * N`` rows."""
    T, N, G = dA.shape
    H = h_hist.shape[2]
    _gemm(dWh, h_hist[:T].reshape((T * N, H)), dA.reshape((T * N, G)), True, False, False)


# --------------------------------------------------------------------------------------
# Plain RNN: h_t = tanh(h_{t-1} @ Wh + x_t @ Wx + b)
# --------------------------------------------------------------------------------------


@kernel
def rnn_forward(h_hist, xs, Wx, Wh, b):
    """Run a plain RNN over a sequence.

    Parameters
    ----------
    h_hist : (T + 1, N, H) array
        In: ``h_hist[0]`` is the initial state. Out: the state after every step.
    xs : (T, N, D) array
        The inputs, time-major.
    Wx : (D, H) array
    Wh : (H, H) array
    b : (H,) array
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    _project_inputs(h_hist[1:].reshape((T * N, H)), xs.reshape((T * N, D)), Wx, b)
    for t in range(T):
        h = h_hist[t + 1]
        _gemm(h, h_hist[t], Wh, False, False, True)
        for n in range(N):
            for j in range(H):
                h[n, j] = fast_tanh(h[n, j])


@kernel
def rnn_backward(dxs, dWx, dWh, db, dh, dA, h_hist, xs, Wx, Wh):
    """Backpropagate through a plain RNN sequence.

    Parameters
    ----------
    dxs : (T, N, D) array
        Out: gradient of the inputs, time-major.
    dWx, dWh, db : arrays shaped like ``Wx``, ``Wh``, ``b``
        Out: parameter gradients, summed over time and batch.
    dh : (N, H) array
        In: gradient arriving at the last state from after the sequence (zeros for a
        whole sequence). Out: gradient of the initial state ``h_hist[0]``.
    dA : (T, N, H) array
        In: ``dhs``, the gradient of every output state. Out: the gradient of every
        pre-activation.
    h_hist, xs, Wx, Wh
        As saved and used by :func:`rnn_forward`.
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    one = dA.dtype.type(1.0)
    for t in range(T - 1, -1, -1):
        da = dA[t]
        h = h_hist[t + 1]
        for n in range(N):
            for j in range(H):
                da[n, j] = (da[n, j] + dh[n, j]) * (one - h[n, j] * h[n, j])
        _gemm(dh, da, Wh, False, True, False)
    _input_side_grads(
        dxs.reshape((T * N, D)), dWx, db, dA.reshape((T * N, H)), xs.reshape((T * N, D)), Wx
    )
    _recurrent_weight_grad(dWh, h_hist, dA)


# --------------------------------------------------------------------------------------
# LSTM, gates f, g, i, o:  c_t = f * c_{t-1} + g * i,  h_t = o * tanh(c_t)
# --------------------------------------------------------------------------------------


@kernel
def lstm_forward(gates, c_hist, tanh_c, h_hist, xs, Wx, Wh, b):
    """Run an LSTM over a sequence.

    Parameters
    ----------
    gates : (T, N, 4H) array
        Out: the activated gates ``f, g, i, o`` of every step.
    c_hist : (T + 1, N, H) array
        In: ``c_hist[0]`` is the initial cell state. Out: the cell state after every step.
    tanh_c : (T, N, H) array
        Out: ``tanh(c_t)`` of every step, kept for the backward pass.
    h_hist : (T + 1, N, H) array
        In: ``h_hist[0]`` is the initial state. Out: the state after every step.
    xs : (T, N, D) array
    Wx : (D, 4H) array
    Wh : (H, 4H) array
    b : (4H,) array
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    _project_inputs(gates.reshape((T * N, 4 * H)), xs.reshape((T * N, D)), Wx, b)
    for t in range(T):
        A = gates[t]
        _gemm(A, h_hist[t], Wh, False, False, True)
        c_prev = c_hist[t]
        c = c_hist[t + 1]
        tc = tanh_c[t]
        h = h_hist[t + 1]
        for n in range(N):
            for j in range(H):
                f = fast_sigmoid(A[n, j])
                g = fast_tanh(A[n, H + j])
                i = fast_sigmoid(A[n, 2 * H + j])
                o = fast_sigmoid(A[n, 3 * H + j])
                A[n, j] = f
                A[n, H + j] = g
                A[n, 2 * H + j] = i
                A[n, 3 * H + j] = o
                c[n, j] = f * c_prev[n, j] + g * i
                tc[n, j] = fast_tanh(c[n, j])
                h[n, j] = o * tc[n, j]


@kernel
def lstm_backward(dxs, dWx, dWh, db, dh, dc, dA, dhs, gates, c_hist, tanh_c, h_hist, xs, Wx, Wh):
    """Backpropagate through an LSTM sequence.

    Parameters
    ----------
    dxs : (T, N, D) array
        Out: gradient of the inputs, time-major.
    dWx, dWh, db : arrays shaped like ``Wx``, ``Wh``, ``b``
        Out: parameter gradients.
    dh, dc : (N, H) arrays
        In: gradients arriving at the last ``h`` and ``c`` from after the sequence.
        Out: gradients of the initial ``h`` and ``c``.
    dA : (T, N, 4H) array
        Out: gradient of every gate pre-activation.
    dhs : (T, N, H) array
        Gradient of every output state.
    gates, c_hist, tanh_c, h_hist, xs, Wx, Wh
        As saved and used by :func:`lstm_forward`.
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    one = dA.dtype.type(1.0)
    for t in range(T - 1, -1, -1):
        A = gates[t]
        d = dA[t]
        dh_out = dhs[t]
        tc = tanh_c[t]
        c_prev = c_hist[t]
        for n in range(N):
            for j in range(H):
                f = A[n, j]
                g = A[n, H + j]
                i = A[n, 2 * H + j]
                o = A[n, 3 * H + j]
                dh_next = dh_out[n, j] + dh[n, j]
                ds = dc[n, j] + dh_next * o * (one - tc[n, j] * tc[n, j])
                dc[n, j] = ds * f
                d[n, j] = ds * c_prev[n, j] * f * (one - f)
                d[n, H + j] = ds * i * (one - g * g)
                d[n, 2 * H + j] = ds * g * i * (one - i)
                d[n, 3 * H + j] = dh_next * tc[n, j] * o * (one - o)
        _gemm(dh, d, Wh, False, True, False)
    _input_side_grads(
        dxs.reshape((T * N, D)), dWx, db, dA.reshape((T * N, 4 * H)), xs.reshape((T * N, D)), Wx
    )
    _recurrent_weight_grad(dWh, h_hist, dA)


# --------------------------------------------------------------------------------------
# GRU, gates z, r, h~ (reset applied before the product, as in the book):
#   h~ = tanh(x @ Wxh + (r * h) @ Whh + bh),  h_t = (1 - z) * h_{t-1} + z * h~
# --------------------------------------------------------------------------------------


@kernel
def gru_forward(gates, rh, h_hist, xs, Wx, Wh, b):
    """Run a GRU over a sequence.

    Parameters
    ----------
    gates : (T, N, 3H) array
        Out: the activated gates ``z, r, h~`` of every step.
    rh : (T, N, H) array
        Out: ``r * h_{t-1}`` of every step, the input of the candidate's product.
    h_hist : (T + 1, N, H) array
        In: ``h_hist[0]`` is the initial state. Out: the state after every step.
    xs : (T, N, D) array
    Wx : (D, 3H) array
    Wh : (H, 3H) array
    b : (3H,) array
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    one = gates.dtype.type(1.0)
    _project_inputs(gates.reshape((T * N, 3 * H)), xs.reshape((T * N, D)), Wx, b)
    Wh_zr = Wh[:, : 2 * H]
    Wh_h = Wh[:, 2 * H :]
    for t in range(T):
        A = gates[t]
        h_prev = h_hist[t]
        h = h_hist[t + 1]
        rh_t = rh[t]
        _gemm(A[:, : 2 * H], h_prev, Wh_zr, False, False, True)
        for n in range(N):
            for j in range(2 * H):
                A[n, j] = fast_sigmoid(A[n, j])
            for j in range(H):
                rh_t[n, j] = A[n, H + j] * h_prev[n, j]
        _gemm(A[:, 2 * H :], rh_t, Wh_h, False, False, True)
        for n in range(N):
            for j in range(H):
                z = A[n, j]
                h_cand = fast_tanh(A[n, 2 * H + j])
                A[n, 2 * H + j] = h_cand
                h[n, j] = (one - z) * h_prev[n, j] + z * h_cand


@kernel
def gru_backward(dxs, dWx, dWh, db, dh, dhr, dA, dhs, gates, rh, h_hist, xs, Wx, Wh):
    """Backpropagate through a GRU sequence.

    Parameters
    ----------
    dxs : (T, N, D) array
        Out: gradient of the inputs, time-major.
    dWx, dWh, db : arrays shaped like ``Wx``, ``Wh``, ``b``
        Out: parameter gradients.
    dh : (N, H) array
        In: gradient arriving at the last state from after the sequence. Out: gradient of
        the initial state.
    dhr : (N, H) array
        Scratch: gradient of ``r * h_{t-1}``.
    dA : (T, N, 3H) array
        Out: gradient of every gate pre-activation.
    dhs : (T, N, H) array
        Gradient of every output state.
    gates, rh, h_hist, xs, Wx, Wh
        As saved and used by :func:`gru_forward`.
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    one = dA.dtype.type(1.0)
    Wh_zr = Wh[:, : 2 * H]
    Wh_h = Wh[:, 2 * H :]
    for t in range(T - 1, -1, -1):
        A = gates[t]
        d = dA[t]
        dh_out = dhs[t]
        h_prev = h_hist[t]
        for n in range(N):
            for j in range(H):
                z = A[n, j]
                h_cand = A[n, 2 * H + j]
                dh_next = dh_out[n, j] + dh[n, j]
                d[n, 2 * H + j] = dh_next * z * (one - h_cand * h_cand)
                d[n, j] = dh_next * (h_cand - h_prev[n, j]) * z * (one - z)
                dh[n, j] = dh_next * (one - z)
        _gemm(dhr, d[:, 2 * H :], Wh_h, False, True, False)
        for n in range(N):
            for j in range(H):
                r = A[n, H + j]
                dh[n, j] += r * dhr[n, j]
                d[n, H + j] = dhr[n, j] * h_prev[n, j] * r * (one - r)
        _gemm(dh, d[:, : 2 * H], Wh_zr, False, True, True)
    rows = T * N
    dA2d = dA.reshape((rows, 3 * H))
    _input_side_grads(dxs.reshape((rows, D)), dWx, db, dA2d, xs.reshape((rows, D)), Wx)
    _gemm(dWh[:, : 2 * H], h_hist[:T].reshape((rows, H)), dA2d[:, : 2 * H], True, False, False)
    _gemm(dWh[:, 2 * H :], rh.reshape((rows, H)), dA2d[:, 2 * H :], True, False, False)
