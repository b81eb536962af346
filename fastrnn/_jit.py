"""The one place that decides how every fastrnn kernel is compiled.

All kernels go through :func:`kernel` (helpers through :func:`helper`), so the options below
hold for every one of them:

* ``nogil=True``: kernels touch no Python objects, so separate layers can run in parallel
  threads.
* ``fastmath`` limited to flags that keep NaN and inf semantics. ``nnan`` and ``ninf`` are
  never set: a NaN in the input must reach the output exactly as it does in NumPy.
* ``error_model="numpy"``: division does not raise, which lets the element-wise loops
  vectorise.
* ``cache=True`` unless ``FASTRNN_DISABLE_CACHE`` is set, or no cache directory is writable
  (a read-only install with no writable home). In that case kernels compile in memory and a
  single :class:`RuntimeWarning` says so.
* ``boundscheck`` follows ``NUMBA_BOUNDSCHECK``. Numba's cache does not record it, so with
  bounds checking on the disk cache is not used at all (neither loaded nor written).

Why the cache key carries a fingerprint
---------------------------------------
Numba keys a cached kernel on its own source file only, but a kernel also contains the code
of every helper it calls, and those live in other modules (:mod:`fastrnn._blas`,
:mod:`fastrnn._math`). A helper changed by ``git pull`` in an editable install would leave
the cached kernels running the old helper. So every cached kernel's key also holds a hash
of all of :data:`KERNEL_MODULES`, and a change to any of them recompiles every kernel.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numba
from numba import types
from numba.core import sigutils
from numba.core.caching import FunctionCache
from numba.core.ccallback import CFunc

#: The fastmath flags that are safe here: none of them changes what NaN or inf produce.
SAFE_FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: Every module whose code is compiled into kernels. Only these may define compiled code
#: (a test checks it), and the cache key of every kernel covers all of them.
KERNEL_MODULES = (
    "_jit.py",
    "_blas.py",
    "_math.py",
    "_tiles.py",
    "_kernels.py",
    "_kernels_sequence.py",
    "_kernels_attention.py",
)

_TRUTHY = {"1", "true", "yes", "on"}


def _source_fingerprint() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for name in KERNEL_MODULES:
        path = package / name
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()


#: A hash of the sources of :data:`KERNEL_MODULES`, part of every cached kernel's key.
SOURCE_FINGERPRINT = _source_fingerprint()


_cache_key_parts: list[str] = []


def add_cache_key(part: str) -> None:
    """Make ``part`` a component of every cached kernel's key.

    For what decides the compiled code but is not in any source file, such as which BLAS
    library and integer width :mod:`fastrnn._blas` bound at import.
    """
    if part not in _cache_key_parts:
        _cache_key_parts.append(part)


class KernelCache(FunctionCache):
    """Numba's disk cache, its keys extended by :data:`SOURCE_FINGERPRINT` and by the parts
    given to :func:`add_cache_key`."""

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), SOURCE_FINGERPRINT, *_cache_key_parts)


def disk_cache_requested() -> bool:
    """Whether the environment allows the on-disk kernel cache.

    No when ``FASTRNN_DISABLE_CACHE`` is set, and no when ``NUMBA_BOUNDSCHECK`` is on: a
    cached kernel is keyed on its source and types only, so a bounds-checked run would load
    unchecked code (and a normal run the slower checked code a checked run had saved).
    """
    if numba.config.BOUNDSCHECK:
        return False
    return os.environ.get("FASTRNN_DISABLE_CACHE", "").strip().lower() not in _TRUTHY


_cache_warning_issued = False


def warn_no_cache(reason: str) -> None:
    """Say once per process that kernels compile in memory, and why."""
    global _cache_warning_issued
    if not _cache_warning_issued:
        _cache_warning_issued = True
        warnings.warn(
            f"fastrnn: kernels are compiled in memory, not cached on disk ({reason}); "
            "set NUMBA_CACHE_DIR to a writable directory to keep them between runs.",
            RuntimeWarning,
            stacklevel=3,
        )


def _options() -> dict:
    return dict(
        nogil=True,
        fastmath=set(SAFE_FASTMATH),
        error_model="numpy",
        boundscheck=None,  # follows NUMBA_BOUNDSCHECK, so CI can run with bounds checks on
    )


def _with_disk_cache(dispatcher, func):
    """Give ``dispatcher`` (or a C callback), compiled from ``func``, a
    :class:`KernelCache` when the environment allows one."""
    if not disk_cache_requested():
        return dispatcher
    try:
        dispatcher._cache = KernelCache(func)
    except RuntimeError as err:  # Numba found no writable cache directory for this file
        warn_no_cache(str(err))
    return dispatcher


def kernel(func):
    """Compile ``func`` with fastrnn's options (see the module docstring).

    Parameters
    ----------
    func : callable
        A pure function that Numba can compile in nopython mode.

    Returns
    -------
    numba.core.registry.CPUDispatcher
        The dispatcher; it compiles lazily, once per argument types.
    """
    return _with_disk_cache(numba.njit(**_options())(func), func)


def callback(func):
    """Compile ``func(address)`` into a C callback ``void (*)(void *)`` with fastrnn's
    options: the jobs that OpenBLAS's threads run (:mod:`fastrnn._tiles`).

    Cached on disk under the same key and conditions as :func:`kernel`, since a callback,
    too, contains the helpers it calls.

    Returns
    -------
    numba.core.ccallback.CFunc
        Compiled (its ``address`` is the C function's).
    """
    options = _options()
    del options["nogil"]  # a C callback holds no GIL to release
    # What ``numba.cfunc`` does, but with fastrnn's cache in place of Numba's own.
    signature = sigutils.normalize_signature(types.void(types.voidptr))
    compiled = CFunc(func, signature, locals={}, options=options)
    _with_disk_cache(compiled, func)
    compiled.compile()
    return compiled


def helper(func):
    """Compile a helper that kernels call.

    Helpers are not cached on their own: they are compiled into the kernels that call them,
    whose cache key covers the helper's module (see the module docstring).
    """
    return numba.njit(**_options())(func)
