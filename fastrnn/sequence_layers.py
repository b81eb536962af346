"""Drop-in replacements for the book's other time layers: ``TimeEmbedding``, ``TimeAffine``,
``TimeSoftmaxWithLoss``, ``TimeSigmoidWithLoss`` and ``TimeDropout``.

Each class has the book's constructor, attributes, ``params``/``grads`` lists and methods,
and gives the same numbers as :mod:`fastrnn.reference`; the work runs in the compiled
kernels of :mod:`fastrnn._kernels_sequence`.

What the classes guarantee, as the recurrent layers of :mod:`fastrnn.layers` do:

* ``params`` holds the caller's arrays, never copies: an optimizer may update them in place
  between calls, and weight tying (``TimeAffine(embed_W.T, b)``) keeps working, including
  the book's ``remove_duplicate``, which compares parameters by identity and transpose.
* ``grads`` are allocated once, with the parameters' shapes and memory layouts
  (``np.zeros_like``), and written in place.
* ``forward`` and ``backward`` return fresh arrays; inputs (any strided view) are never
  modified.
* Every argument is checked before any kernel runs; a call that raised changed nothing, and
  the layer stays usable.

Shapes: ``N`` batch, ``T`` time steps, ``D`` input size, ``M`` output size of the affine
map, ``V`` vocabulary size.
"""

from __future__ import annotations

import numpy as np

from . import _kernels_sequence as kernels
from . import _tiles as tiles
from ._random import global_mt19937
from ._validation import (
    RepeatedCall,
    check_affine_params,
    check_binary_labels,
    check_dropout_ratio,
    check_embedding_params,
    check_float_array,
    check_gradient,
    check_grads,
    check_ids,
    check_ignore_label,
    check_scalar,
    check_sequence,
    check_shape,
    require_array,
    require_float,
    require_integer,
    require_real,
)
from ._workspace import Workspace, fits_kernels, kernel_ready

__all__ = [
    "TimeEmbedding",
    "TimeAffine",
    "TimeSoftmaxWithLoss",
    "TimeSigmoidWithLoss",
    "TimeDropout",
]

_FLOAT32 = np.dtype(np.float32)
_FLOAT64 = np.dtype(np.float64)
_INT64 = np.dtype(np.int64)

#: Fewest scores per thread before the softmax cross-entropy splits its rows between the
#: BLAS library's threads (waking one costs microseconds; a pass over 2**16 float32 scores
#: takes about 0.07 ms here).
SOFTMAX_SCORES_PER_THREAD = 1 << 16
#: Fewest output values per thread before the affine forward splits its bias fill between
#: the BLAS library's threads (a fill of 2**16 float32 values took 5 µs in cache and 11 µs
#: to memory on 2-core AMD EPYC Zen 4).
BIAS_VALUES_PER_THREAD = 1 << 16
_LAST_OUTPUT = "the last forward's output"


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """What layers without parameters compute in: float32 or float64 as given, float32 for
    anything else (float16, integers, bool), as :mod:`fastrnn.reference` does."""
    return dtype if dtype == _FLOAT32 or dtype == _FLOAT64 else _FLOAT32


def _copy_ids(ws: Workspace, ids: np.ndarray) -> np.ndarray:
    """Checked ids as the kernels' int64, in the layer's own buffer: the caller may change
    their array before ``backward``, whose kernel must only see ids that were checked."""
    copy = ws.take("ids", ids.shape, _INT64)
    np.copyto(copy, ids, casting="unsafe")  # uint64 included: the ids are known to fit
    return copy


def _before_forward(layer) -> ValueError:
    return ValueError(f"{type(layer).__name__}.backward() called before forward()")


# --------------------------------------------------------------------------------------
# TimeEmbedding
# --------------------------------------------------------------------------------------


class TimeEmbedding:
    """Embedding lookups at every step: ``out[n, t] = W[xs[n, t]]``.

    Parameters
    ----------
    W : (V, D) array
        float32 or float64, one row per word id. Kept by reference in ``params``.

    Attributes
    ----------
    params : [W]
    grads : [dW]
        ``dW`` (V, D), written in place by ``backward``.
    W : (V, D) array
        ``params[0]`` (the same array; assigning one assigns the other).
    """

    def __init__(self, W):
        check_embedding_params([W])
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self._ws = Workspace()
        self._saved = None  # (ids, W) of the last forward
        self._last_call = None  # RepeatedCall of the last checked forward, when W ran as is

    @property
    def W(self):
        return self.params[0]

    @W.setter
    def W(self, value):
        self.params[0] = value

    def forward(self, xs):
        """Look up the rows of ``W``.

        Parameters
        ----------
        xs : (N, T) array
            Word ids of any integer dtype and any strides, each in ``[0, V)``.

        Returns
        -------
        out : (N, T, D) array
            A fresh array in ``W``'s dtype.
        """
        last = self._last_call
        if last is not None and last.repeats(self.params, xs):
            # The checks below hold as they did (the ids aside): same W, same ids buffer.
            W = weight = last.params[0]
            ids = last.ready
        else:
            W = check_embedding_params(self.params)
            require_array("xs", xs)
            require_integer("xs", xs)
            if xs.ndim != 2:
                raise ValueError(f"xs must have shape (N, T), got {xs.shape}")
            weight = kernel_ready(W, W.dtype, self._ws, "W")
            ids = self._ws.take("ids", xs.shape, _INT64)
            # A copy of W must be made afresh on every call: no short way then.
            self._last_call = RepeatedCall(self.params, xs, ids) if weight is W else None
        V, D = W.shape
        check_ids("xs", xs, V)
        # The layer's own copy: the caller may change xs before backward, whose kernel must
        # only see ids that were checked. (uint64 included: the ids are known to fit.)
        np.copyto(ids, xs, casting="unsafe")
        out = np.empty((*xs.shape, D), dtype=W.dtype)
        kernels.embedding_forward(out, ids, weight)
        self._saved = (ids, W)
        return out

    def backward(self, dout):
        """Write the gradient of ``W`` into ``grads[0]``: ``dout`` summed per id.

        Parameters
        ----------
        dout : (N, T, D) array
            Gradient of the last forward's output; any real float dtype and strides.

        Returns
        -------
        None
        """
        if self._saved is None:
            raise _before_forward(self)
        ids, W = self._saved
        check_grads(self.grads, [W])
        check_gradient("dout", dout, (*ids.shape, W.shape[1]), _LAST_OUTPUT)
        dtype = W.dtype
        dout = kernel_ready(dout, dtype, self._ws, "dout")
        grad = self.grads[0]
        target = grad if fits_kernels(grad, dtype) else self._ws.take("dW", W.shape, dtype)
        kernels.embedding_backward(target, dout, ids)
        if target is not grad:
            grad[...] = target
        return None


# --------------------------------------------------------------------------------------
# TimeAffine
# --------------------------------------------------------------------------------------


class TimeAffine:
    """``x @ W + b`` at every step, as one product over the ``N * T`` rows.

    Parameters
    ----------
    W : (D, M) array
        float32 or float64. Kept as given, views included: with weight tying the book passes
        ``embed_W.T``, which is used without a copy.
    b : (M,) array
        Of ``W``'s dtype.

    Attributes
    ----------
    params : [W, b]
    grads : [dW, db]
        ``np.zeros_like`` of the parameters (so ``dW`` has ``W``'s memory layout), written
        in place by ``backward``.
    x : (N, T, D) array or None
        The last forward's input, as the book keeps it (converted to ``W``'s dtype and made
        contiguous when it was not already).

    Notes
    -----
    ``backward`` uses the parameter arrays of its own forward pass, as the recurrent layers
    do (the same arrays, so in-place updates in between are seen; an array put into
    ``params`` in between is used from the next ``forward`` on).
    """

    def __init__(self, W, b):
        check_affine_params([W, b])
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.x = None
        self._ws = Workspace()
        self._saved = None  # what the last forward left for backward
        # RepeatedCall of the last checked forward whose W and b ran as they are, with
        # ready = (weight, transposed) from _kernel_weight
        self._last_call = None

    def _kernel_weight(self, W):
        """``(W, False)``, or ``(W.T, True)`` when ``W`` is a transposed view (weight
        tying): a C-contiguous array the kernels read, and whether it is the transpose."""
        if fits_kernels(W, W.dtype):
            return W, False
        if fits_kernels(W.T, W.dtype):
            return W.T, True
        return kernel_ready(W, W.dtype, self._ws, "W"), False

    def forward(self, x):
        """Apply the affine map to every step.

        Parameters
        ----------
        x : (N, T, D) array
            Any real float dtype and strides; computed in ``W``'s dtype.

        Returns
        -------
        out : (N, T, M) array
            A fresh array in ``W``'s dtype.
        """
        last = self._last_call
        if last is not None and last.repeats(self.params, x):
            (W, b), (weight, transposed) = last.params, last.ready
            bias = b
        else:
            W, b = check_affine_params(self.params)
            check_sequence("x", x, W.shape[0], "D")
            weight, transposed = self._kernel_weight(W)
            bias = kernel_ready(b, W.dtype, self._ws, "b")
            fits = (weight is W or transposed) and bias is b  # no copy to refresh next call
            self._last_call = RepeatedCall(self.params, x, (weight, transposed)) if fits else None
        N, T = x.shape[0], x.shape[1]
        dtype = W.dtype
        x = kernel_ready(x, dtype, self._ws, "x")
        out = np.empty((N, T, W.shape[1]), dtype=dtype)
        rows, M = N * T, W.shape[1]
        pool = tiles.row_pool(dtype, kernels.bias_worker, rows, rows * M, BIAS_VALUES_PER_THREAD)
        kernels.affine_forward(out, x, weight, bias, transposed, pool)
        self.x = x
        self._saved = (x, W, b, weight, transposed, N, T)
        return out

    def backward(self, dout):
        """Backpropagate through the last forward.

        Parameters
        ----------
        dout : (N, T, M) array
            Gradient of the last forward's output; any real float dtype and strides.

        Returns
        -------
        dx : (N, T, D) array
            A fresh array. ``grads`` receive ``dW = x.T @ dout`` and ``db = dout.sum``.
        """
        if self._saved is None:
            raise _before_forward(self)
        x, W, b, weight, transposed, N, T = self._saved
        D, M = W.shape
        rows = x.reshape(N * T, D)  # the layer's own view: the kernels trust its shape
        check_grads(self.grads, [W, b])
        check_gradient("dout", dout, (N, T, M), _LAST_OUTPUT)
        dtype = W.dtype
        dout = kernel_ready(dout, dtype, self._ws, "dout").reshape(N * T, M)
        dW, db = self.grads
        # dW goes straight into grads[0], or into its transpose when that is the
        # C-contiguous one (weight tying); only a caller-replaced grad needs scratch.
        dW_scratch = None
        if fits_kernels(dW, dtype):
            dW_target, dW_transposed = dW, False
        elif fits_kernels(dW.T, dtype):
            dW_target, dW_transposed = dW.T, True
        else:
            dW_target = dW_scratch = self._ws.take("dW", W.shape, dtype)
            dW_transposed = False
        db_target = db if fits_kernels(db, dtype) else self._ws.take("db", (M,), dtype)
        dx = np.empty((N, T, D), dtype=dtype)
        ones = self._ws.take("ones", (1, N * T), dtype)
        ones.fill(1)
        kernels.affine_backward(
            dx.reshape(N * T, D),
            dW_target,
            db_target,
            dout,
            rows,
            weight,
            ones,
            transposed,
            dW_transposed,
        )
        if dW_scratch is not None:
            dW[...] = dW_scratch
        if db_target is not db:
            db[...] = db_target
        return dx


# --------------------------------------------------------------------------------------
# TimeSoftmaxWithLoss
# --------------------------------------------------------------------------------------


class TimeSoftmaxWithLoss:
    """Softmax cross-entropy at every step, averaged over the positions not ignored.

    ``loss = mean(logsumexp(xs[n, t]) - xs[n, t, ts[n, t]])`` over the positions where
    ``ts != ignore_label``; ignored positions contribute neither loss nor gradient. When
    every position is ignored the loss is ``nan`` and the gradient zeros, without a warning.

    Notes
    -----
    ``forward`` keeps only the log-sum-exp of each row and a reference to ``xs`` (a copy
    when it had to be converted or made contiguous); ``backward`` recomputes the softmax
    from them. So ``xs`` must not be changed in place between the two calls (the book's
    models never do). Ignored positions get a gradient of exactly 0 even when their scores
    hold NaN or inf (the reference multiplies a NaN softmax by the mask's 0 and keeps NaN).

    Attributes
    ----------
    params, grads : []
    ignore_label : int
        Target id that marks a position to ignore (default -1); read at every ``forward``.
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.ignore_label = -1
        self._ws = Workspace()
        self._saved = None  # what the last forward left for backward

    def _pool(self, dtype, rows, V):
        """The threads to split ``rows`` rows of ``V`` scores between: the calling thread's
        pool in ``dtype`` (:func:`fastrnn._tiles.thread_pool`), set to as many threads as
        the BLAS uses and the work fills, or ``UNUSED_POOL`` to run on the calling thread."""
        return tiles.row_pool(
            dtype, kernels.softmax_worker, rows, rows * V, SOFTMAX_SCORES_PER_THREAD
        )

    def _target_ids(self, ts, shape, ignore_label):
        """Check ``ts`` against scores of ``shape`` (N, T, V); return (N*T,) int64 ids."""
        N, T, V = shape
        require_array("ts", ts)
        if ts.ndim == 3:  # one-hot targets: the id is where the 1 is, as in the book
            require_real("ts", ts)
            check_shape("ts", ts, shape, f"(N, T) or one-hot {shape}")
            return ts.argmax(axis=2).reshape(N * T)  # fresh, the layer's own
        require_integer("ts", ts)
        check_shape("ts", ts, (N, T), f"(N, T) = {(N, T)} or one-hot {shape}")
        check_ids("ts", ts, V, ignore_label)
        return _copy_ids(self._ws, ts).reshape(N * T)

    def forward(self, xs, ts):
        """The mean cross-entropy of the scores against the targets.

        Parameters
        ----------
        xs : (N, T, V) array
            Scores, ``V >= 1``, any real float dtype and strides; computed in float32 or
            float64 as given (float32 for other float dtypes).
        ts : (N, T) or (N, T, V) array
            Target ids of any integer dtype, each in ``[0, V)`` or ``ignore_label``; or
            one-hot targets (argmax'ed), of any real dtype.

        Returns
        -------
        float
        """
        N, T, V = check_float_array("xs", xs, ("N", "T", "V"))
        if V == 0:
            raise ValueError(f"xs must have shape (N, T, V) with V >= 1, got {xs.shape}")
        ignore_label = check_ignore_label(self.ignore_label)
        ids = self._target_ids(ts, (N, T, V), ignore_label)
        dtype = _compute_dtype(xs.dtype)
        scores = kernel_ready(xs, dtype, self._ws, "xs").reshape(N * T, V)
        lse = self._ws.take("lse", (N * T,), dtype)
        pool = self._pool(dtype, N * T, V)
        total, count = kernels.softmax_cross_entropy_forward(lse, scores, ids, ignore_label, pool)
        self._saved = (scores, lse, ids, ignore_label, count, (N, T, V))
        return total / count if count else float("nan")

    def backward(self, dout=1):
        """The gradient of ``dout * loss``.

        Parameters
        ----------
        dout : float
            A real number (Python or NumPy scalar).

        Returns
        -------
        dxs : (N, T, V) array
            ``(softmax(xs) - onehot(ts)) * dout / count`` at the ``count`` positions not
            ignored, 0 at the others; a fresh array in the dtype of the computation.
        """
        if self._saved is None:
            raise _before_forward(self)
        dout = check_scalar("dout", dout)
        scores, lse, ids, ignore_label, count, shape = self._saved
        scale = scores.dtype.type(dout / count if count else 0.0)
        dxs = np.empty(shape, dtype=scores.dtype)
        pool = self._pool(scores.dtype, *scores.shape)
        kernels.softmax_cross_entropy_backward(
            dxs.reshape(scores.shape), scores, lse, ids, ignore_label, scale, pool
        )
        return dxs


# --------------------------------------------------------------------------------------
# TimeSigmoidWithLoss
# --------------------------------------------------------------------------------------


class TimeSigmoidWithLoss:
    """Sigmoid and binary cross-entropy at every step, averaged over all ``N * T`` entries.

    The book's numbers: ``loss = -mean(log(p + 1e-7))`` with ``p = sigmoid(x)`` where the
    label is 1 and ``1 - sigmoid(x)`` where it is 0, and ``dxs = (sigmoid(xs) - ts) * dout
    / (N * T)``, which ignores the ``1e-7``. For an empty batch or sequence the loss is
    ``nan`` (the book divides by zero).

    Attributes
    ----------
    params, grads : []
    """

    def __init__(self):
        self.params, self.grads = [], []
        self._ws = Workspace()
        self._saved = None  # (sigmoid(xs) - ts, N * T) of the last forward

    def forward(self, xs, ts):
        """The mean binary cross-entropy of the scores against the labels.

        Parameters
        ----------
        xs : (N, T) array
            Scores, any real float dtype and strides.
        ts : (N, T) array
            Labels 0 or 1: bool, integers, or floats holding exactly 0 or 1.

        Returns
        -------
        float
        """
        N, T = check_float_array("xs", xs, ("N", "T"))
        check_binary_labels("ts", ts)
        check_shape("ts", ts, (N, T), f"{(N, T)} like xs")
        dtype = _compute_dtype(xs.dtype)
        scores = kernel_ready(xs, dtype, self._ws, "xs")
        labels = kernel_ready(ts, dtype, self._ws, "ts")
        diff = self._ws.take("diff", (N, T), dtype)
        total = kernels.sigmoid_cross_entropy_forward(diff, scores, labels)
        self._saved = (diff, N * T)
        return total / (N * T) if N * T else float("nan")

    def backward(self, dout=1):
        """The gradient of ``dout * loss``: ``dxs`` (N, T), a fresh array."""
        if self._saved is None:
            raise _before_forward(self)
        dout = check_scalar("dout", dout)
        diff, count = self._saved
        dxs = np.empty(diff.shape, dtype=diff.dtype)
        kernels.sigmoid_cross_entropy_backward(
            dxs, diff, diff.dtype.type(dout / count if count else 0.0)
        )
        return dxs


# --------------------------------------------------------------------------------------
# TimeDropout
# --------------------------------------------------------------------------------------


class TimeDropout:
    """Inverted dropout over a whole sequence, active while ``train_flg`` is True.

    The mask is drawn from NumPy's global random state exactly as the book draws it with
    ``np.random.rand``, so a run seeded with ``np.random.seed`` gets the book's masks (and
    leaves the random state where the book leaves it). The draws are made in the kernel,
    straight from the global MT19937's state (under its lock), without the (xs.size,)
    float64 array of ``np.random.rand``; with another global bit generator
    (``np.random.set_bit_generator``) the layer calls ``np.random.rand``.

    Parameters
    ----------
    dropout_ratio : float
        Probability that an element is dropped, in [0, 1). Kept elements are scaled by
        ``1 / (1 - dropout_ratio)``.

    Attributes
    ----------
    params, grads : []
    dropout_ratio : float
    mask : array or None
        The last training forward's mask, ``xs``'s shape, in the dtype of the computation:
        float32 or float64 as the input is, float32 for other inputs.
    train_flg : bool
        When False, ``forward`` returns ``xs`` itself (nothing is checked or drawn).
    """

    def __init__(self, dropout_ratio=0.5):
        check_dropout_ratio(dropout_ratio)
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.train_flg = True
        self._ws = Workspace()

    def forward(self, xs):
        """``xs * mask`` with a new mask (a fresh array); ``xs`` itself when not training.

        Parameters
        ----------
        xs : array of any shape
            Real numbers (bool, integer or float), any strides.
        """
        if not self.train_flg:
            return xs
        check_dropout_ratio(self.dropout_ratio)  # may have been changed since __init__
        require_array("xs", xs)
        require_real("xs", xs)
        dtype = _compute_dtype(xs.dtype)
        ratio = self.dropout_ratio
        # Computed from the attribute as the book does, so that a NumPy float32 ratio gives
        # the book's (float32) scale.
        scale = dtype.type(1 / (1 - ratio))
        source = kernel_ready(xs, dtype, self._ws, "xs").reshape(-1)
        mask = np.empty(xs.shape, dtype=dtype)
        out = np.empty(xs.shape, dtype=dtype)
        generator = global_mt19937()
        if generator is None:  # another bit generator: its own draws, as the book takes them
            draws = np.asarray(np.random.rand(*xs.shape))  # a float, not an array, for 0-d
            kernels.dropout_forward(
                out.reshape(-1), mask.reshape(-1), source, draws.reshape(-1), float(ratio),
                scale,
            )  # fmt: skip
        else:
            lock, state = generator
            words = self._ws.take("words", state.shape, state.dtype)
            with lock:  # as NumPy's own draws hold it
                kernels.dropout_forward_mt19937(
                    out.reshape(-1), mask.reshape(-1), state, words, source, float(ratio),
                    scale,
                )  # fmt: skip
        self.mask = mask
        return out

    def backward(self, dout):
        """``dout * mask`` with the mask of the last training forward (a fresh array).

        Parameters
        ----------
        dout : array
            The shape of that forward's output; any real float dtype and strides.
        """
        mask = self.mask
        if mask is None:
            raise ValueError("TimeDropout.backward() called before a training forward()")
        require_array("mask", mask)  # the book's attribute, which a caller may set
        require_float("mask", mask)
        check_gradient("dout", dout, mask.shape, _LAST_OUTPUT)
        dtype = _compute_dtype(mask.dtype)
        mask = kernel_ready(mask, dtype, self._ws, "mask")
        dout = kernel_ready(dout, dtype, self._ws, "dout")
        dxs = np.empty(mask.shape, dtype=dtype)
        kernels.dropout_backward(dxs.reshape(-1), dout.reshape(-1), mask.reshape(-1))
        return dxs
