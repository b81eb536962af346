"""Scratch buffers the layer classes own, and the one rule for handing arrays to kernels.

Every layer module (:mod:`fastrnn.layers`, :mod:`fastrnn.sequence_layers`,
:mod:`fastrnn.attention_layers`) keeps a :class:`Workspace` per layer and passes arrays to
the kernels through :func:`kernel_ready`.
"""

from __future__ import annotations

import math

import numpy as np


class Workspace:
    """Named, grow-only scratch buffers.

    ``take`` returns a C-contiguous view of the requested shape. A buffer is reallocated
    only when it must grow (or the dtype changes), so alternating between a large and a
    small batch does not allocate on every call. Views are remembered per shape, so that a
    call at a shape seen before costs one dictionary lookup.
    """

    #: Views remembered per buffer; more distinct shapes than this start the memo afresh.
    MAX_VIEWS_PER_BUFFER = 8

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}
        self._views: dict[str, dict[tuple, np.ndarray]] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        views = self._views.get(name)
        if views is not None:
            view = views.get((shape, dtype))
            if view is not None:
                return view
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = np.empty(max(size, 1), dtype=dtype)
            self._buffers[name] = buffer
            views = None  # views of the old buffer must not be handed out again
        if views is None or len(views) >= self.MAX_VIEWS_PER_BUFFER:
            views = self._views[name] = {}
        view = views[(shape, dtype)] = buffer[:size].reshape(shape)
        return view

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())


def fits_kernels(array: np.ndarray, dtype: np.dtype) -> bool:
    """Whether a kernel can take ``array`` as it is, to read or to write: of ``dtype``,
    C-contiguous, aligned and writeable (the one array type the kernels are compiled for)."""
    flags = array.flags
    return array.dtype == dtype and flags.c_contiguous and flags.aligned and flags.writeable


def kernel_ready(array, dtype, ws, name):
    """``array`` itself when it :func:`fits_kernels`, else a workspace copy."""
    if fits_kernels(array, dtype):
        return array
    copy = ws.take(name, array.shape, dtype)
    np.copyto(copy, array, casting="same_kind")
    return copy
