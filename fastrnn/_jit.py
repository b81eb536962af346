"""The one place that decides how every fastrnn kernel is compiled.

All kernels go through :func:`kernel`, so the options below hold for every one of them:

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
"""

from __future__ import annotations

import os
import warnings

import numba

#: The fastmath flags that are safe here: none of them changes what NaN or inf produce.
SAFE_FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_TRUTHY = {"1", "true", "yes", "on"}


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


def _warn_no_cache(reason: str) -> None:
    global _cache_warning_issued
    if not _cache_warning_issued:
        _cache_warning_issued = True
        warnings.warn(
            f"fastrnn: kernels are compiled in memory, not cached on disk ({reason}); "
            "set NUMBA_CACHE_DIR to a writable directory to keep them between runs.",
            RuntimeWarning,
            stacklevel=3,
        )


def _options(cache: bool) -> dict:
    return dict(
        nogil=True,
        cache=cache,
        fastmath=set(SAFE_FASTMATH),
        error_model="numpy",
        boundscheck=None,  # follows NUMBA_BOUNDSCHECK, so CI can run with bounds checks on
    )


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
    if not disk_cache_requested():
        return numba.njit(**_options(cache=False))(func)
    try:
        return numba.njit(**_options(cache=True))(func)
    except RuntimeError as err:  # Numba found no writable cache directory for this file
        _warn_no_cache(str(err))
        return numba.njit(**_options(cache=False))(func)


def helper(func):
    """Compile a helper that kernels of the same module call.

    Helpers are not cached on their own: they are compiled into the kernels that call them.
    Numba keys a cached kernel on its own source file only, so a helper must live in the
    same file as the cached kernels that use it, or a changed helper would go unnoticed.
    """
    return numba.njit(**_options(cache=False))(func)
