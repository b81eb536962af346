"""Numba kernels for the book's other time layers: embedding, affine, losses and dropout.

Everything here is pure compute: no validation, no Python objects, no allocation. The
classes in :mod:`fastrnn.sequence_layers` check every shape, dtype and id, own the buffers
and call these kernels with C-contiguous arrays of one float dtype (float32 or float64);
ids arrive as C-contiguous int64 arrays already checked to lie in range.

Shapes: ``N`` batch, ``T`` time steps, ``D`` input (embedding) size, ``M`` affine output
size, ``V`` vocabulary size, ``R = N * T`` rows (the sequence layers treat every step of
every sample alike, so most kernels see ``(R, .)`` matrices).

Argument order: outputs and saved activations first, then inputs and parameters.

What each layer costs, and why it is written this way
-----------------------------------------------------
* Embedding: a gather of rows (forward) and a scatter-add into a zeroed gradient
  (backward), one pass each. The book allocates and zeroes a (V, D) gradient per time step.
* Affine: two or three GEMMs, which dominate. ``W`` is taken as given or as its contiguous
  transpose (weight tying passes ``embed_W.T``, a Fortran-ordered view), so neither ``W``
  nor its gradient is ever copied: BLAS reads either orientation, and ``dW`` is written
  straight into the layer's gradient, transposed when that is its layout. The forward
  fills the output with ``b`` and lets the GEMM accumulate: OpenBLAS zeroes C before a
  ``beta = 0`` product anyway, so the bias costs no extra pass. Large outputs split the
  fill between the BLAS library's threads (:func:`bias_worker`), as OpenBLAS splits its
  zeroing: on 2 cores (AMD EPYC Zen 4), filling (700, 10000) float32 took 1.5 ms on the
  calling thread, about twice OpenBLAS's zeroing.
* Softmax cross-entropy: per row a maximum, a sum of ``exp``, and one ``log``; only the
  row's log-sum-exp is kept. The backward recomputes ``softmax = exp(x - lse)`` and writes
  the gradient in one pass, instead of keeping (and copying) an (R, V) softmax. Large
  batches split their rows between the BLAS library's threads (:func:`softmax_worker`, run
  through OpenBLAS's ``gotoblas_pthread`` as :mod:`fastrnn._tiles` runs packed products):
  a second thread pool would fight OpenBLAS's workers, which spin after every product. On 2
  cores (AMD EPYC, AVX2), forward and backward over (700, 10000) float32 scores took 8.9 ms
  instead of 15.4 right after a NumPy product. The row
  maximum uses LLVM's ``maxnum``, which LLVM vectorises without the ``nnan`` flag (a
  compare-and-select loop stays scalar): measured on 2 cores (AMD EPYC, AVX2), 0.26 ns per
  float32 element against 0.39 ns. (``llvm.maximum`` would propagate NaN like ``np.max``,
  but the x86 backend of LLVM 14, Numba 0.59's, cannot compile it.)
* Sigmoid cross-entropy: one pass computing the loss and ``sigmoid(x) - t``; the backward
  scales that.
* Dropout: one pass writing the mask and the output. The uniform draws come straight from
  NumPy's global MT19937 state, generated a block of 624 words at a time as NumPy does but
  vectorised and never stored: on 2 cores (AMD EPYC Zen 4), the layer's forward over
  (20, 35, 650) float32 took 0.38 ms against 2.06 with ``np.random.rand`` (alternated,
  a NumPy product before each call), with the same numbers and the same final state
  (:func:`dropout_forward_mt19937`; :func:`dropout_forward` takes ``np.random.rand``'s
  draws when the global generator is not an MT19937).

The element-wise products of the backward passes are kernels too, not NumPy expressions:
NumPy warns about ``inf * 0``, and NaN and inf are not errors here.

float32 ``exp`` is :func:`fastrnn._math.fast_exp`; sums of losses accumulate in float64.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

from ._blas import gemm
from ._jit import callback, helper, kernel
from ._math import fast_exp
from ._tiles import (
    DISPATCH,
    JOB_BYTES,
    JOB_FIELDS,
    WORKER,
    address_of,
    call_dispatch,
    pointer_to,
    split_threads,
)

# --------------------------------------------------------------------------------------
# Row helpers
# --------------------------------------------------------------------------------------


@intrinsic
def _maxnum(typingctx, a, b):
    """``max(a, b)`` as LLVM's ``llvm.maxnum``: a NaN operand is skipped (the other one is
    returned). Unlike a compare-and-select, a loop of these vectorises without ``nnan``."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return a(a, b), codegen


@helper
def _row_max(row):
    """The largest entry of a non-empty row, NaN entries skipped (NaN if all are NaN).

    Used as the shift of a log-sum-exp, where skipping NaN is harmless: a NaN entry still
    makes the sum of exps, and so the result, NaN.
    """
    m = row[0]
    for v in range(1, row.size):
        m = _maxnum(m, row[v])
    return m


@helper
def _sum_exp_shifted(row, shift):
    """``sum(exp(row - shift))`` in the row's dtype (vectorised; ``reassoc`` lets LLVM
    split the sum across lanes)."""
    total = row.dtype.type(0.0)
    for v in range(row.size):
        total += fast_exp(row[v] - shift)
    return total


@helper
def _copy_row(dst, src):
    """``dst[:] = src`` for two rows of one length."""
    for j in range(dst.size):
        dst[j] = src[j]


@helper
def _add_row(dst, src):
    """``dst += src`` for two rows of one length."""
    for j in range(dst.size):
        dst[j] += src[j]


@helper
def _fill_rows(a, value):
    """``a[...] = value`` for a 2-D array, row by row so that the loop vectorises."""
    for r in range(a.shape[0]):
        row = a[r]
        for j in range(row.size):
            row[j] = value


# --------------------------------------------------------------------------------------
# TimeEmbedding
# --------------------------------------------------------------------------------------


@kernel
def embedding_forward(out, ids, W):
    """Look up one row of ``W`` per id.

    Parameters
    ----------
    out : (N, T, D) array
        Out: ``out[n, t] = W[ids[n, t]]``.
    ids : (N, T) int64 array
        Word ids, each in ``[0, V)``.
    W : (V, D) array
        The embedding matrix.
    """
    N, T = ids.shape
    for n in range(N):
        for t in range(T):
            _copy_row(out[n, t], W[ids[n, t]])


@kernel
def embedding_backward(dW, dout, ids):
    """The gradient of the embedding matrix: ``dout`` rows added up per id.

    Parameters
    ----------
    dW : (V, D) array
        Out: zeroed, then ``dW[ids[n, t]] += dout[n, t]`` for every position, so a
        repeated id collects the sum of its rows.
    dout : (N, T, D) array
        Gradient of the forward's output.
    ids : (N, T) int64 array
        The forward's ids, each in ``[0, V)``.
    """
    N, T = ids.shape
    _fill_rows(dW, dW.dtype.type(0.0))
    for n in range(N):
        for t in range(T):
            _add_row(dW[ids[n, t]], dout[n, t])


# --------------------------------------------------------------------------------------
# TimeAffine
# --------------------------------------------------------------------------------------


# A bias job: one thread's rows of the output to fill with the bias.
_OUT, _BIAS, _OUT_ROWS, _OUT_COLUMNS, _OUT_FIRST, _OUT_STOP = range(6)


@helper
def _fill_with_row(out, row, first, stop):
    """``out[first:stop] = row``."""
    for r in range(first, stop):
        _copy_row(out[r], row)


def bias_worker(dtype):
    """The C callback that runs one bias job in ``dtype`` (for
    :func:`fastrnn._tiles.new_pool`)."""
    zero = dtype.type(0)

    def worker(address):
        job = carray(pointer_to(address_of(address), np.int64(0)), (JOB_FIELDS,))
        R, M = job[_OUT_ROWS], job[_OUT_COLUMNS]
        out = carray(pointer_to(job[_OUT], zero), (R, M))
        b = carray(pointer_to(job[_BIAS], zero), (M,))
        _fill_with_row(out, b, job[_OUT_FIRST], job[_OUT_STOP])

    return callback(worker)


@kernel
def affine_forward(out, x, W, b, transposed, pool):
    """``out = x @ W + b`` at every step, as one product over the ``N * T`` rows.

    Parameters
    ----------
    out : (N, T, M) array
        Out: the affine map of every step.
    x : (N, T, D) array
    W : (D, M) array, or (M, D) holding ``W.T`` when ``transposed``
    b : (M,) array
    transposed : bool
        Whether ``W`` is given as its transpose (a C-contiguous ``W.T``).
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads to split the bias fill between (:func:`fastrnn._tiles.new_pool` with
        :func:`bias_worker`; ``fastrnn._tiles.UNUSED_POOL`` fills on the calling thread).
    """
    N, T, M = out.shape
    R = N * T
    rows_out = out.reshape((R, M))
    threads = split_threads(pool, R)
    if threads <= 1:
        _fill_with_row(rows_out, b, 0, R)
    else:
        # The fill is a pass over memory, like OpenBLAS's own zeroing of C before a
        # beta = 0 product, and as that one, it runs on the BLAS library's threads.
        jobs = pool[1 : 1 + threads]
        for i in range(threads):
            job = jobs[i]
            job[_OUT] = rows_out.ctypes.data
            job[_BIAS] = b.ctypes.data
            job[_OUT_ROWS] = R
            job[_OUT_COLUMNS] = M
            job[_OUT_FIRST] = i * R // threads
            job[_OUT_STOP] = (i + 1) * R // threads
        call_dispatch(pool[0, DISPATCH], threads, pool[0, WORKER], jobs.ctypes.data, JOB_BYTES)
    gemm(rows_out, x.reshape((R, x.shape[2])), W, False, transposed, True)


@kernel
def affine_backward(dx, dW, db, dout, x, W, ones, transposed, dW_transposed):
    """Gradients of ``out = x @ W + b``.

    Parameters
    ----------
    dx : (R, D) array
        Out: ``dout @ W.T``.
    dW : (D, M) array, or (M, D) receiving ``dW.T`` when ``dW_transposed``
        Out: ``x.T @ dout``.
    db : (M,) array
        Out: ``dout.sum(axis=0)``.
    dout : (R, M) array
        Gradient of the forward's output.
    x : (R, D) array
        The forward's input.
    W : (D, M) array, or (M, D) holding ``W.T`` when ``transposed``
    ones : (1, R) array
        All ones: ``db`` is the product ``ones @ dout``.
    transposed, dW_transposed : bool
        Whether ``W`` is given, and ``dW`` is to be written, as the transpose.
    """
    gemm(dx, dout, W, False, not transposed, False)
    if dW_transposed:
        gemm(dW, dout, x, True, False, False)
    else:
        gemm(dW, x, dout, True, False, False)
    # A matrix-vector product rather than a loop: it adds the rows in the same order, and
    # reads the (R, M) gradient, often larger than the caches, with BLAS's threads.
    gemm(db.reshape((1, db.size)), ones, dout, False, False, False)


# --------------------------------------------------------------------------------------
# TimeSoftmaxWithLoss
# --------------------------------------------------------------------------------------


@helper
def _softmax_rows_forward(lse, xs, ts, ignore_label, first, stop):
    """Rows ``first .. stop - 1`` of :func:`softmax_cross_entropy_forward`: their loss
    total (float64) and how many were counted."""
    total = 0.0
    count = 0
    for r in range(first, stop):
        t = ts[r]
        if t == ignore_label:
            continue
        row = xs[r]
        shift = _row_max(row)
        log_sum = math.log(float(_sum_exp_shifted(row, shift)))
        lse[r] = float(shift) + log_sum
        total += (float(shift) - float(row[t])) + log_sum
        count += 1
    return total, count


@helper
def _softmax_rows_backward(dxs, xs, lse, ts, ignore_label, scale, first, stop):
    """Rows ``first .. stop - 1`` of :func:`softmax_cross_entropy_backward`."""
    scale = dxs.dtype.type(scale)
    one = dxs.dtype.type(1.0)
    zero = dxs.dtype.type(0.0)
    for r in range(first, stop):
        out = dxs[r]
        t = ts[r]
        if t == ignore_label:
            for v in range(out.size):
                out[v] = zero
            continue
        row = xs[r]
        log_sum = lse[r]
        for v in range(row.size):
            out[v] = fast_exp(row[v] - log_sum) * scale
        # Recomputed rather than ``out[t] - scale``: p - 1 is exact for p near 1.
        out[t] = (fast_exp(row[t] - log_sum) - one) * scale


# A softmax job: one thread's rows. Int64 fields; _SCALE and _TOTAL hold float64 bits.
_XS, _DXS, _LSE, _TS, _ROWS, _V, _FIRST, _STOP, _IGNORE, _SCALE, _TOTAL, _COUNT = range(12)


@helper
def _post_softmax_jobs(pool, threads, dxs_address, lse, xs, ts, ignore_label, scale):
    """Split the rows of ``xs`` between ``threads`` jobs in ``pool`` and run them on the
    BLAS library's threads; ``dxs_address`` 0 makes them forward jobs."""
    jobs = pool[1 : 1 + threads]
    floats = jobs.view(np.float64)
    R = xs.shape[0]
    for i in range(threads):
        job = jobs[i]
        job[_XS] = xs.ctypes.data
        job[_DXS] = dxs_address
        job[_LSE] = lse.ctypes.data
        job[_TS] = ts.ctypes.data
        job[_ROWS] = R
        job[_V] = xs.shape[1]
        job[_FIRST] = i * R // threads
        job[_STOP] = (i + 1) * R // threads
        job[_IGNORE] = ignore_label
        floats[i, _SCALE] = scale
    call_dispatch(pool[0, DISPATCH], threads, pool[0, WORKER], jobs.ctypes.data, JOB_BYTES)


def softmax_worker(dtype):
    """The C callback that runs one softmax job in ``dtype`` (for
    :func:`fastrnn._tiles.new_pool`)."""
    zero = dtype.type(0)

    def worker(address):
        job = carray(pointer_to(address_of(address), np.int64(0)), (JOB_FIELDS,))
        floats = carray(pointer_to(address_of(address), np.float64(0)), (JOB_FIELDS,))
        R, V = job[_ROWS], job[_V]
        xs = carray(pointer_to(job[_XS], zero), (R, V))
        lse = carray(pointer_to(job[_LSE], zero), (R,))
        ts = carray(pointer_to(job[_TS], np.int64(0)), (R,))
        first, stop, ignore_label = job[_FIRST], job[_STOP], job[_IGNORE]
        if job[_DXS] == 0:
            total, count = _softmax_rows_forward(lse, xs, ts, ignore_label, first, stop)
            floats[_TOTAL] = total
            job[_COUNT] = count
        else:
            dxs = carray(pointer_to(job[_DXS], zero), (R, V))
            _softmax_rows_backward(dxs, xs, lse, ts, ignore_label, floats[_SCALE], first, stop)

    return callback(worker)


@kernel
def softmax_cross_entropy_forward(lse, xs, ts, ignore_label, pool):
    """Softmax cross-entropy of every row against its target id.

    Parameters
    ----------
    lse : (R,) array
        Out: ``log(sum(exp(xs[r])))`` of every row whose target is not ``ignore_label``
        (other rows are left as they were): all that the backward pass needs.
    xs : (R, V) array
        Scores, ``V >= 1``.
    ts : (R,) int64 array
        Target ids, each in ``[0, V)`` or equal to ``ignore_label``.
    ignore_label : int
        Rows with this target count for nothing.
    pool : (1 + threads, JOB_FIELDS) int64 array
        The threads to split the rows between (:func:`fastrnn._tiles.new_pool` with
        :func:`softmax_worker`; ``fastrnn._tiles.UNUSED_POOL`` runs them here).

    Returns
    -------
    total : float
        The sum over the counted rows of ``lse[r] - xs[r, ts[r]]`` (float64; each thread
        sums its rows in order, then the threads' sums are added in order).
    count : int
        How many rows were counted.
    """
    threads = split_threads(pool, xs.shape[0])
    if threads <= 1:
        return _softmax_rows_forward(lse, xs, ts, ignore_label, 0, xs.shape[0])
    _post_softmax_jobs(pool, threads, 0, lse, xs, ts, ignore_label, 0.0)
    floats = pool.view(np.float64)
    total = 0.0
    count = 0
    for i in range(1, 1 + threads):
        total += floats[i, _TOTAL]
        count += pool[i, _COUNT]
    return total, count


@kernel
def softmax_cross_entropy_backward(dxs, xs, lse, ts, ignore_label, scale, pool):
    """The gradient of the mean softmax cross-entropy.

    Parameters
    ----------
    dxs : (R, V) array
        Out: ``(softmax(xs[r]) - onehot(ts[r])) * scale`` for counted rows, 0 for rows
        whose target is ``ignore_label``.
    xs : (R, V) array
        The forward's scores.
    lse : (R,) array
        The forward's log-sum-exp of every counted row.
    ts : (R,) int64 array
    ignore_label : int
    scale : float
        ``dout / count``, in the dtype of ``xs``.
    pool : (1 + threads, JOB_FIELDS) int64 array
        As for :func:`softmax_cross_entropy_forward`.
    """
    threads = split_threads(pool, xs.shape[0])
    if threads <= 1:
        _softmax_rows_backward(dxs, xs, lse, ts, ignore_label, scale, 0, xs.shape[0])
    else:
        _post_softmax_jobs(pool, threads, dxs.ctypes.data, lse, xs, ts, ignore_label, scale)


# --------------------------------------------------------------------------------------
# TimeSigmoidWithLoss
# --------------------------------------------------------------------------------------


@kernel
def sigmoid_cross_entropy_forward(diff, xs, ts):
    """The book's binary cross-entropy of every entry, and its unscaled gradient.

    With ``y = 1 / (1 + exp(-x))`` and ``p = y`` where the label is 1, ``1 - y`` where it
    is 0, the loss of an entry is ``-log(p + 1e-7)`` (the book's guard, in the dtype of
    ``xs``) and its gradient ``y - t`` (the book's, which ignores the guard).

    Parameters
    ----------
    diff : (N, T) array
        Out: ``sigmoid(xs) - ts``.
    xs : (N, T) array
        Scores.
    ts : (N, T) array
        Labels, exactly 0 or 1, in the dtype of ``xs``.

    Returns
    -------
    float
        The sum of the losses of all entries (float64).
    """
    one = xs.dtype.type(1.0)
    guard = xs.dtype.type(1e-7)
    total = 0.0
    for n in range(xs.shape[0]):
        x_n, t_n, d_n = xs[n], ts[n], diff[n]
        for j in range(x_n.size):
            y = one / (one + fast_exp(-x_n[j]))
            t = t_n[j]
            p = y if t != 0 else one - y
            total -= math.log(float(p + guard))
            d_n[j] = y - t
    return total


@kernel
def sigmoid_cross_entropy_backward(dxs, diff, scale):
    """``dxs = diff * scale``: the gradient of ``dout`` times the mean loss.

    Parameters
    ----------
    dxs : (N, T) array
        Out.
    diff : (N, T) array
        ``sigmoid(xs) - ts`` from :func:`sigmoid_cross_entropy_forward`.
    scale : float
        ``dout / (N * T)``, in the dtype of ``diff``.
    """
    for n in range(diff.shape[0]):
        d_n, out = diff[n], dxs[n]
        for j in range(d_n.size):
            out[j] = d_n[j] * scale


# --------------------------------------------------------------------------------------
# TimeDropout
# --------------------------------------------------------------------------------------


@kernel
def dropout_forward(out, mask, xs, u, ratio, scale):
    """Inverted dropout from uniform draws, all arrays flattened.

    Parameters
    ----------
    out : (S,) array
        Out: ``xs * mask``.
    mask : (S,) array
        Out: ``scale`` where ``u > ratio``, else 0.
    xs : (S,) array
    u : (S,) float64 array
        Uniform draws in [0, 1), as ``np.random.rand`` gives them.
    ratio : float
        The dropout ratio, compared with ``u`` in float64 as the book does.
    scale : float
        ``1 / (1 - ratio)`` in the dtype of ``xs``.
    """
    zero = mask.dtype.type(0.0)
    for i in range(xs.size):
        m = scale if u[i] > ratio else zero
        mask[i] = m
        out[i] = xs[i] * m


# NumPy's MT19937 (numpy/random/src/mt19937/mt19937.c): 624 words of state, refilled
# all at once ("twisted") when used up; each word is tempered on the way out.
MT19937_WORDS = 624
_MT_SHIFT = 397
_MT_UPPER = np.uint32(0x80000000)
_MT_LOWER = np.uint32(0x7FFFFFFF)
_MT_MATRIX = np.uint32(0x9908B0DF)


@helper
def _mt_mix(word, next_word, far_word):
    y = (word & _MT_UPPER) | (next_word & _MT_LOWER)
    return far_word ^ (y >> np.uint32(1)) ^ ((np.uint32(0) - (y & np.uint32(1))) & _MT_MATRIX)


@helper
def _mt_twist(key):
    """Refill the 624 words of ``key`` as NumPy's ``mt19937_gen`` does (the loops are
    split where the word read ``_MT_SHIFT`` ahead wraps around, so each vectorises)."""
    n, m = MT19937_WORDS, _MT_SHIFT
    for i in range(n - m):
        key[i] = _mt_mix(key[i], key[i + 1], key[i + m])
    for i in range(n - m, n - 1):
        key[i] = _mt_mix(key[i], key[i + 1], key[i + m - n])
    key[n - 1] = _mt_mix(key[n - 1], key[0], key[m - 1])


@helper
def _mt_temper_into(words, key):
    """``words[j] = temper(key[j])``: the generator's output for the state words ``key``."""
    for j in range(key.size):
        y = key[j]
        y ^= y >> np.uint32(11)
        y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
        y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
        y ^= y >> np.uint32(18)
        words[j] = y


@helper
def _dropout_from_word_pairs(out, mask, xs, words, ratio, scale):
    """Dropout of ``xs`` with the draws that the pairs ``words[2p], words[2p + 1]`` make."""
    zero = mask.dtype.type(0.0)
    for p in range(xs.size):
        # NumPy's mt19937_next_double: 27 + 26 bits, exact in float64
        high = words[2 * p] >> np.uint32(5)
        low = words[2 * p + 1] >> np.uint32(6)
        u = (high * 67108864.0 + low) / 9007199254740992.0
        m = scale if u > ratio else zero
        mask[p] = m
        out[p] = xs[p] * m


@kernel
def dropout_forward_mt19937(out, mask, state, words, xs, ratio, scale):
    """Inverted dropout drawing straight from NumPy's MT19937 state, all arrays flattened.

    The same numbers and the same final state as ``np.random.rand(S)`` followed by
    :func:`dropout_forward`: the draws are NumPy's ``mt19937_next_double``, two words
    each, but made a block of up to 624 words at a time (twist, temper, then pairs), so
    each loop vectorises and the (S,) float64 draws are never stored.

    Parameters
    ----------
    out : (S,) array
        Out: ``xs * mask``.
    mask : (S,) array
        Out: ``scale`` where the draw ``u > ratio``, else 0.
    state : (625,) uint32 array
        In and out: a view of the generator's state (``mt19937_state``): its 624 words,
        then the position of the next word to use; left where ``np.random.rand`` leaves it.
    words : (625,) uint32 array
        Scratch: one block's tempered words, after a word carried over from the last block.
    xs : (S,) array
    ratio : float
        The dropout ratio, compared with the draws in float64 as the book does.
    scale : float
        ``1 / (1 - ratio)`` in the dtype of ``xs``.
    """
    n = MT19937_WORDS
    key = state[:n]
    position = np.int64(state[n])
    S = xs.size
    done = 0
    carried = 0  # 1 when words[0] holds the first word of a pair split between two blocks
    while done < S:
        if position == n:
            _mt_twist(key)
            position = 0
        fresh = min(n - position, 2 * (S - done) - carried)
        _mt_temper_into(words[carried : carried + fresh], key[position : position + fresh])
        position += fresh
        held = carried + fresh
        pairs = held // 2
        stop = done + pairs
        _dropout_from_word_pairs(
            out[done:stop], mask[done:stop], xs[done:stop], words, ratio, scale
        )
        done = stop
        carried = held - 2 * pairs
        if carried:
            words[0] = words[held - 1]
    state[n] = np.uint32(position)


@kernel
def dropout_backward(dxs, dout, mask):
    """``dxs = dout * mask``, all arrays flattened to (S,)."""
    for i in range(mask.size):
        dxs[i] = dout[i] * mask[i]
