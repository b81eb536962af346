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
* The caller's arrays are batch-major, ``(N, T, .)``: the forward kernels copy ``xs`` and
  the initial states into their workspaces themselves and write the states straight into a
  fresh batch-major ``hs`` while they are in cache, and the backward kernels read the
  caller's ``dhs`` as it is, so no layout copy runs in Python (a decoding step at
  ``N = T = 1`` would pay more for those NumPy calls than for its products).
* Argument order: outputs and saved activations first, then inputs and parameters.
* The products that do not depend on the recurrence (``xs @ Wx``, ``dWx``, ``dWh``,
  ``dxs``) are single large GEMMs outside the time loop; only ``h @ Wh`` and
  ``dA @ Wh.T`` stay inside it. From a zero initial state, the first step's ``h @ Wh`` and
  the first ``N`` rows of ``dWh`` are left out (:func:`_adds_nothing`).
* Every matrix product calls NumPy's own BLAS (:mod:`fastrnn._blas`), so the user's NumPy
  products and fastrnn's share one thread pool. fastrnn's own parallel work (packed
  products, the rows of an LSTM or GRU step: :func:`lstm_cell_worker`,
  :func:`gru_cell_worker`) runs on that pool's threads too.

The helpers these kernels share with the other kernel modules (BLAS, activations) live in
:mod:`fastrnn._blas` and :mod:`fastrnn._math`; the cache key of every kernel covers those
modules too (:mod:`fastrnn._jit`).
"""

from __future__ import annotations

import numpy as np
from numba import carray

from ._blas import gemm
from ._jit import callback, helper, kernel
from ._math import fast_sigmoid, fast_tanh
from ._tiles import (
    DISPATCH,
    JOB_BYTES,
    JOB_FIELDS,
    PANEL,
    WORKER,
    address_of,
    call_dispatch,
    pack_panels,
    packed_product,
    panel_count,
    pointer_to,
    split_threads,
)

# --------------------------------------------------------------------------------------
# Pieces shared by every cell type
# --------------------------------------------------------------------------------------

# Which route runs the per-step recurrent products fastest depends on the shape and on the
# machine; :mod:`fastrnn._planner` measures the candidates and the layers pass its choice in:
# a contiguous copy ``WT`` of ``W.T`` (or an empty one), a backward route, and ``panels``:
# when not empty, the products run packed (:mod:`fastrnn._tiles`) on the threads ``pool``
# names, whatever the other two say. The kernels pack ``panels`` themselves, once per call.

#: Backward routes of ``dA_t @ W.T``: the product as it is, ``(W @ dA_t.T).T`` through an
#: (H, N) scratch, or ``dA_t @ WT`` against a contiguous copy ``WT`` of ``W.T``.
BACKPROP_DIRECT = 0
BACKPROP_VIA_SCRATCH = 1
BACKPROP_VIA_WT = 2


@helper
def _recurrent_product(A, h_prev, W, WT, scratchT, panels, pool):
    """``A += h_prev @ W``: the per-step recurrent product of the forward pass.

    ``A`` (N, G); ``h_prev`` (N, H); ``W`` (H, G). With ``panels`` (ceil(G / 16), H, 16)
    not empty, they hold ``W`` packed and the product runs on ``pool``'s threads. Else
    ``WT`` is either empty or holds ``W.T`` (G, H), in which case the product goes through
    ``scratchT`` (G, N) in the orientation that is faster for wide, small-batch products.
    """
    if panels.shape[0] != 0:
        packed_product(A, h_prev, panels, True, pool)
        return
    if WT.shape[0] == 0:
        gemm(A, h_prev, W, False, False, True)
        return
    gemm(scratchT, WT, h_prev, False, True, False)
    N, G = A.shape
    for n0 in range(0, N, 16):  # blocks of 16 batch rows: one cache line of scratchT
        n1 = min(n0 + 16, N)
        for g in range(G):
            s = scratchT[g]
            for n in range(n0, n1):
                A[n, g] += s[n]


@helper
def _backprop_to_state(dh, dhT, dA_t, W, WT, accumulate, route, panels, pool):
    """``dh = dA_t @ W.T`` (``+=`` when ``accumulate``): the gradient of the previous state.

    ``dh`` (N, H); ``dhT`` (H, N) scratch; ``dA_t`` (N, G); ``W`` (H, G). With ``panels``
    (ceil(H / 16), G, 16) not empty, they hold ``W.T`` packed and the product runs on
    ``pool``'s threads. Else ``route`` is one of the ``BACKPROP_*`` constants; with
    ``BACKPROP_VIA_WT``, ``WT`` holds ``W.T`` (G, H).
    """
    if panels.shape[0] != 0:
        packed_product(dh, dA_t, panels, accumulate, pool)
        return
    if route == BACKPROP_VIA_WT:
        gemm(dh, dA_t, WT, False, False, accumulate)
        return
    if route == BACKPROP_DIRECT:
        gemm(dh, dA_t, W, False, True, accumulate)
        return
    N, H = dh.shape
    gemm(dhT, W, dA_t, False, True, False)
    for n in range(N):
        row = dh[n]
        if accumulate:
            for j in range(H):
                row[j] += dhT[j, n]
        else:
            for j in range(H):
                row[j] = dhT[j, n]


@helper
def _load_state(state0, given):
    """``state0[:] = given``, or zeros when ``given`` is empty (no state: start from 0)."""
    if given.shape[0] == 0:
        state0[:, :] = 0
        return
    for n in range(state0.shape[0]):
        _copy_row(state0[n], given[n])


@helper
def _load_sequence(xs_tm, xs):
    """Copy the caller's batch-major ``xs`` (N, T, D) into the time-major ``xs_tm``
    (T, N, D), where the backward pass finds it however the caller reuses ``xs``."""
    N, T = xs.shape[0], xs.shape[1]
    for t in range(T):
        for n in range(N):
            _copy_row(xs_tm[t, n], xs[n, t])


@helper
def _copy_row(dst, src):
    """``dst[:] = src`` for two rows of one length, as a plain loop: Numba's slice
    assignment took about 3.5x as long for a row of 100 float32 (86 against 24 ns)."""
    for j in range(dst.size):
        dst[j] = src[j]


@helper
def _bias_grad(db, dA2d):
    """``db = dA2d.sum(axis=0)``, row by row so that the inner loop vectorises."""
    db[:] = 0
    for r in range(dA2d.shape[0]):
        row = dA2d[r]
        for j in range(row.size):
            db[j] += row[j]


@helper
def _input_side_grads(dxs2d, dWx, db, dA2d, x2d, Wx):
    """The gradients that need no recurrence: ``dxs``, ``dWx`` and ``db`` from all rows."""
    gemm(dxs2d, dA2d, Wx, False, True, False)
    gemm(dWx, x2d, dA2d, True, False, False)
    _bias_grad(db, dA2d)


@helper
def _all_zero(a):
    """Whether every element of the 2-D ``a`` is zero (of either sign); stops at the first
    row that is not."""
    for i in range(a.shape[0]):
        row = a[i]
        nonzero = False
        for j in range(row.shape[0]):  # a reduction without an exit: it vectorises
            nonzero |= row[j] != 0
        if nonzero:
            return False
    return True


@helper
def _all_finite(a):
    """Whether the 2-D ``a`` holds no NaN and no infinity. A comparison, not arithmetic:
    under ``reassoc`` a sum of ``v - v`` may be folded to zero, NaN or not."""
    finite = True
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(row.shape[0]):
            finite &= abs(row[j]) < np.inf  # False for NaN and for either infinity
    return finite


@helper
def _adds_nothing(h, W):
    """Whether the product ``h @ W`` (or ``h.T @ W``) is all zeros and may be left out: ``h``
    is zero and ``W`` finite (``0 * inf`` and ``0 * NaN`` are NaN, which must propagate).

    A sequence that starts from no state (the book's encoders, every non-stateful call)
    starts from ``h = 0``: its first recurrent product, and the first ``N`` rows of ``dWh``,
    are zeros."""
    return _all_zero(h) and _all_finite(W)


@helper
def _skipped_steps(h0, W):
    """1 when the first step's product with the state ``h0`` adds nothing, else 0."""
    return 1 if h0.shape[0] != 0 and _adds_nothing(h0, W) else 0


@helper
def _state_weight_grad(dW, h_rows, dA_rows, first):
    """``dW = h_rows[first:].T @ dA_rows[first:]`` over (rows, .) matrices; zeros when no
    row is left."""
    rows = h_rows.shape[0] - first
    if rows == 0 or dW.shape[0] == 0:
        dW[:, :] = 0
        return
    gemm(dW, h_rows[first:], dA_rows[first:], True, False, False)


@helper
def _recurrent_weight_grad(dWh, h_hist, dA):
    """``dWh = sum_t h_{t-1}.T @ dA_t`` as one product over the ``T * N`` rows, less the
    first step's ``N`` when the initial state is zero (they add nothing)."""
    T, N, G = dA.shape
    H = h_hist.shape[2]
    first = N if T > 0 and _adds_nothing(h_hist[0], dA[0]) else 0
    _state_weight_grad(dWh, h_hist[:T].reshape((T * N, H)), dA.reshape((T * N, G)), first)


# The element-wise loops below run row by row, over gate blocks taken as slice views
# (``f = a[:H]``) with zero-based indices. Both matter for LLVM's vectoriser: an index that
# starts at an unknown offset (``a[H + j]``) may be negative as far as it can tell, and a
# loop over many arrays needs more runtime alias checks than it will emit; such loops stay
# scalar, 4-5x slower. The bias is added in the activation loop rather than in a separate
# pass over the whole input projection.

# --------------------------------------------------------------------------------------
# Plain RNN: h_t = tanh(h_{t-1} @ Wh + x_t @ Wx + b)
# --------------------------------------------------------------------------------------


@kernel
def rnn_forward(hs, h_hist, scratchT, xs_tm, xs, h0, Wx, Wh, b, WhT, panels, pool):
    """Run a plain RNN over a sequence.

    Parameters
    ----------
    hs : (N, T, H) array
        Out: the state after every step, batch-major (the layer's return value).
    h_hist : (T + 1, N, H) array
        Out: the initial state and the state after every step.
    scratchT : (H, N) array
        Scratch, used with ``WhT``.
    xs_tm : (T, N, D) array
        Out: a time-major copy of ``xs``, kept for the backward pass.
    xs : (N, T, D) array
        The inputs, as the caller gave them.
    h0 : (N, H) or (0, H) array
        The initial state; empty for zeros.
    Wx : (D, H) array
    Wh : (H, H) array
    b : (H,) array
    WhT : (H, H) or (0, H) array
        A contiguous ``Wh.T`` when the plan transposes the forward products, else empty.
    panels : (ceil(G / 16), H, 16) or (0, H, 16) array
        Out: ``Wh`` packed (``G`` its columns) when the plan packs the per-step products,
        else empty.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that packed products run on (:func:`fastrnn._tiles.new_pool`).
    """
    T, N, D = xs_tm.shape
    H = Wh.shape[0]
    _load_sequence(xs_tm, xs)
    _load_state(h_hist[0], h0)
    if panels.shape[0] != 0:
        pack_panels(panels, Wh, False)
    gemm(h_hist[1:].reshape((T * N, H)), xs_tm.reshape((T * N, D)), Wx, False, False, False)
    skipped = _skipped_steps(h_hist[0], Wh)
    for t in range(T):
        if t >= skipped:
            _recurrent_product(h_hist[t + 1], h_hist[t], Wh, WhT, scratchT, panels, pool)
        for n in range(N):
            h, out = h_hist[t + 1, n], hs[n, t]
            for j in range(H):
                h[j] = fast_tanh(h[j] + b[j])
            for j in range(H):
                out[j] = h[j]


@kernel
def rnn_backward(dxs, dWx, dWh, db, dh, dhT, dA, dhs, h_hist, xs, Wx, Wh, WhT, route, panels, pool):
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
    dhT : (H, N) array
        Scratch.
    dA : (T, N, H) array
        Out: the gradient of every pre-activation.
    dhs : (N, T, H) array
        In: the gradient of every output state, batch-major. Not modified.
    h_hist, xs, Wx, Wh
        As saved and used by :func:`rnn_forward`.
    WhT : (H, H) or (0, H) array
        A contiguous ``Wh.T`` for ``route == BACKPROP_VIA_WT``, else empty.
    route : int
        How the per-step ``dA_t @ Wh.T`` runs: a ``BACKPROP_*`` constant.
    panels : (ceil(H / 16), G, 16) or (0, G, 16) array
        Out: ``Wh.T`` packed when the plan packs the per-step products, else empty.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that packed products run on (:func:`fastrnn._tiles.new_pool`).
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    one = dA.dtype.type(1.0)
    if panels.shape[0] != 0:
        pack_panels(panels, Wh, True)
    for t in range(T - 1, -1, -1):
        for n in range(N):
            da = dA[t, n]
            h = h_hist[t + 1, n]
            dh_n, dhs_n = dh[n], dhs[n, t]
            for j in range(H):
                da[j] = (dhs_n[j] + dh_n[j]) * (one - h[j] * h[j])
        _backprop_to_state(dh, dhT, dA[t], Wh, WhT, False, route, panels, pool)
    rows = T * N
    _input_side_grads(
        dxs.reshape((rows, D)), dWx, db, dA.reshape((rows, H)), xs.reshape((rows, D)), Wx
    )
    _recurrent_weight_grad(dWh, h_hist, dA)


# --------------------------------------------------------------------------------------
# LSTM, gates f, g, i, o:  c_t = f * c_{t-1} + g * i,  h_t = o * tanh(c_t)
# --------------------------------------------------------------------------------------


@helper
def _lstm_forward_rows(hs, gates, c_hist, tanh_c, h_hist, b, t, first, stop):
    """Batch rows ``first .. stop - 1`` of step ``t``'s element-wise forward: activate the
    gates (``gates[t]`` holds their pre-activations without the bias), then the new cell
    state, ``tanh(c)`` and ``h``, also written to ``hs[:, t]``. Arrays as in
    :func:`lstm_forward`."""
    H = h_hist.shape[2]
    b_f, b_g, b_io = b[:H], b[H : 2 * H], b[2 * H :]
    for n in range(first, stop):
        a = gates[t, n]
        f, g, i, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        io = a[2 * H :]
        for j in range(H):
            f[j] = fast_sigmoid(f[j] + b_f[j])
        for j in range(H):
            g[j] = fast_tanh(g[j] + b_g[j])
        for j in range(2 * H):
            io[j] = fast_sigmoid(io[j] + b_io[j])
        c_prev, c = c_hist[t, n], c_hist[t + 1, n]
        tc = tanh_c[t, n]
        h = h_hist[t + 1, n]
        for j in range(H):
            c[j] = f[j] * c_prev[j] + g[j] * i[j]
        for j in range(H):
            tc[j] = fast_tanh(c[j])
        for j in range(H):
            h[j] = o[j] * tc[j]
        out = hs[n, t]
        for j in range(H):
            out[j] = h[j]


@helper
def _lstm_backward_rows(dA, dh, dc, dhs, gates, c_hist, tanh_c, t, first, stop):
    """Batch rows ``first .. stop - 1`` of step ``t``'s element-wise backward: ``dA[t]``
    from the gradients arriving at ``h_t`` (``dh + dhs[:, t]``) and ``c_t`` (``dc``), and
    ``dc`` updated in place to the gradient of ``c_{t-1}``. Arrays as in
    :func:`lstm_backward`."""
    H = dh.shape[1]
    one = dA.dtype.type(1.0)
    for n in range(first, stop):
        a = gates[t, n]
        f, g, i, o = a[:H], a[H : 2 * H], a[2 * H : 3 * H], a[3 * H :]
        d = dA[t, n]
        df, dg, di, do = d[:H], d[H : 2 * H], d[2 * H : 3 * H], d[3 * H :]
        ds = dc[n]  # dc_next on entry; ds, then dc_prev, in place
        tc = tanh_c[t, n]
        c_prev = c_hist[t, n]
        # dh[n] arrives from step t + 1; adding dhs makes it the total gradient of h_t.
        # The product after the rows overwrites it with the gradient of h_{t-1}.
        dh_next, dhs_n = dh[n], dhs[n, t]
        for j in range(H):
            dh_next[j] += dhs_n[j]
        for j in range(H):
            ds[j] += dh_next[j] * o[j] * (one - tc[j] * tc[j])
        for j in range(H):
            do[j] = dh_next[j] * tc[j] * o[j] * (one - o[j])
        for j in range(H):
            df[j] = ds[j] * c_prev[j] * f[j] * (one - f[j])
        for j in range(H):
            dg[j] = ds[j] * i[j] * (one - g[j] * g[j])
        for j in range(H):
            di[j] = ds[j] * g[j] * i[j] * (one - i[j])
        for j in range(H):
            ds[j] *= f[j]


# An LSTM cell job: one thread's batch rows of one step, forward or backward (_DA = 0 for
# forward). The arrays travel as addresses; their shapes follow from _STEPS, _ROWS, _UNITS.
(
    _HS, _GATES, _C_HIST, _TANH_C, _H_HIST, _BIAS, _DA, _DH, _DC, _DHS,
    _STEPS, _ROWS, _UNITS, _STEP, _FIRST, _STOP,
) = range(16)  # fmt: skip


@helper
def _lstm_job_shapes(jobs, threads, t, gates, c_hist, tanh_c):
    """Fill what forward and backward jobs share, and split the batch rows between
    ``threads`` jobs."""
    T, N, G = gates.shape
    for k in range(threads):
        job = jobs[k]
        job[_GATES] = gates.ctypes.data
        job[_C_HIST] = c_hist.ctypes.data
        job[_TANH_C] = tanh_c.ctypes.data
        job[_STEPS] = T
        job[_ROWS] = N
        job[_UNITS] = G // 4
        job[_STEP] = t
        job[_FIRST] = k * N // threads
        job[_STOP] = (k + 1) * N // threads


@helper
def _post_lstm_forward_jobs(pool, threads, t, hs, gates, c_hist, tanh_c, h_hist, b):
    """:func:`_lstm_forward_rows` of step ``t``, its batch rows split between ``threads``
    of ``pool``'s threads (:func:`lstm_cell_worker`)."""
    jobs = pool[1 : 1 + threads]
    _lstm_job_shapes(jobs, threads, t, gates, c_hist, tanh_c)
    for k in range(threads):
        job = jobs[k]
        job[_HS] = hs.ctypes.data
        job[_H_HIST] = h_hist.ctypes.data
        job[_BIAS] = b.ctypes.data
        job[_DA] = 0
    call_dispatch(pool[0, DISPATCH], threads, pool[0, WORKER], jobs.ctypes.data, JOB_BYTES)


@helper
def _post_lstm_backward_jobs(pool, threads, t, dA, dh, dc, dhs, gates, c_hist, tanh_c):
    """:func:`_lstm_backward_rows` of step ``t``, its batch rows split between ``threads``
    of ``pool``'s threads (:func:`lstm_cell_worker`)."""
    jobs = pool[1 : 1 + threads]
    _lstm_job_shapes(jobs, threads, t, gates, c_hist, tanh_c)
    for k in range(threads):
        job = jobs[k]
        job[_DA] = dA.ctypes.data
        job[_DH] = dh.ctypes.data
        job[_DC] = dc.ctypes.data
        job[_DHS] = dhs.ctypes.data
    call_dispatch(pool[0, DISPATCH], threads, pool[0, WORKER], jobs.ctypes.data, JOB_BYTES)


def lstm_cell_worker(dtype):
    """The C callback that runs one LSTM cell job in ``dtype`` (for
    :func:`fastrnn._tiles.new_pool`): the same row helpers as the kernels' own loop, on the
    same C-contiguous array types, so a split step gives the same bits as an unsplit one."""
    zero = dtype.type(0)

    def worker(address):
        job = carray(pointer_to(address_of(address), np.int64(0)), (JOB_FIELDS,))
        T, N, H = job[_STEPS], job[_ROWS], job[_UNITS]
        t, first, stop = job[_STEP], job[_FIRST], job[_STOP]
        gates = carray(pointer_to(job[_GATES], zero), (T, N, 4 * H))
        c_hist = carray(pointer_to(job[_C_HIST], zero), (T + 1, N, H))
        tanh_c = carray(pointer_to(job[_TANH_C], zero), (T, N, H))
        if job[_DA] == 0:
            hs = carray(pointer_to(job[_HS], zero), (N, T, H))
            h_hist = carray(pointer_to(job[_H_HIST], zero), (T + 1, N, H))
            b = carray(pointer_to(job[_BIAS], zero), (4 * H,))
            _lstm_forward_rows(hs, gates, c_hist, tanh_c, h_hist, b, t, first, stop)
        else:
            dA = carray(pointer_to(job[_DA], zero), (T, N, 4 * H))
            dh = carray(pointer_to(job[_DH], zero), (N, H))
            dc = carray(pointer_to(job[_DC], zero), (N, H))
            dhs = carray(pointer_to(job[_DHS], zero), (N, T, H))
            _lstm_backward_rows(dA, dh, dc, dhs, gates, c_hist, tanh_c, t, first, stop)

    return callback(worker)


@kernel
def lstm_forward(
    hs, gates, c_hist, tanh_c, h_hist, scratchT, xs_tm, xs, h0, c0, Wx, Wh, b, WhT, panels, pool,
    cell_pool,
):  # fmt: skip
    """Run an LSTM over a sequence.

    Parameters
    ----------
    hs : (N, T, H) array
        Out: the state after every step, batch-major (the layer's return value).
    gates : (T, N, 4H) array
        Out: the activated gates ``f, g, i, o`` of every step.
    c_hist : (T + 1, N, H) array
        Out: the initial cell state and the cell state after every step.
    tanh_c : (T, N, H) array
        Out: ``tanh(c_t)`` of every step, kept for the backward pass.
    h_hist : (T + 1, N, H) array
        Out: the initial state and the state after every step.
    scratchT : (4H, N) array
        Scratch, used with ``WhT``.
    xs_tm, xs, h0 : arrays
        As in :func:`rnn_forward`: the time-major copy the kernel makes of the caller's
        ``xs`` (N, T, D), and the initial state, (0, H) for zeros.
    c0 : (N, H) or (0, H) array
        The initial cell state; empty for zeros.
    Wx : (D, 4H) array
    Wh : (H, 4H) array
    b : (4H,) array
    WhT : (4H, H) or (0, H) array
        A contiguous ``Wh.T`` when the plan transposes the forward products, else empty.
    panels : (ceil(G / 16), H, 16) or (0, H, 16) array
        Out: ``Wh`` packed (``G`` its columns) when the plan packs the per-step products,
        else empty.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that packed products run on (:func:`fastrnn._tiles.new_pool`).
    cell_pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that split each step's element-wise work by batch rows
        (:func:`lstm_cell_worker`); ``fastrnn._tiles.UNUSED_POOL`` runs it here.
    """
    T, N, D = xs_tm.shape
    H = Wh.shape[0]
    _load_sequence(xs_tm, xs)
    _load_state(h_hist[0], h0)
    _load_state(c_hist[0], c0)
    if panels.shape[0] != 0:
        pack_panels(panels, Wh, False)
    gemm(gates.reshape((T * N, 4 * H)), xs_tm.reshape((T * N, D)), Wx, False, False, False)
    skipped = _skipped_steps(h_hist[0], Wh)
    for t in range(T):
        if t >= skipped:
            _recurrent_product(gates[t], h_hist[t], Wh, WhT, scratchT, panels, pool)
        threads = split_threads(cell_pool, N)
        if threads <= 1:
            _lstm_forward_rows(hs, gates, c_hist, tanh_c, h_hist, b, t, 0, N)
        else:
            _post_lstm_forward_jobs(cell_pool, threads, t, hs, gates, c_hist, tanh_c, h_hist, b)


@kernel
def lstm_backward(
    dxs, dWx, dWh, db, dh, dc, dhT, dA, dhs, gates, c_hist, tanh_c, h_hist, xs, Wx, Wh, WhT,
    route, panels, pool, cell_pool,
):  # fmt: skip
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
    dhT : (H, N) array
        Scratch.
    dA : (T, N, 4H) array
        Out: gradient of every gate pre-activation.
    dhs : (N, T, H) array
        In: gradient of every output state, batch-major. Not modified.
    gates, c_hist, tanh_c, h_hist, xs, Wx, Wh
        As saved and used by :func:`lstm_forward`.
    WhT : (4H, H) or (0, H) array
        A contiguous ``Wh.T`` for ``route == BACKPROP_VIA_WT``, else empty.
    route : int
        How the per-step ``dA_t @ Wh.T`` runs: a ``BACKPROP_*`` constant.
    panels : (ceil(H / 16), G, 16) or (0, G, 16) array
        Out: ``Wh.T`` packed when the plan packs the per-step products, else empty.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that packed products run on (:func:`fastrnn._tiles.new_pool`).
    cell_pool : (1 + threads, JOB_FIELDS) int64 array
        As for :func:`lstm_forward`.
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    if panels.shape[0] != 0:
        pack_panels(panels, Wh, True)
    for t in range(T - 1, -1, -1):
        threads = split_threads(cell_pool, N)
        if threads <= 1:
            _lstm_backward_rows(dA, dh, dc, dhs, gates, c_hist, tanh_c, t, 0, N)
        else:
            _post_lstm_backward_jobs(cell_pool, threads, t, dA, dh, dc, dhs, gates, c_hist, tanh_c)
        _backprop_to_state(dh, dhT, dA[t], Wh, WhT, False, route, panels, pool)
    rows = T * N
    _input_side_grads(
        dxs.reshape((rows, D)), dWx, db, dA.reshape((rows, 4 * H)), xs.reshape((rows, D)), Wx
    )
    _recurrent_weight_grad(dWh, h_hist, dA)


# --------------------------------------------------------------------------------------
# GRU, gates z, r, h~ (reset applied before the product, as in the book):
#   h~ = tanh(x @ Wxh + (r * h) @ Whh + bh),  h_t = (1 - z) * h_{t-1} + z * h~
# --------------------------------------------------------------------------------------


def forward_panel_count(gates, H):
    """Panels of a forward kernel's packed ``Wh`` (H, gates * H): one set over all its
    columns, except the GRU's (3 gates), whose two blocks are packed apart
    (:func:`_gru_forward_panels`)."""
    if gates == 3:
        return panel_count(2 * H) + panel_count(H)
    return panel_count(gates * H)


@helper
def _gru_forward_panels(panels, H):
    """The forward panels of ``Wh[:, :2H]`` and of ``Wh[:, 2H:]``, views of ``panels``
    (:func:`gru_forward`); both empty when ``panels`` is."""
    split = min(panels.shape[0], (2 * H + PANEL - 1) // PANEL)
    return panels[:split], panels[split:]


@helper
def _gru_backward_panels(panels, H):
    """The backward panels of ``Wh[:, :2H].T`` (depth 2H) and of ``Wh[:, 2H:].T`` (depth
    H): the memory of ``panels`` (P, 3H, PANEL) as (P, 2H, PANEL) then (P, H, PANEL)."""
    P = panels.shape[0]
    flat = panels.reshape(panels.size)
    split = P * 2 * H * PANEL
    return (
        flat[:split].reshape((P, 2 * H, PANEL)),
        flat[split:].reshape((P, H, PANEL)),
    )


@helper
def _pack_gru(panels, Wh, transposed):
    """Pack ``Wh[:, :2H]`` and ``Wh[:, 2H:]`` (their transposes when ``transposed``) into
    ``panels`` as :func:`gru_forward` (:func:`gru_backward`) reads them."""
    H = Wh.shape[0]
    if transposed:
        panels_zr, panels_h = _gru_backward_panels(panels, H)
    else:
        panels_zr, panels_h = _gru_forward_panels(panels, H)
    pack_panels(panels_zr, Wh[:, : 2 * H], transposed)
    pack_panels(panels_h, Wh[:, 2 * H :], transposed)


@helper
def _gru_gate_rows(gates, rh, h_hist, b, t, first, stop):
    """Batch rows ``first .. stop - 1`` of step ``t``'s first element-wise forward phase,
    after the product with ``Wh[:, :2H]``: activate ``z`` and ``r`` (``gates[t]`` holds
    their pre-activations without the bias) and form ``r * h_{t-1}``. Arrays as in
    :func:`gru_forward`."""
    H = h_hist.shape[2]
    b_zr = b[: 2 * H]
    for n in range(first, stop):
        a = gates[t, n]
        zr, r = a[: 2 * H], a[H : 2 * H]
        h_prev = h_hist[t, n]
        rh_n = rh[t, n]
        for j in range(2 * H):
            zr[j] = fast_sigmoid(zr[j] + b_zr[j])
        for j in range(H):
            rh_n[j] = r[j] * h_prev[j]


@helper
def _gru_state_rows(hs, gates, h_hist, b, t, first, stop):
    """Batch rows ``first .. stop - 1`` of step ``t``'s second element-wise forward phase,
    after the product with ``Wh[:, 2H:]``: activate the candidate and write the new state
    to ``h_hist[t + 1]`` and ``hs[:, t]``. Arrays as in :func:`gru_forward`."""
    H = h_hist.shape[2]
    one = gates.dtype.type(1.0)
    b_h = b[2 * H :]
    for n in range(first, stop):
        a = gates[t, n]
        z, h_cand = a[:H], a[2 * H :]
        h_prev, h = h_hist[t, n], h_hist[t + 1, n]
        for j in range(H):
            h_cand[j] = fast_tanh(h_cand[j] + b_h[j])
        for j in range(H):
            h[j] = (one - z[j]) * h_prev[j] + z[j] * h_cand[j]
        out = hs[n, t]
        for j in range(H):
            out[j] = h[j]


@helper
def _gru_candidate_grad_rows(dA, dh, dhs, gates, h_hist, t, first, stop):
    """Batch rows ``first .. stop - 1`` of step ``t``'s first element-wise backward phase:
    ``dh`` (from step ``t + 1``) plus ``dhs[:, t]`` is the gradient of ``h_t``; from it the
    gradients of the candidate's and ``z``'s pre-activations, and ``dh`` becomes the part
    of the gradient of ``h_{t-1}`` that passes through no product. Arrays as in
    :func:`gru_backward`."""
    H = dh.shape[1]
    one = dA.dtype.type(1.0)
    for n in range(first, stop):
        a = gates[t, n]
        z, h_cand = a[:H], a[2 * H :]
        d = dA[t, n]
        dz, dh_cand = d[:H], d[2 * H :]
        h_prev = h_hist[t, n]
        dh_n, dhs_n = dh[n], dhs[n, t]
        for j in range(H):
            dh_n[j] += dhs_n[j]
        for j in range(H):
            dh_cand[j] = dh_n[j] * z[j] * (one - h_cand[j] * h_cand[j])
        for j in range(H):
            dz[j] = dh_n[j] * (h_cand[j] - h_prev[j]) * z[j] * (one - z[j])
        for j in range(H):
            dh_n[j] *= one - z[j]


@helper
def _gru_reset_grad_rows(dA, dh, dhr, gates, h_hist, t, first, stop):
    """Batch rows ``first .. stop - 1`` of step ``t``'s second element-wise backward phase,
    after ``dhr = dA_h~ @ Wh[:, 2H:].T``: the gradient of ``r``'s pre-activation, and what
    ``r * h_{t-1}`` passes on to ``dh``. Arrays as in :func:`gru_backward`."""
    H = dh.shape[1]
    one = dA.dtype.type(1.0)
    for n in range(first, stop):
        r = gates[t, n, H : 2 * H]
        dr = dA[t, n, H : 2 * H]
        dhr_n = dhr[n]
        dh_n = dh[n]
        h_prev = h_hist[t, n]
        for j in range(H):
            dh_n[j] += r[j] * dhr_n[j]
        for j in range(H):
            dr[j] = dhr_n[j] * h_prev[j] * r[j] * (one - r[j])


# A GRU cell job: one thread's batch rows of one element-wise phase of one step. The arrays
# travel as addresses (0 for those the phase does not use); their shapes follow from
# _GRU_STEPS, _GRU_ROWS, _GRU_UNITS.
(
    _GRU_PHASE, _GRU_HS, _GRU_GATES, _GRU_RH, _GRU_H_HIST, _GRU_BIAS, _GRU_DA, _GRU_DH,
    _GRU_DHR, _GRU_DHS, _GRU_STEPS, _GRU_ROWS, _GRU_UNITS, _GRU_STEP, _GRU_FIRST, _GRU_STOP,
) = range(16)  # fmt: skip
#: A GRU step's element-wise phases, in the order a step runs them.
GRU_GATES, GRU_STATE, GRU_CANDIDATE_GRAD, GRU_RESET_GRAD = range(4)


@helper
def _gru_rows(phase, t, first, stop, hs, gates, rh, h_hist, b, dA, dh, dhr, dhs):
    """Rows ``first .. stop - 1`` of one element-wise ``phase`` of step ``t``."""
    if phase == GRU_GATES:
        _gru_gate_rows(gates, rh, h_hist, b, t, first, stop)
    elif phase == GRU_STATE:
        _gru_state_rows(hs, gates, h_hist, b, t, first, stop)
    elif phase == GRU_CANDIDATE_GRAD:
        _gru_candidate_grad_rows(dA, dh, dhs, gates, h_hist, t, first, stop)
    else:
        _gru_reset_grad_rows(dA, dh, dhr, gates, h_hist, t, first, stop)


@helper
def _address(array):
    """The address of ``array``'s data, 0 for an empty array (which a phase does not use)."""
    return array.ctypes.data if array.size != 0 else 0


@helper
def _run_gru_rows(cell_pool, phase, t, hs, gates, rh, h_hist, b, dA, dh, dhr, dhs):
    """One element-wise ``phase`` of step ``t`` over all batch rows: on the calling thread,
    or split by rows between ``cell_pool``'s threads (:func:`gru_cell_worker`). The arrays
    the phase does not use may be empty."""
    T, N, G = gates.shape
    threads = split_threads(cell_pool, N)
    if threads <= 1:
        _gru_rows(phase, t, 0, N, hs, gates, rh, h_hist, b, dA, dh, dhr, dhs)
        return
    jobs = cell_pool[1 : 1 + threads]
    for k in range(threads):
        job = jobs[k]
        job[_GRU_PHASE] = phase
        job[_GRU_HS] = _address(hs)
        job[_GRU_GATES] = _address(gates)
        job[_GRU_RH] = _address(rh)
        job[_GRU_H_HIST] = _address(h_hist)
        job[_GRU_BIAS] = _address(b)
        job[_GRU_DA] = _address(dA)
        job[_GRU_DH] = _address(dh)
        job[_GRU_DHR] = _address(dhr)
        job[_GRU_DHS] = _address(dhs)
        job[_GRU_STEPS] = T
        job[_GRU_ROWS] = N
        job[_GRU_UNITS] = G // 3
        job[_GRU_STEP] = t
        job[_GRU_FIRST] = k * N // threads
        job[_GRU_STOP] = (k + 1) * N // threads
    call_dispatch(
        cell_pool[0, DISPATCH], threads, cell_pool[0, WORKER], jobs.ctypes.data, JOB_BYTES
    )


def gru_cell_worker(dtype):
    """The C callback that runs one GRU cell job in ``dtype`` (for
    :func:`fastrnn._tiles.new_pool`): the same row helpers as the kernels' own loop, on the
    same C-contiguous array types, so a split step gives the same bits as an unsplit one."""
    zero = dtype.type(0)

    def worker(address):
        job = carray(pointer_to(address_of(address), np.int64(0)), (JOB_FIELDS,))
        T, N, H = job[_GRU_STEPS], job[_GRU_ROWS], job[_GRU_UNITS]
        phase = job[_GRU_PHASE]
        forward = phase == GRU_GATES or phase == GRU_STATE
        gates = carray(pointer_to(job[_GRU_GATES], zero), (T, N, 3 * H))
        h_hist = carray(pointer_to(job[_GRU_H_HIST], zero), (T + 1, N, H))
        # What the other direction's phases use arrives as address 0: empty views.
        fwd, bwd = (1, 0) if forward else (0, 1)
        hs = carray(pointer_to(job[_GRU_HS], zero), (fwd * N, T, H))
        rh = carray(pointer_to(job[_GRU_RH], zero), (fwd * T, N, H))
        b = carray(pointer_to(job[_GRU_BIAS], zero), (fwd * 3 * H,))
        dA = carray(pointer_to(job[_GRU_DA], zero), (bwd * T, N, 3 * H))
        dh = carray(pointer_to(job[_GRU_DH], zero), (bwd * N, H))
        dhr = carray(pointer_to(job[_GRU_DHR], zero), (bwd * N, H))
        dhs = carray(pointer_to(job[_GRU_DHS], zero), (bwd * N, T, H))
        first, stop = job[_GRU_FIRST], job[_GRU_STOP]
        _gru_rows(phase, job[_GRU_STEP], first, stop, hs, gates, rh, h_hist, b, dA, dh, dhr, dhs)

    return callback(worker)


@kernel
def gru_forward(
    hs, gates, rh, h_hist, scratchT, xs_tm, xs, h0, Wx, Wh, b, WhT, panels, pool, cell_pool
):  # fmt: skip
    """Run a GRU over a sequence.

    Parameters
    ----------
    hs : (N, T, H) array
        Out: the state after every step, batch-major (the layer's return value).
    gates : (T, N, 3H) array
        Out: the activated gates ``z, r, h~`` of every step.
    rh : (T, N, H) array
        Out: ``r * h_{t-1}`` of every step, the input of the candidate's product.
    h_hist : (T + 1, N, H) array
        Out: the initial state and the state after every step.
    scratchT : (3H, N) array
        Scratch, used with ``WhT``.
    xs_tm, xs, h0 : arrays
        As in :func:`rnn_forward`: the time-major copy the kernel makes of the caller's
        ``xs`` (N, T, D), and the initial state, (0, H) for zeros.
    Wx : (D, 3H) array
    Wh : (H, 3H) array
    b : (3H,) array
    WhT : (3H, H) or (0, H) array
        A contiguous ``Wh.T`` when the plan transposes the forward products, else empty.
    panels : (ceil(2H / 16) + ceil(H / 16), H, 16) or (0, H, 16) array
        Out: when the plan packs the per-step products, ``Wh[:, :2H]`` packed into the
        first ``ceil(2H / 16)`` panels and ``Wh[:, 2H:]`` into the others (the two products
        of a step); else empty.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that packed products run on (:func:`fastrnn._tiles.new_pool`).
    cell_pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that split each step's element-wise phases by batch rows
        (:func:`gru_cell_worker`); ``fastrnn._tiles.UNUSED_POOL`` runs them here.
    """
    T, N, D = xs_tm.shape
    H = Wh.shape[0]
    # Empty views for the arrays of the backward phases, which these phases do not use.
    no_dA, no_dh, no_dhs = gates[:0], h_hist[0, :0], hs[:0]
    _load_sequence(xs_tm, xs)
    _load_state(h_hist[0], h0)
    Wh_zr, Wh_h = Wh[:, : 2 * H], Wh[:, 2 * H :]
    panels_zr, panels_h = _gru_forward_panels(panels, H)
    if panels.shape[0] != 0:
        _pack_gru(panels, Wh, False)
    gemm(gates.reshape((T * N, 3 * H)), xs_tm.reshape((T * N, D)), Wx, False, False, False)
    # From a zero state, the first step's products add nothing (r * h is zero too).
    skipped_zr = _skipped_steps(h_hist[0], Wh_zr)
    for t in range(T):
        if t >= skipped_zr:
            _recurrent_product(
                gates[t, :, : 2 * H],
                h_hist[t],
                Wh_zr,
                WhT[: 2 * H],
                scratchT[: 2 * H],
                panels_zr,
                pool,
            )
        _run_gru_rows(
            cell_pool, GRU_GATES, t, hs, gates, rh, h_hist, b, no_dA, no_dh, no_dh, no_dhs
        )
        if t > 0 or _skipped_steps(rh[0], Wh_h) == 0:
            _recurrent_product(
                gates[t, :, 2 * H :], rh[t], Wh_h, WhT[2 * H :], scratchT[2 * H :], panels_h, pool
            )
        _run_gru_rows(
            cell_pool, GRU_STATE, t, hs, gates, rh, h_hist, b, no_dA, no_dh, no_dh, no_dhs
        )


@kernel
def gru_backward(
    dxs, dWx, dWh, db, dh, dhr, dhT, dA, dhs, gates, rh, h_hist, xs, Wx, Wh, WhT, route,
    panels, pool, cell_pool,
):  # fmt: skip
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
    dhT : (H, N) array
        Scratch.
    dA : (T, N, 3H) array
        Out: gradient of every gate pre-activation.
    dhs : (N, T, H) array
        In: gradient of every output state, batch-major. Not modified.
    gates, rh, h_hist, xs, Wx, Wh
        As saved and used by :func:`gru_forward`.
    WhT : (3H, H) or (0, H) array
        A contiguous ``Wh.T`` for ``route == BACKPROP_VIA_WT``, else empty.
    route : int
        How the per-step products with ``Wh.T`` run: a ``BACKPROP_*`` constant.
    panels : (ceil(H / 16), 3H, 16) or (0, 3H, 16) array
        Out: when the plan packs the per-step products, ``Wh[:, :2H].T`` and ``Wh[:, 2H:].T``
        packed, one after the other in its memory (panels of depth 2H, then of depth H);
        else empty.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads that packed products run on (:func:`fastrnn._tiles.new_pool`).
    cell_pool : (1 + threads, JOB_FIELDS) int64 array
        As for :func:`gru_forward`.
    """
    T, N, D = xs.shape
    H = Wh.shape[0]
    # Empty views for the arrays of the forward phases, which these phases do not use.
    no_hs, no_rh, no_b = dhs[:0], h_hist[:0], db[:0]
    Wh_zr, Wh_h = Wh[:, : 2 * H], Wh[:, 2 * H :]
    WhT_zr, WhT_h = WhT[: 2 * H], WhT[2 * H :]
    panels_zr, panels_h = _gru_backward_panels(panels, H)
    if panels.shape[0] != 0:
        _pack_gru(panels, Wh, True)
    for t in range(T - 1, -1, -1):
        # dh becomes the total gradient of h_t, then that of h_{t-1}, in place.
        _run_gru_rows(
            cell_pool, GRU_CANDIDATE_GRAD, t, no_hs, gates, no_rh, h_hist, no_b, dA, dh, dhr, dhs
        )
        _backprop_to_state(dhr, dhT, dA[t, :, 2 * H :], Wh_h, WhT_h, False, route, panels_h, pool)
        _run_gru_rows(
            cell_pool, GRU_RESET_GRAD, t, no_hs, gates, no_rh, h_hist, no_b, dA, dh, dhr, dhs
        )
        _backprop_to_state(dh, dhT, dA[t, :, : 2 * H], Wh_zr, WhT_zr, True, route, panels_zr, pool)
    rows = T * N
    dA2d = dA.reshape((rows, 3 * H))
    _input_side_grads(dxs.reshape((rows, D)), dWx, db, dA2d, xs.reshape((rows, D)), Wx)
    # Less the first step's rows where its state, or r * h, is zero (they add nothing).
    first_zr = N if T > 0 and _adds_nothing(h_hist[0], dA[0, :, : 2 * H]) else 0
    first_h = N if T > 0 and _adds_nothing(rh[0], dA[0, :, 2 * H :]) else 0
    _state_weight_grad(dWh[:, : 2 * H], h_hist[:T].reshape((rows, H)), dA2d[:, : 2 * H], first_zr)
    _state_weight_grad(dWh[:, 2 * H :], rh.reshape((rows, H)), dA2d[:, 2 * H :], first_h)


# --------------------------------------------------------------------------------------
# What the planner times: the per-step products alone, repeated
# --------------------------------------------------------------------------------------


@kernel
def repeat_recurrent_product(reps, A, h_prev, W, WT, scratchT, panels, pool):
    """Run :func:`_recurrent_product` ``reps`` times (for :mod:`fastrnn._planner`)."""
    for _ in range(reps):
        _recurrent_product(A, h_prev, W, WT, scratchT, panels, pool)


@kernel
def repeat_backprop_to_state(reps, dh, dhT, dA_t, W, WT, route, panels, pool):
    """Run :func:`_backprop_to_state` ``reps`` times (for :mod:`fastrnn._planner`)."""
    for _ in range(reps):
        _backprop_to_state(dh, dhT, dA_t, W, WT, False, route, panels, pool)


@kernel
def repeat_gru_recurrent_products(reps, A, h_prev, W, WT, scratchT, panels, pool):
    """Run a GRU step's two forward products (``h @ W[:, :2H]``, then one with
    ``W[:, 2H:]``) as :func:`gru_forward` does, ``reps`` times (for :mod:`fastrnn._planner`)."""
    H = W.shape[0]
    panels_zr, panels_h = _gru_forward_panels(panels, H)
    for _ in range(reps):
        _recurrent_product(
            A[:, : 2 * H], h_prev, W[:, : 2 * H], WT[: 2 * H], scratchT[: 2 * H], panels_zr, pool
        )
        _recurrent_product(
            A[:, 2 * H :], h_prev, W[:, 2 * H :], WT[2 * H :], scratchT[2 * H :], panels_h, pool
        )


@kernel
def repeat_gru_backprop_to_state(reps, dh, dhr, dhT, dA_t, W, WT, route, panels, pool):
    """Run a GRU step's two backward products as :func:`gru_backward` does, ``reps`` times
    (for :mod:`fastrnn._planner`)."""
    H = W.shape[0]
    panels_zr, panels_h = _gru_backward_panels(panels, H)
    W_zr, W_h, WT_zr, WT_h = W[:, : 2 * H], W[:, 2 * H :], WT[: 2 * H], WT[2 * H :]
    for _ in range(reps):
        _backprop_to_state(dhr, dhT, dA_t[:, 2 * H :], W_h, WT_h, False, route, panels_h, pool)
        _backprop_to_state(dh, dhT, dA_t[:, : 2 * H], W_zr, WT_zr, True, route, panels_zr, pool)


@kernel
def repeat_pack(reps, panels, W, transposed, gru):
    """Pack ``W`` (or ``W.T``) into ``panels`` ``reps`` times, as the GRU's kernels do when
    ``gru`` (for :mod:`fastrnn._planner`)."""
    for _ in range(reps):
        if gru:
            _pack_gru(panels, W, transposed)
        else:
            pack_panels(panels, W, transposed)
