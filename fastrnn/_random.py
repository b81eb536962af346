"""NumPy's global random state, as the dropout kernel reads and advances it.

The book draws dropout masks with ``np.random.rand``, from the MT19937 generator behind
NumPy's global ``RandomState``. :func:`global_mt19937` gives a view of that generator's
state (``mt19937_state``: 624 ``uint32`` words, then the ``int`` position of the next one)
so that :func:`fastrnn._kernels_sequence.dropout_forward_mt19937` can draw the same numbers
in place, and the lock that NumPy's own methods hold while they draw.

It gives ``None`` when the global generator is not an MT19937 (``np.random.set_bit_generator``
can install another), or when the state it reads through the view is not the one NumPy
reports: the caller then falls back to ``np.random.rand``.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

__all__ = ["global_mt19937"]

_WORDS = 624

# The last generator seen, its lock and its state view. Holding the generator keeps the
# memory that the view reads alive.
_cached: tuple[object, threading.Lock, np.ndarray] | None = None


def _global_bit_generator():
    random_state = getattr(np.random.mtrand, "_rand", None)
    return getattr(random_state, "_bit_generator", None)


def _state_view(bit_generator) -> np.ndarray | None:
    """A (625,) ``uint32`` view of ``bit_generator``'s state, checked against the state that
    NumPy reports, or None."""
    try:
        address = bit_generator.ctypes.state_address
        reported = bit_generator.state["state"]
    except (AttributeError, KeyError, TypeError):
        return None
    view = np.ctypeslib.as_array((ctypes.c_uint32 * (_WORDS + 1)).from_address(address))
    key, position = np.asarray(reported["key"]), int(reported["pos"])
    if key.shape != (_WORDS,) or not np.array_equal(view[:_WORDS], key):
        return None
    if view[_WORDS] != position:
        return None
    return view


def global_mt19937() -> tuple[threading.Lock, np.ndarray] | None:
    """The lock and a (625,) ``uint32`` state view of NumPy's global MT19937, or None.

    Hold the lock while the view is read or written: NumPy's ``RandomState`` methods hold
    it while they draw, with the GIL released.
    """
    global _cached
    bit_generator = _global_bit_generator()
    if type(bit_generator) is not np.random.MT19937:
        return None
    cached = _cached
    if cached is not None and cached[0] is bit_generator:
        return cached[1], cached[2]
    lock = bit_generator.lock
    with lock:
        view = _state_view(bit_generator)
    if view is None:
        return None
    _cached = (bit_generator, lock, view)
    return lock, view
