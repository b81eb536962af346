"""Numba kernels for the attention layers of the book's chapter 8.

Everything here is pure compute: no validation, no Python objects, no allocation. The
classes in :mod:`fastrnn.attention_layers` check every shape and dtype, own the buffers and
call these kernels with C-contiguous arrays of one float dtype (float32 or float64).

Shapes: ``N`` batch, ``Te`` encoder steps, ``Td`` decoder steps, ``H`` hidden size.

What the time kernels compute, for every sample ``n`` (``E = hs_enc[n]`` (Te, H),
``D = hs_dec[n]`` (Td, H)), in one call for all ``Td`` decoder steps:

* forward: ``S = D @ E.T``; ``A`` = softmax of every row of ``S`` (row maximum
  subtracted first); ``C = A @ E``.
* backward, from ``dC``: ``dA = dC @ E.T``; ``dS = A * dA - A * rowsum(A * dA)``;
  ``dE = A.T @ dC + dS.T @ D``; ``dD = dS @ E``.

Why explicit loops and not a ``gemm`` per sample
------------------------------------------------
Every product here is tiny (at the book's shapes ``Td = 10``, ``Te = 29``, ``H = 256``:
10x256 by 256x29), and there is one per sample and per formula. Measured on a shared
2-core VM (AMD EPYC, AVX2, NumPy's OpenBLAS 0.3.31, 2 threads), interleaved in
one process, forward + backward at N=128, Te=29, Td=10, H=256: 5.3 ms with the loops
below against 7.5 ms with ``gemm`` calls (two per sample forward, four backward) in
float32, 10.9 against 12.5 ms in float64; at N=1, Te=29, Td=1: 9.3 against 10.2 µs
(float32), 12.7 against 18.4 µs (float64). A BLAS call costs about 1 µs of set-up
(argument checks, small-matrix dispatch) whatever its size, and OpenBLAS gets no more
out of a 10x29 output than these loops do. The loops also keep NaN and inf exactly where
NumPy puts them, since every product is computed (a BLAS may skip zero factors, and
``0 * inf`` must give NaN here).

How the loops are laid out
--------------------------
Every innermost loop runs over ``H``, along contiguous rows, so that it vectorises; dot
products are reductions, which ``reassoc`` (in fastrnn's fastmath flags) lets LLVM split
across vector lanes. Rows of ``E`` are taken four at a time: four dot products share the
loads of one vector, and a weighted sum of four rows loads and stores its output once
instead of four times. The loop over the rows of ``D`` (or ``A``, ``dC``) runs inside the
loop over these blocks, so that a block is read from the L1 cache ``Td`` times instead of
from L2 (``E`` alone is 30 KB in float32 at the book's shapes). Against one row at a time
(and the rows of ``D`` outside), this takes 10-15% off at the book's training shapes.
"""

from __future__ import annotations

from ._jit import helper, kernel
from ._math import fast_exp

# --------------------------------------------------------------------------------------
# Row and block operations, all along contiguous rows of length H (or Te)
# --------------------------------------------------------------------------------------


@helper
def _dot(x, y):
    """``x . y`` for two rows of one length."""
    total = x.dtype.type(0.0)
    for k in range(x.size):
        total += x[k] * y[k]
    return total


@helper
def _dots4(q, e0, e1, e2, e3):
    """``(q . e0, q . e1, q . e2, q . e3)``: four dot products sharing the loads of ``q``."""
    s0 = s1 = s2 = s3 = q.dtype.type(0.0)
    for k in range(q.size):
        x = q[k]
        s0 += x * e0[k]
        s1 += x * e1[k]
        s2 += x * e2[k]
        s3 += x * e3[k]
    return s0, s1, s2, s3


@helper
def _matmul_nt(S, Q, rows):
    """``S = Q @ rows.T``: every row of ``Q`` dotted with every row of ``rows``.

    ``S`` (M, R); ``Q`` (M, H); ``rows`` (R, H).
    """
    M = Q.shape[0]
    R = rows.shape[0]
    j = 0
    while j + 4 <= R:
        e0, e1, e2, e3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        for i in range(M):
            s = S[i]
            s[j], s[j + 1], s[j + 2], s[j + 3] = _dots4(Q[i], e0, e1, e2, e3)
        j += 4
    while j < R:
        e0 = rows[j]
        for i in range(M):
            S[i, j] = _dot(Q[i], e0)
        j += 1


@helper
def _matmul_nn(out, W, rows):
    """``out = W @ rows``: every row of ``out`` a weighted sum of the rows of ``rows``.

    ``out`` (M, H); ``W`` (M, R); ``rows`` (R, H). Rows are added four at a time (then
    two, then one), so that each row of ``out`` is loaded and stored once per group; the
    first group writes ``out``, so that no pass only zeroes it. Every group is written out
    in full: the same through calls of one helper for all group sizes measured 30% slower.
    """
    M = W.shape[0]
    R, H = rows.shape
    if R == 0:  # an empty sum
        out[:, :] = 0
        return
    if R >= 4:
        e0, e1, e2, e3 = rows[0], rows[1], rows[2], rows[3]
        for i in range(M):
            o, w = out[i], W[i]
            a0, a1, a2, a3 = w[0], w[1], w[2], w[3]
            for k in range(H):
                o[k] = a0 * e0[k] + a1 * e1[k] + a2 * e2[k] + a3 * e3[k]
        j = 4
    elif R >= 2:
        e0, e1 = rows[0], rows[1]
        for i in range(M):
            o, w = out[i], W[i]
            a0, a1 = w[0], w[1]
            for k in range(H):
                o[k] = a0 * e0[k] + a1 * e1[k]
        j = 2
    else:
        e0 = rows[0]
        for i in range(M):
            o = out[i]
            a0 = W[i, 0]
            for k in range(H):
                o[k] = a0 * e0[k]
        j = 1
    while j + 4 <= R:
        e0, e1, e2, e3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        for i in range(M):
            o, w = out[i], W[i]
            a0, a1, a2, a3 = w[j], w[j + 1], w[j + 2], w[j + 3]
            for k in range(H):
                o[k] += a0 * e0[k] + a1 * e1[k] + a2 * e2[k] + a3 * e3[k]
        j += 4
    if j + 2 <= R:
        e0, e1 = rows[j], rows[j + 1]
        for i in range(M):
            o, w = out[i], W[i]
            a0, a1 = w[j], w[j + 1]
            for k in range(H):
                o[k] += a0 * e0[k] + a1 * e1[k]
        j += 2
    if j < R:
        e0 = rows[j]
        for i in range(M):
            o = out[i]
            a0 = W[i, j]
            for k in range(H):
                o[k] += a0 * e0[k]


@helper
def _combine_two(out, weights1, rows1, weights2, rows2):
    """``out = weights1 @ rows1 + weights2 @ rows2``, both sums over the same ``R`` rows.

    ``out`` (H,); ``weights1``, ``weights2`` (R,), any stride; ``rows1``, ``rows2`` (R, H).
    Rows are taken two of each at a time, four terms per pass over ``out``, and the first
    pass writes ``out``, so that ``R = 1`` is one pass.
    """
    R, H = rows1.shape
    if R == 0:
        for k in range(H):
            out[k] = 0
        return
    a0, b0 = weights1[0], weights2[0]
    e0, f0 = rows1[0], rows2[0]
    if R >= 2:
        a1, b1 = weights1[1], weights2[1]
        e1, f1 = rows1[1], rows2[1]
        for k in range(H):
            out[k] = a0 * e0[k] + b0 * f0[k] + a1 * e1[k] + b1 * f1[k]
    else:
        for k in range(H):
            out[k] = a0 * e0[k] + b0 * f0[k]
    i = 2
    while i + 2 <= R:
        a0, b0, a1, b1 = weights1[i], weights2[i], weights1[i + 1], weights2[i + 1]
        e0, f0, e1, f1 = rows1[i], rows2[i], rows1[i + 1], rows2[i + 1]
        for k in range(H):
            out[k] += a0 * e0[k] + b0 * f0[k] + a1 * e1[k] + b1 * f1[k]
        i += 2
    if i < R:
        a0, b0 = weights1[i], weights2[i]
        e0, f0 = rows1[i], rows2[i]
        for k in range(H):
            out[k] += a0 * e0[k] + b0 * f0[k]


@helper
def _scale_into(out, weight, row):
    """``out = weight * row``: one row of an outer product."""
    for k in range(row.size):
        out[k] = weight * row[k]


@helper
def _softmax(s):
    """Softmax of the row ``s`` (R,), ``R >= 1``, in place, with the row maximum
    subtracted first.

    NaN and inf give what NumPy gives: a NaN or an inf anywhere in the row (or a row of
    all -inf) makes the whole row NaN. The maximum is taken with comparisons, which skip a
    NaN, but that NaN (or the ``inf - inf`` of an infinite maximum) still reaches the
    sum, and the sum every entry.
    """
    largest = s[0]
    for j in range(1, s.size):
        if s[j] > largest:
            largest = s[j]
    total = s.dtype.type(0.0)
    for j in range(s.size):
        e = fast_exp(s[j] - largest)
        s[j] = e
        total += e
    inverse = s.dtype.type(1.0) / total
    for j in range(s.size):
        s[j] *= inverse


@helper
def _softmax_backward(d, a):
    """``d = a * d - a * sum(a * d)`` in place: the gradient of the softmax input, as the
    book's ``Softmax.backward`` computes it (the same form, so NaN and inf land alike).

    ``d`` (R,): the gradient of the softmax output on entry; ``a`` (R,): that output.
    """
    total = d.dtype.type(0.0)
    for j in range(d.size):
        d[j] = a[j] * d[j]
        total += d[j]
    for j in range(d.size):
        d[j] -= a[j] * total


# --------------------------------------------------------------------------------------
# TimeAttention (and Attention, as Td = 1)
# --------------------------------------------------------------------------------------


@kernel
def time_attention_forward(out, A, hs_enc, hs_dec):
    """Attention of every decoder step over the encoder states, for the whole batch.

    Parameters
    ----------
    out : (N, Td, H) array
        Out: the context vectors ``A[n] @ hs_enc[n]``.
    A : (N, Td, Te) array
        Out: the attention weights, softmax over ``Te`` of ``hs_dec[n] @ hs_enc[n].T``;
        kept for the backward pass.
    hs_enc : (N, Te, H) array
        The encoder states, ``Te >= 1``.
    hs_dec : (N, Td, H) array
        The decoder states.
    """
    N, Td = A.shape[0], A.shape[1]
    for n in range(N):
        a = A[n]
        _matmul_nt(a, hs_dec[n], hs_enc[n])
        for i in range(Td):
            _softmax(a[i])
        _matmul_nn(out[n], a, hs_enc[n])


@kernel
def time_attention_backward(dhs_enc, dhs_dec, dS, dout, A, hs_enc, hs_dec):
    """Backpropagate through :func:`time_attention_forward`.

    Parameters
    ----------
    dhs_enc : (N, Te, H) array
        Out: gradient of the encoder states, summed over the decoder steps.
    dhs_dec : (N, Td, H) array
        Out: gradient of the decoder states.
    dS : (Td, Te) array
        Scratch: one sample's gradient of the weights, then of the scores.
    dout : (N, Td, H) array
        Gradient of the context vectors. Not modified.
    A, hs_enc, hs_dec
        As saved and used by :func:`time_attention_forward`.
    """
    N, Te = hs_enc.shape[0], hs_enc.shape[1]
    Td = A.shape[1]
    for n in range(N):
        enc, dec, dC, a = hs_enc[n], hs_dec[n], dout[n], A[n]
        _matmul_nt(dS, dC, enc)  # the gradient of the weights
        for i in range(Td):
            _softmax_backward(dS[i], a[i])
        _matmul_nn(dhs_dec[n], dS, enc)
        # Each encoder step collects from every decoder step: A.T @ dC + dS.T @ D.
        for j in range(Te):
            _combine_two(dhs_enc[n, j], a[:, j], dC, dS[:, j], dec)


# --------------------------------------------------------------------------------------
# AttentionWeight: a = softmax(hs @ h) per sample
# --------------------------------------------------------------------------------------


@kernel
def attention_weight_forward(a, hs, h):
    """Attention weights of one decoder state per sample.

    Parameters
    ----------
    a : (N, T) array
        Out: softmax over ``T`` of ``hs[n] @ h[n]``.
    hs : (N, T, H) array
        The encoder states, ``T >= 1``.
    h : (N, H) array
        The decoder state.
    """
    for n in range(a.shape[0]):
        _matmul_nt(a[n : n + 1], h[n : n + 1], hs[n])
        _softmax(a[n])


@kernel
def attention_weight_backward(dhs, dh, ds, da, a, hs, h):
    """Backpropagate through :func:`attention_weight_forward`.

    Parameters
    ----------
    dhs : (N, T, H) array
        Out: gradient of the encoder states, ``ds[t] * h[n]``.
    dh : (N, H) array
        Out: gradient of the decoder state, ``ds @ hs[n]``.
    ds : (1, T) array
        Scratch: one sample's gradient of the scores.
    da : (N, T) array
        Gradient of the weights. Not modified.
    a, hs, h
        As saved and used by :func:`attention_weight_forward`.
    """
    N, T = a.shape
    d = ds[0]
    for n in range(N):
        da_n = da[n]
        for t in range(T):
            d[t] = da_n[t]
        _softmax_backward(d, a[n])
        _matmul_nn(dh[n : n + 1], ds, hs[n])
        for t in range(T):
            _scale_into(dhs[n, t], d[t], h[n])


# --------------------------------------------------------------------------------------
# WeightSum: c = a @ hs per sample
# --------------------------------------------------------------------------------------


@kernel
def weight_sum_forward(c, hs, a):
    """The weighted sum of the encoder states per sample.

    Parameters
    ----------
    c : (N, H) array
        Out: ``a[n] @ hs[n]``.
    hs : (N, T, H) array
    a : (N, T) array
        The weights (any values; the attention layers pass a softmax).
    """
    for n in range(c.shape[0]):
        _matmul_nn(c[n : n + 1], a[n : n + 1], hs[n])


@kernel
def weight_sum_backward(dhs, da, dc, hs, a):
    """Backpropagate through :func:`weight_sum_forward`.

    Parameters
    ----------
    dhs : (N, T, H) array
        Out: gradient of ``hs``, ``a[n, t] * dc[n]``.
    da : (N, T) array
        Out: gradient of ``a``, ``hs[n] @ dc[n]``.
    dc : (N, H) array
        Gradient of ``c``. Not modified.
    hs, a
        As used by :func:`weight_sum_forward`.
    """
    N, T = a.shape
    for n in range(N):
        _matmul_nt(da[n : n + 1], dc[n : n + 1], hs[n])
        for t in range(T):
            _scale_into(dhs[n, t], a[n, t], dc[n])
