"""Argument checks for the layer classes.

A Numba kernel handed a wrong shape does not raise: it reads and writes past its buffers.
So every argument is checked here, in Python, before any kernel runs, and every error names
the argument and the shapes or dtypes involved. Nothing here changes a layer's state, so a
layer that raised is still usable.
"""

from __future__ import annotations

import operator

import numpy as np

#: The dtypes the kernels are compiled for. Inputs of any real float dtype are converted to
#: the parameters' dtype; parameters themselves must be one of these.
COMPUTE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

PARAM_NAMES = ("Wx", "Wh", "b")


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def require_array(name: str, value) -> np.ndarray:
    """Return ``value`` if it is a NumPy array, else raise a ``TypeError`` naming ``name``."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {_describe(value)}")
    return value


def require_float(name: str, array: np.ndarray) -> None:
    """Raise ``TypeError`` unless ``array`` holds real floating-point numbers."""
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must hold real floating-point numbers, got dtype {array.dtype}")


def check_params(params, gates: int, layer: str):
    """Check ``[Wx, Wh, b]`` and return them ready for the kernels.

    Parameters
    ----------
    params : list of 3 arrays
        ``Wx`` (D, G*H), ``Wh`` (H, G*H), ``b`` (G*H,), one float dtype.
    gates : int
        ``G``: 1 for RNN, 4 for LSTM, 3 for GRU.
    layer : str
        The layer's name, for messages.

    Returns
    -------
    Wx, Wh, b : C-contiguous arrays
        The caller's arrays themselves when they are C-contiguous (the usual case), so that
        in-place updates are seen; otherwise contiguous copies.
    """
    if not isinstance(params, (list, tuple)) or len(params) != 3:
        raise TypeError(f"{layer}.params must be a list [Wx, Wh, b], got {_describe(params)}")
    for name, p in zip(PARAM_NAMES, params, strict=True):
        require_array(name, p)
        if p.dtype not in COMPUTE_DTYPES:
            raise TypeError(f"{name} must be float32 or float64, got dtype {p.dtype}")
    Wx, Wh, b = params
    if Wx.dtype != Wh.dtype or Wx.dtype != b.dtype:
        raise TypeError(
            f"Wx, Wh and b must share one dtype, got {Wx.dtype}, {Wh.dtype} and {b.dtype}"
        )
    if Wh.ndim != 2 or Wh.shape[0] < 1 or Wh.shape[1] != gates * Wh.shape[0]:
        raise ValueError(
            f"Wh must have shape (H, {_gate_width(gates)}) with H >= 1, got {Wh.shape}"
        )
    H = Wh.shape[0]
    if Wx.ndim != 2 or Wx.shape[1] != gates * H or Wx.shape[0] < 1:
        raise ValueError(
            f"Wx must have shape (D, {gates * H}) with D >= 1 to match Wh {Wh.shape}, "
            f"got {Wx.shape}"
        )
    if b.shape != (gates * H,):
        raise ValueError(f"b must have shape ({gates * H},) to match Wh {Wh.shape}, got {b.shape}")
    return tuple(p if p.flags.c_contiguous else np.ascontiguousarray(p) for p in params)


def _gate_width(gates: int) -> str:
    return "H" if gates == 1 else f"{gates}*H"


def check_grads(grads, params) -> None:
    """Check that ``grads[i]`` can receive the gradient of ``params[i]``."""
    if not isinstance(grads, (list, tuple)) or len(grads) != len(params):
        raise TypeError(f"grads must be a list of {len(params)} arrays, got {_describe(grads)}")
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
        require_array(f"grads[{i}]", g)
        if g.shape != p.shape:
            raise ValueError(
                f"grads[{i}] must have the shape of params[{i}] {p.shape}, got {g.shape}"
            )
        if g.dtype.kind != "f":
            raise TypeError(f"grads[{i}] must be a float array, got dtype {g.dtype}")
        if not g.flags.writeable:
            raise ValueError(f"grads[{i}] is read-only")


def check_sequence(name: str, xs, width: int, width_name: str) -> tuple[int, int]:
    """Check a batch of sequences ``(N, T, width)`` and return ``(N, T)``."""
    require_array(name, xs)
    require_float(name, xs)
    if xs.ndim != 3 or xs.shape[2] != width:
        raise ValueError(f"{name} must have shape (N, T, {width_name}={width}), got {xs.shape}")
    return xs.shape[0], xs.shape[1]


def check_step(name: str, x, width: int, width_name: str) -> int:
    """Check a batch of single steps ``(N, width)`` and return ``N``."""
    require_array(name, x)
    require_float(name, x)
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width_name}={width}), got {x.shape}")
    return x.shape[0]


def check_state(name: str, state, N: int | None, H: int, hint: str = "") -> None:
    """Check a recurrent state: an ``(N, H)`` float array (``N`` unchecked when None)."""
    require_array(name, state)
    require_float(name, state)
    expected = f"({'N' if N is None else N}, {H})"
    if state.ndim != 2 or state.shape[1] != H or (N is not None and state.shape[0] != N):
        raise ValueError(f"{name} must have shape {expected}, got {state.shape}{hint}")


# --------------------------------------------------------------------------------------
# Layers without parameters (attention): shapes given by axis names, checked one by one
# --------------------------------------------------------------------------------------


def check_float_array(
    name: str, value, axes: tuple[str, ...], expected: tuple | None = None, match=None
) -> tuple[int, ...]:
    """Check a real float array of rank ``len(axes)`` and return its shape.

    Parameters
    ----------
    name : str
        The argument's name, for messages.
    value : object
        What the caller passed.
    axes : tuple of str
        The names of the axes, e.g. ``("N", "Te", "H")``.
    expected : tuple of (int or None), optional
        The required size of each axis; None leaves an axis free. Default: all free.
    match : (str, numpy.ndarray), optional
        The argument the pinned sizes come from, named in the message: ``("hs_enc",
        hs_enc)`` gives "... to match hs_enc (2, 5, 4)". Formatted only on an error: this
        runs on every call of a layer, once per generated token in the book's decoders.

    Raises
    ------
    TypeError
        ``value`` is not an array of real floats.
    ValueError
        Its rank or a pinned size is wrong. The message shows the expected shape with the
        pinned sizes, e.g. ``(N=2, Td, H=4)``, and the actual one.
    """
    require_array(name, value)
    require_float(name, value)
    shape = value.shape
    fits = len(shape) == len(axes)
    if fits and expected is not None:
        for actual, size in zip(shape, expected, strict=True):
            if size is not None and actual != size:
                fits = False
    if not fits:
        sizes = expected if expected is not None else (None,) * len(axes)
        spec = ", ".join(
            axis if size is None else f"{axis}={size}"
            for axis, size in zip(axes, sizes, strict=True)
        )
        context = "" if match is None else f" to match {match[0]} {match[1].shape}"
        raise ValueError(f"{name} must have shape ({spec}){context}, got {shape}")
    return shape


def require_nonempty_axis(name: str, array: np.ndarray, axis: int, label: str, why: str) -> None:
    """Raise ``ValueError`` when ``array.shape[axis]`` is 0, saying ``why`` that is wrong."""
    if array.shape[axis] == 0:
        raise ValueError(f"{name} must have {label} >= 1 ({why}), got shape {array.shape}")


def check_gradient(name: str, value, expected: tuple[int, ...], of_what: str) -> None:
    """Check an incoming gradient: a real float array of exactly the shape ``expected``,
    which is the shape of ``of_what`` (e.g. ``"the last forward's output"``)."""
    require_array(name, value)
    require_float(name, value)
    if value.shape != tuple(expected):
        raise ValueError(
            f"{name} must have the shape of {of_what} {tuple(expected)}, got {value.shape}"
        )


# --------------------------------------------------------------------------------------
# Sequence layers: embedding, affine, losses, dropout
# --------------------------------------------------------------------------------------


def require_param_dtype(name: str, param) -> np.ndarray:
    """Return ``param`` if it is a float32 or float64 array, else raise ``TypeError``."""
    require_array(name, param)
    if param.dtype not in COMPUTE_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {param.dtype}")
    return param


def require_integer(name: str, array: np.ndarray) -> None:
    """Raise ``TypeError`` unless ``array`` holds integers (bool does not count)."""
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {array.dtype}")


def require_real(name: str, array: np.ndarray) -> None:
    """Raise ``TypeError`` unless ``array`` holds real numbers: bool, integer or float."""
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")


def check_param_list(params, names: tuple[str, ...], layer: str) -> None:
    """Raise ``TypeError`` unless ``params`` is a list or tuple of ``len(names)`` items."""
    if not isinstance(params, (list, tuple)) or len(params) != len(names):
        raise TypeError(
            f"{layer}.params must be a list [{', '.join(names)}], got {_describe(params)}"
        )


def check_embedding_params(params, layer: str = "TimeEmbedding") -> np.ndarray:
    """Check ``[W]`` of an embedding, ``W`` (V, D) float32/float64; return ``W``."""
    check_param_list(params, ("W",), layer)
    W = require_param_dtype("W", params[0])
    if W.ndim != 2:
        raise ValueError(f"W must have shape (V, D), got {W.shape}")
    return W


def check_affine_params(params, layer: str = "TimeAffine") -> tuple[np.ndarray, np.ndarray]:
    """Check ``[W, b]`` of an affine map, ``W`` (D, M) and ``b`` (M,) of one float dtype."""
    check_param_list(params, ("W", "b"), layer)
    W = require_param_dtype("W", params[0])
    b = require_param_dtype("b", params[1])
    if W.ndim != 2:
        raise ValueError(f"W must have shape (D, M), got {W.shape}")
    if W.dtype != b.dtype:
        raise TypeError(f"W and b must share one dtype, got {W.dtype} and {b.dtype}")
    if b.shape != (W.shape[1],):
        raise ValueError(f"b must have shape ({W.shape[1]},) to match W {W.shape}, got {b.shape}")
    return W, b


def check_shape(name: str, array: np.ndarray, expected: tuple, pattern: str) -> None:
    """Raise ``ValueError`` unless ``array.shape == expected``; ``pattern`` shows it in
    words, e.g. ``"(N, T, V=10)"``."""
    if array.shape != expected:
        raise ValueError(f"{name} must have shape {pattern}, got {array.shape}")


def _first_true(flags: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(flags)), flags.shape))


def check_ids(name: str, ids: np.ndarray, V: int, ignore_label: int | None = None) -> None:
    """Raise ``ValueError`` unless every id lies in ``[0, V)`` (or equals ``ignore_label``).

    The message names the first offending id and where it is. The common case (every id
    in range) costs a minimum and a maximum.
    """
    if ids.size == 0:
        return
    if ids.size == 1:  # a generation step's (1, 1): one call instead of a reduction
        low = high = ids.item()
    elif ids.size <= 16:  # Python's min/max beat NumPy's reductions
        values = ids.ravel().tolist()
        low, high = min(values), max(values)
    else:
        low, high = ids.min(), ids.max()
    if low >= 0 and high < V:
        return
    bad = (ids < 0) | (ids >= V)
    if ignore_label is not None:
        bad &= ids != ignore_label
    if not bad.any():
        return
    where = _first_true(bad)
    allowed = f"[0, V={V})"
    if ignore_label is not None:
        allowed += f" or ignore_label={ignore_label}"
    raise ValueError(f"{name} must hold ids in {allowed}, got {ids[where]} at {where}")


def check_binary_labels(name: str, labels) -> None:
    """Check labels that must be 0 or 1: bool, integers, or floats holding exactly 0 or 1."""
    require_array(name, labels)
    kind = labels.dtype.kind
    if kind not in "biuf":
        raise TypeError(
            f"{name} must hold labels 0 or 1 (bool, integer or float), got dtype {labels.dtype}"
        )
    if kind == "b" or labels.size == 0:
        return
    if kind in "iu":
        valid = labels.min() >= 0 and labels.max() <= 1
    else:
        valid = bool(np.all((labels == 0) | (labels == 1)))
    if valid:
        return
    where = _first_true((labels != 0) & (labels != 1))
    raise ValueError(f"{name} must hold labels 0 or 1, got {labels[where]} at {where}")


def check_scalar(name: str, value) -> float:
    """Return a real number (Python or NumPy scalar, or 0-d array) as a float."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    real = (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    return float(value)


_INT64_RANGE = (int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max))


def check_ignore_label(value) -> int:
    """``ignore_label`` as an int that fits int64 (the kernels compare ids in int64)."""
    try:
        label = operator.index(value)
    except TypeError:
        raise TypeError(f"ignore_label must be an integer, got {_describe(value)}") from None
    if not _INT64_RANGE[0] <= label <= _INT64_RANGE[1]:
        raise ValueError(f"ignore_label must fit in int64, got {label}")
    return label


def check_dropout_ratio(value) -> float:
    """``dropout_ratio`` must be a real number in [0, 1); return it as a float."""
    ratio = check_scalar("dropout_ratio", value)
    if not 0 <= ratio < 1:
        raise ValueError(f"dropout_ratio must be in [0, 1), got {value!r}")
    return ratio


# --------------------------------------------------------------------------------------
# Repeated calls: what lets a call identical to the last checked one skip the checks
# --------------------------------------------------------------------------------------


def layout(*arrays: np.ndarray) -> tuple:
    """Shapes, strides and dtypes of ``arrays``: all that an array object can change in
    place besides its values."""
    # Spelled out for the layers' one to three parameters: a decoding step checks them on
    # every call, and this is about twice as fast as a loop.
    if len(arrays) == 1:
        (a,) = arrays
        return (a.shape, a.strides, a.dtype)
    if len(arrays) == 2:
        a, b = arrays
        return (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype)
    if len(arrays) == 3:
        a, b, c = arrays
        return (
            a.shape, a.strides, a.dtype,
            b.shape, b.strides, b.dtype,
            c.shape, c.strides, c.dtype,
        )  # fmt: skip
    return tuple(part for a in arrays for part in (a.shape, a.strides, a.dtype))


class RepeatedCall:
    """The parameter objects (with their layout) and the input's shape and dtype of a call
    that passed every check, so that the next call can tell whether it repeats it.

    A decoding loop calls a layer thousands of times at ``N = T = 1`` with the same
    parameter objects, updated in place at most; their checks cost more than the kernel.
    A call that :meth:`repeats` this one has the same parameter objects in a list of the same
    length, unchanged in layout, and an input array of the same shape and dtype: every
    check of its parameters and of its input's type, shape and dtype holds for it. Values
    (word ids, say) are the caller's to check on every call.

    ``ready`` holds what the layer keeps with the checked call: the arrays its kernels take
    and workspace buffers for the input's shape, reusable for as long as the call repeats,
    or, for a recurrent layer, the states the last call left.
    """

    __slots__ = ("params", "layout", "shape", "dtype", "ready")

    def __init__(self, params, x: np.ndarray, ready=None):
        self.params = tuple(params)
        self.layout = layout(*params)
        self.shape: tuple = x.shape
        self.dtype: np.dtype = x.dtype
        self.ready = ready

    def repeats(self, params, x) -> bool:
        """Whether a call with ``params`` (the layer's list) and input ``x`` repeats this one."""
        # ``is`` for dtypes: NumPy's built-in dtypes are singletons, and a dtype that only
        # compares equal just takes the checked way.
        if type(x) is not np.ndarray or x.dtype is not self.dtype or x.shape != self.shape:
            return False
        if type(params) is not list or len(params) != len(self.params):
            return False
        if not all(map(operator.is_, params, self.params)):
            return False
        return layout(*params) == self.layout
