"""Drop-in replacements for the attention layers of the book's chapter 8
(``ch08/attention_layer.py``): ``WeightSum``, ``AttentionWeight``, ``Attention`` and
``TimeAttention``.

Each class has the book's name, constructor (no arguments), ``params = grads = []``,
methods and attributes, and gives the numbers of :mod:`fastrnn.reference`. ``TimeAttention``
runs all decoder steps of a batch in one compiled kernel (forward and backward) instead of
one ``Attention`` object per step; ``Attention`` is the same kernel with one decoder step.

What the classes guarantee:

* Every argument is checked before any kernel runs (a plain ``ValueError`` for shapes, a
  ``TypeError`` for types and dtypes, naming the argument); a call that raises changes
  nothing, so the layer stays usable.
* The work is done in float32 or float64 as given (the common dtype of the inputs when
  both are one of those), in float32 for any other real float dtype, as in
  :mod:`fastrnn.reference`. Inputs may be any strided view; they are never modified.
* ``forward`` and ``backward`` return fresh arrays, which the caller may modify (the book's
  ``AttentionDecoder`` adds to the returned ``dhs_enc`` in place).
* ``backward`` may be called again for the same forward. It uses the inputs of the last
  forward: the caller's arrays themselves when the kernels could read them as they were
  (C-contiguous, of the compute dtype), as the book's layers keep them.
* The weights handed out (``TimeAttention.attention_weights``, ``Attention.attention_weight``
  and the ``a`` that ``AttentionWeight.forward`` returns) are copies of the ones backward
  uses, so editing them changes nothing. (In the book they are the same arrays.)
* The book's internals are not kept: ``TimeAttention.layers`` (one ``Attention`` per
  step), ``Attention.attention_weight_layer``/``weight_sum_layer``, the ``cache`` and
  ``softmax`` attributes.

Shapes: ``N`` batch, ``T``/``Te`` encoder steps, ``Td`` decoder steps, ``H`` hidden size.
"""

from __future__ import annotations

import numpy as np

from . import _kernels_attention as kernels
from ._validation import (
    COMPUTE_DTYPES,
    check_float_array,
    check_gradient,
    require_nonempty_axis,
)
from ._workspace import Workspace, kernel_ready

__all__ = ["WeightSum", "AttentionWeight", "Attention", "TimeAttention"]

_NO_STEPS = "a softmax over no encoder steps is undefined"


def _compute_dtype(*arrays: np.ndarray) -> np.dtype:
    """float32 or float64 as given (the common dtype of ``arrays``), float32 for anything
    else (float16, longdouble): the rule of :mod:`fastrnn.reference`."""
    dtype = np.result_type(*arrays)
    return dtype if dtype in COMPUTE_DTYPES else np.dtype(np.float32)


class _Layer:
    """What every attention layer shares: no parameters, a workspace, the last forward."""

    def __init__(self):
        self.params, self.grads = [], []
        self._ws = Workspace()
        self._saved = None  # what the last forward left for backward

    def _require_forward(self):
        if self._saved is None:
            raise ValueError(f"{type(self).__name__}.backward() called before forward()")
        return self._saved


class TimeAttention(_Layer):
    """Attention of every decoder step over all encoder steps, in one kernel.

    ``forward(hs_enc, hs_dec)``: for every sample ``n`` and decoder step ``t``, the weights
    ``a = softmax(hs_enc[n] @ hs_dec[n, t])`` over the ``Te`` encoder steps and the context
    ``a @ hs_enc[n]``.

    Attributes
    ----------
    attention_weights : list of Td arrays (N, Te), or None
        The weights of every decoder step of the last forward, as the book keeps them
        (``np.array(layer.attention_weights)`` is (Td, N, Te)). New arrays every forward,
        not the ones the backward pass uses, so they may be edited.
    params, grads : list
        Empty: the layer has no parameters.
    """

    def __init__(self):
        super().__init__()
        self.attention_weights = None

    def forward(self, hs_enc, hs_dec):
        """Attend from every decoder state to the encoder states.

        Parameters
        ----------
        hs_enc : (N, Te, H) array
            The encoder states, ``Te >= 1``. Any real float dtype and any strides.
        hs_dec : (N, Td, H) array
            The decoder states.

        Returns
        -------
        out : (N, Td, H) array
            The context vector of every decoder step, a fresh array.
        """
        N, Te, H = check_float_array("hs_enc", hs_enc, ("N", "Te", "H"))
        check_float_array("hs_dec", hs_dec, ("N", "Td", "H"), (N, None, H), ("hs_enc", hs_enc))
        require_nonempty_axis("hs_enc", hs_enc, 1, "Te", _NO_STEPS)
        Td = hs_dec.shape[1]
        dtype = _compute_dtype(hs_enc, hs_dec)
        enc = kernel_ready(hs_enc, dtype, self._ws, "hs_enc")
        dec = kernel_ready(hs_dec, dtype, self._ws, "hs_dec")
        out = np.empty((N, Td, H), dtype)
        A = np.empty((N, Td, Te), dtype)
        kernels.time_attention_forward(out, A, enc, dec)
        self._saved = (A, enc, dec)
        # A copy, time-major, so that every step's weights are one contiguous (N, Te) array
        # as in the book, and a caller who edits them does not change the backward pass.
        weights = A.transpose(1, 0, 2).copy()
        self.attention_weights = [weights[t] for t in range(Td)]  # faster than list()
        return out

    def backward(self, dout):
        """Backpropagate through the last ``forward``.

        Parameters
        ----------
        dout : (N, Td, H) array
            Gradient of the loss with respect to the output. Any real float dtype and any
            strides (the book passes a slice of a wider gradient).

        Returns
        -------
        dhs_enc : (N, Te, H) array
            Gradient with respect to ``hs_enc``, summed over the decoder steps.
        dhs_dec : (N, Td, H) array
            Gradient with respect to ``hs_dec``. Both are fresh arrays.
        """
        A, enc, dec = self._require_forward()
        N, Td, Te = A.shape
        check_gradient("dout", dout, dec.shape, "the last forward's output")
        dtype = A.dtype
        dout = kernel_ready(dout, dtype, self._ws, "dout")
        dhs_enc = np.empty(enc.shape, dtype)
        dhs_dec = np.empty(dec.shape, dtype)
        dS = self._ws.take("dS", (Td, Te), dtype)
        kernels.time_attention_backward(dhs_enc, dhs_dec, dS, dout, A, enc, dec)
        return dhs_enc, dhs_dec


class Attention(_Layer):
    """One decoder step of attention: :class:`AttentionWeight`, then :class:`WeightSum`.

    Runs the kernels of :class:`TimeAttention` with ``Td = 1``.

    Attributes
    ----------
    attention_weight : (N, T) array or None
        The weights of the last forward: a new array every forward, not the one the
        backward pass uses, so it may be edited.
    params, grads : list
        Empty: the layer has no parameters.
    """

    def __init__(self):
        super().__init__()
        self.attention_weight = None

    def forward(self, hs, h):
        """Attend from the decoder state ``h`` to the encoder states ``hs``.

        Parameters
        ----------
        hs : (N, T, H) array
            The encoder states, ``T >= 1``. Any real float dtype and any strides.
        h : (N, H) array
            The decoder state.

        Returns
        -------
        out : (N, H) array
            The context vector, a fresh array.
        """
        N, T, H = check_float_array("hs", hs, ("N", "T", "H"))
        check_float_array("h", h, ("N", "H"), (N, H), ("hs", hs))
        require_nonempty_axis("hs", hs, 1, "T", _NO_STEPS)
        dtype = _compute_dtype(hs, h)
        enc = kernel_ready(hs, dtype, self._ws, "hs")
        dec = kernel_ready(h, dtype, self._ws, "h")[:, None, :]  # (N, 1, H): Td = 1
        out = np.empty((N, 1, H), dtype)
        A = np.empty((N, 1, T), dtype)
        kernels.time_attention_forward(out, A, enc, dec)
        self._saved = (A, enc, dec)
        self.attention_weight = A[:, 0].copy()  # the caller's to edit: backward keeps A
        return out[:, 0]

    def backward(self, dout):
        """Backpropagate through the last ``forward``.

        Parameters
        ----------
        dout : (N, H) array
            Gradient of the loss with respect to the output.

        Returns
        -------
        dhs : (N, T, H) array
            Gradient with respect to ``hs``.
        dh : (N, H) array
            Gradient with respect to ``h``. Both are fresh arrays.
        """
        A, enc, dec = self._require_forward()
        N, _, T = A.shape
        H = enc.shape[2]
        check_gradient("dout", dout, (N, H), "the last forward's output")
        dtype = A.dtype
        dout = kernel_ready(dout, dtype, self._ws, "dout")[:, None, :]
        dhs = np.empty(enc.shape, dtype)
        dh = np.empty((N, 1, H), dtype)
        dS = self._ws.take("dS", (1, T), dtype)
        kernels.time_attention_backward(dhs, dh, dS, dout, A, enc, dec)
        return dhs, dh[:, 0]


class AttentionWeight(_Layer):
    """Attention weights: softmax over the encoder steps of the dot products
    ``hs[:, t] . h``.

    Attributes
    ----------
    params, grads : list
        Empty: the layer has no parameters.
    """

    def forward(self, hs, h):
        """The weights of the encoder states ``hs`` for the decoder state ``h``.

        Parameters
        ----------
        hs : (N, T, H) array
            The encoder states, ``T >= 1``. Any real float dtype and any strides.
        h : (N, H) array
            The decoder state.

        Returns
        -------
        a : (N, T) array
            The weights, each row summing to 1; a fresh array.
        """
        N, T, H = check_float_array("hs", hs, ("N", "T", "H"))
        check_float_array("h", h, ("N", "H"), (N, H), ("hs", hs))
        require_nonempty_axis("hs", hs, 1, "T", _NO_STEPS)
        dtype = _compute_dtype(hs, h)
        hs = kernel_ready(hs, dtype, self._ws, "hs")
        h = kernel_ready(h, dtype, self._ws, "h")
        a = np.empty((N, T), dtype)
        kernels.attention_weight_forward(a, hs, h)
        self._saved = (a, hs, h)
        return a.copy()  # the caller's to edit: backward keeps a

    def backward(self, da):
        """Backpropagate through the last ``forward``.

        Parameters
        ----------
        da : (N, T) array
            Gradient of the loss with respect to the weights.

        Returns
        -------
        dhs : (N, T, H) array
            Gradient with respect to ``hs``.
        dh : (N, H) array
            Gradient with respect to ``h``. Both are fresh arrays.
        """
        a, hs, h = self._require_forward()
        check_gradient("da", da, a.shape, "the last forward's output")
        dtype = a.dtype
        da = kernel_ready(da, dtype, self._ws, "da")
        dhs = np.empty(hs.shape, dtype)
        dh = np.empty(h.shape, dtype)
        ds = self._ws.take("ds", (1, a.shape[1]), dtype)
        kernels.attention_weight_backward(dhs, dh, ds, da, a, hs, h)
        return dhs, dh


class WeightSum(_Layer):
    """The context vector: the encoder states ``hs`` summed with the weights ``a``.

    Attributes
    ----------
    params, grads : list
        Empty: the layer has no parameters.
    """

    def forward(self, hs, a):
        """``c[n] = sum over t of a[n, t] * hs[n, t]``.

        Parameters
        ----------
        hs : (N, T, H) array
            The encoder states. Any real float dtype and any strides.
        a : (N, T) array
            The weights (any values; attention passes a softmax).

        Returns
        -------
        c : (N, H) array
            The weighted sums, a fresh array.
        """
        N, T, H = check_float_array("hs", hs, ("N", "T", "H"))
        check_float_array("a", a, ("N", "T"), (N, T), ("hs", hs))
        dtype = _compute_dtype(hs, a)
        hs = kernel_ready(hs, dtype, self._ws, "hs")
        a = kernel_ready(a, dtype, self._ws, "a")
        c = np.empty((N, H), dtype)
        kernels.weight_sum_forward(c, hs, a)
        self._saved = (hs, a)
        return c

    def backward(self, dc):
        """Backpropagate through the last ``forward``.

        Parameters
        ----------
        dc : (N, H) array
            Gradient of the loss with respect to ``c``.

        Returns
        -------
        dhs : (N, T, H) array
            Gradient with respect to ``hs``.
        da : (N, T) array
            Gradient with respect to ``a``. Both are fresh arrays.
        """
        hs, a = self._require_forward()
        N, T, H = hs.shape
        check_gradient("dc", dc, (N, H), "the last forward's output")
        dtype = hs.dtype
        dc = kernel_ready(dc, dtype, self._ws, "dc")
        dhs = np.empty(hs.shape, dtype)
        da = np.empty(a.shape, dtype)
        kernels.weight_sum_backward(dhs, da, dc, hs, a)
        return dhs, da
