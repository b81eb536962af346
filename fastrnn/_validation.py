"""Argument checks for the layer classes.

A Numba kernel handed a wrong shape does not raise: it reads and writes past its buffers.
So every argument is checked here, in Python, before any kernel runs, and every error names
the argument and the shapes or dtypes involved. Nothing here changes a layer's state, so a
layer that raised is still usable.
"""

from __future__ import annotations

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
