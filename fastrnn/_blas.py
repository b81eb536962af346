"""The BLAS that fastrnn's kernels call: NumPy's own, bound at import.

Why NumPy's
-----------
The user's model runs NumPy products (affine layers, attention, the optimizer) between the
calls into fastrnn. If the kernels used another BLAS library (Numba's default is SciPy's,
which ships its own OpenBLAS), the process would hold two thread pools, each spinning for a
while after its last call on the cores the other one needs: on two cores, a training loop
ran several times slower. Calling NumPy's library gives one pool, and a user's thread
setting (``threadpoolctl.threadpool_limits``, ``OPENBLAS_NUM_THREADS``) governs NumPy and
fastrnn alike.

How
---
At import, threadpoolctl names the BLAS library NumPy loaded; ctypes finds its CBLAS entry
points (OpenBLAS with or without the ``scipy_`` prefix and the ``64_`` suffix of 64-bit
integer builds, MKL's ``cblas_*``), and llvmlite registers their addresses under fastrnn's
own names, which the kernels declare as external functions. The integer width of the
library's interface (LP64 or ILP64) is read off the library and decides the declaration.

Where NumPy's library cannot be bound (an unknown BLAS, or ``FASTRNN_BLAS=scipy``), the
kernels fall back to Numba's route through SciPy's BLAS, with one :class:`RuntimeWarning`
(SciPy is then needed: the optional extra ``fastrnn[scipy]``).

The route and integer width are part of every cached kernel's key
(:func:`fastrnn._jit.add_cache_key`), so a kernel compiled for one library is never loaded
for another.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from llvmlite import binding as llvm
from numba import types
from numba.extending import overload

from . import _jit

__all__ = ["BINDING", "BlasBinding", "blas_threads", "gemm"]

#: ``FASTRNN_BLAS``: ``numpy`` (the default) or ``scipy`` to force the fallback route.
ROUTE_VARIABLE = "FASTRNN_BLAS"

#: fastrnn's names for the bound entry points, as the kernels declare them.
SYMBOLS = {
    "sgemm": "fastrnn_cblas_sgemm",
    "dgemm": "fastrnn_cblas_dgemm",
    "sgemv": "fastrnn_cblas_sgemv",
    "dgemv": "fastrnn_cblas_dgemv",
}

_OPENBLAS_AFFIXES = tuple(itertools.product(("scipy_", ""), ("64_", "_64", "")))

# CBLAS enumerations (C ints in every interface).
_COL_MAJOR = 102
_NO_TRANS = 111
_TRANS = 112


@dataclass(frozen=True)
class BlasBinding:
    """What the kernels' matrix products call.

    Attributes
    ----------
    route : str
        ``"numpy"``: NumPy's own BLAS library; ``"scipy"``: the fallback through Numba's
        ``numba_xxgemm`` and SciPy's BLAS.
    library : str or None
        The file of the bound library (None on the fallback route).
    api : str or None
        threadpoolctl's ``internal_api`` of that library: ``"openblas"`` or ``"mkl"``.
    int_bits : int
        Width of the library's integer arguments: 64 (ILP64) or 32 (LP64).
    symbols : dict
        fastrnn's name -> the library's symbol, for the bound entry points.
    reason : str or None
        Why the fallback route is used.
    thread_dispatch : int
        Address of OpenBLAS's ``gotoblas_pthread``, which runs a function on the library's
        own threads (:mod:`fastrnn._tiles`); 0 when the library has none (MKL, OpenMP
        builds of OpenBLAS, the fallback route).
    thread_count : callable or None
        OpenBLAS's ``openblas_get_num_threads`` (through ctypes) with the dispatch.
    """

    route: str
    library: str | None = None
    api: str | None = None
    int_bits: int = 32
    symbols: dict | None = None
    reason: str | None = None
    thread_dispatch: int = 0
    thread_count: object = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """One line for humans, e.g. for ``python -m fastrnn``."""
        if self.route == "numpy":
            name = os.path.basename(self.library or "?")
            threads = "; packed products on its threads" if self.thread_dispatch else ""
            return f"NumPy's {self.api} ({name}, {self.int_bits}-bit integers{threads})"
        return f"SciPy's BLAS through Numba (fallback: {self.reason})"


def _numpy_blas_candidates() -> list[dict]:
    """threadpoolctl's BLAS entries, the library NumPy loaded first."""
    import numpy.linalg  # noqa: F401  (makes sure NumPy's BLAS is loaded)
    from threadpoolctl import threadpool_info

    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    numpy_dirs = tuple(
        os.path.join(numpy_dir, name) for name in ("numpy.libs", "numpy", "numpy.dylibs")
    )

    def belongs_to_numpy(lib):
        return os.path.abspath(lib.get("filepath", "")).startswith(numpy_dirs)

    # A wheel bundles its library next to the package; elsewhere (conda, distributions)
    # NumPy and SciPy link the same system library, so any entry is NumPy's.
    return sorted(blas, key=lambda lib: not belongs_to_numpy(lib))


def _symbol_address(dll, name: str) -> int | None:
    try:
        return ctypes.cast(getattr(dll, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _find_openblas(dll) -> tuple[dict, int] | None:
    for prefix, suffix in _OPENBLAS_AFFIXES:
        found = {key: f"{prefix}cblas_{key}{suffix}" for key in SYMBOLS}
        if all(_symbol_address(dll, name) for name in found.values()):
            int_bits = 64 if suffix else _openblas_config_int_bits(dll, prefix, suffix)
            return found, int_bits
    return None


def _openblas_config_int_bits(dll, prefix: str, suffix: str) -> int:
    """64 when the OpenBLAS build says ``USE64BITINT``, else 32."""
    get_config = getattr(dll, f"{prefix}openblas_get_config{suffix}", None)
    if get_config is None:
        return 32
    get_config.restype = ctypes.c_char_p
    config = get_config() or b""
    return 64 if b"USE64BITINT" in config else 32


def _find_mkl(dll) -> tuple[dict, int] | None:
    explicit = {key: f"cblas_{key}_64" for key in SYMBOLS}
    if all(_symbol_address(dll, name) for name in explicit.values()):
        return explicit, 64
    plain = {key: f"cblas_{key}" for key in SYMBOLS}
    if all(_symbol_address(dll, name) for name in plain.values()):
        # mkl_rt's plain names follow MKL_INTERFACE_LAYER, LP64 unless it says ILP64.
        ilp64 = "ILP64" in os.environ.get("MKL_INTERFACE_LAYER", "").upper()
        return plain, 64 if ilp64 else 32
    return None


_FINDERS = {"openblas": _find_openblas, "mkl": _find_mkl}


def _bind_numpy_blas() -> BlasBinding:
    """Find NumPy's BLAS and register its CBLAS entry points under fastrnn's names."""
    requested = os.environ.get(ROUTE_VARIABLE, "numpy").strip().lower() or "numpy"
    if requested == "scipy":
        return BlasBinding("scipy", reason=f"{ROUTE_VARIABLE}=scipy")
    if requested != "numpy":
        raise ValueError(f"{ROUTE_VARIABLE} must be 'numpy' or 'scipy', got {requested!r}")
    try:
        candidates = _numpy_blas_candidates()
    except ImportError:
        return BlasBinding("scipy", reason="threadpoolctl is not installed")
    if not candidates:
        return BlasBinding("scipy", reason="threadpoolctl found no BLAS library in NumPy")
    for lib in candidates:
        api, path = lib.get("internal_api"), lib.get("filepath")
        finder = _FINDERS.get(api)
        if finder is None or not path:
            continue
        dll = ctypes.CDLL(path)
        found = finder(dll)
        if found is None:
            continue
        symbols, int_bits = found
        for ours, theirs in zip(SYMBOLS.values(), symbols.values(), strict=True):
            llvm.add_symbol(ours, _symbol_address(dll, theirs))
        dispatch, thread_count = 0, None
        if api == "openblas" and lib.get("threading_layer") == "pthreads":
            thread_count = _openblas_thread_count(dll)
            dispatch = _symbol_address(dll, "gotoblas_pthread") or 0
        return BlasBinding(
            "numpy",
            library=path,
            api=api,
            int_bits=int_bits,
            symbols=dict(zip(SYMBOLS.values(), symbols.values(), strict=True)),
            thread_dispatch=dispatch if thread_count is not None else 0,
            thread_count=thread_count if dispatch else None,
        )
    names = ", ".join(f"{lib.get('internal_api')} ({lib.get('filepath')})" for lib in candidates)
    return BlasBinding("scipy", reason=f"no CBLAS entry points found in {names}")


def _openblas_thread_count(dll):
    """OpenBLAS's ``openblas_get_num_threads`` as a ctypes function, or None."""
    for prefix, suffix in _OPENBLAS_AFFIXES:
        function = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
        if function is not None:
            function.restype = ctypes.c_int
            function.argtypes = []
            return function
    return None


def blas_threads() -> int:
    """How many threads the bound OpenBLAS uses now (threadpoolctl's limits included); 1
    without a thread dispatch (:attr:`BlasBinding.thread_dispatch`)."""
    count = BINDING.thread_count
    return 1 if count is None else max(1, count())


def _warn_fallback(binding: BlasBinding) -> None:
    warnings.warn(
        f"fastrnn: kernels use SciPy's BLAS, not NumPy's ({binding.reason}). NumPy and "
        "fastrnn then run two BLAS thread pools that compete for the cores: a training "
        "loop that mixes NumPy products with fastrnn layers can run several times slower. "
        "Setting OPENBLAS_NUM_THREADS=1 (or OPENBLAS_THREAD_TIMEOUT=4) limits the damage.",
        RuntimeWarning,
        stacklevel=2,
    )


BINDING = _bind_numpy_blas()
_jit.add_cache_key(f"blas:{BINDING.route}:{BINDING.int_bits}")
if BINDING.route == "scipy":
    from numba.np.linalg import ensure_blas

    try:
        ensure_blas()  # SciPy provides Numba's BLAS; without it no kernel could run
    except ImportError as error:
        raise ImportError(
            f"fastrnn: NumPy's BLAS cannot be used ({BINDING.reason}), and the fallback "
            "route needs SciPy, which is not installed: pip install 'fastrnn[scipy]'"
        ) from error
    _warn_fallback(BINDING)


# --------------------------------------------------------------------------------------
# Declarations the kernels compile against
# --------------------------------------------------------------------------------------

_INT = types.int64 if BINDING.int_bits == 64 else types.int32
_ENUM = types.int32
_PTR = types.intp  # pointers travel as integers: the same registers on every 64-bit ABI


def _cblas_gemm(name, real):
    # void cblas_?gemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    return types.ExternalFunction(
        name,
        types.void(
            _ENUM, _ENUM, _ENUM, _INT, _INT, _INT, real, _PTR, _INT, _PTR, _INT, real, _PTR, _INT
        ),
    )


def _cblas_gemv(name, real):
    # void cblas_?gemv(order, trans, M, N, alpha, A, lda, X, incX, beta, Y, incY)
    return types.ExternalFunction(
        name, types.void(_ENUM, _ENUM, _INT, _INT, real, _PTR, _INT, _PTR, _INT, real, _PTR, _INT)
    )


_cblas_sgemm = _cblas_gemm(SYMBOLS["sgemm"], types.float32)
_cblas_dgemm = _cblas_gemm(SYMBOLS["dgemm"], types.float64)
_cblas_sgemv = _cblas_gemv(SYMBOLS["sgemv"], types.float32)
_cblas_dgemv = _cblas_gemv(SYMBOLS["dgemv"], types.float64)

# Numba's own C helpers around SciPy's ?gemm/?gemv (Fortran semantics, scalars by address).
_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(
        types.char, types.char, types.char, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR,
        _PTR, _PTR, _PTR,
    ),
)  # fmt: skip
_xxgemv = types.ExternalFunction(
    "numba_xxgemv",
    types.intc(types.char, types.char, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR),
)
# alpha and beta by address on the fallback route: static arrays live as long as the process.
_ZERO_ONE_F32 = np.array([0.0, 1.0], dtype=np.float32)
_ZERO_ONE_F64 = np.array([0.0, 1.0], dtype=np.float64)


def col_major_gemm(c, a, b, m, n, k, lda, ldb, ldc, trans_a, trans_b, accumulate):
    """Column-major ``C (m, n) = op(A) @ op(B)`` (``+=`` when ``accumulate``), arrays given
    by their first element. Callable from Numba-compiled code only."""
    raise NotImplementedError("col_major_gemm is only available inside Numba kernels")


def col_major_gemv(y, a, x, m, n, lda, trans, accumulate):
    """Column-major ``y = op(A) @ x`` (``+=`` when ``accumulate``), ``A`` (m, n), unit
    strides for ``x`` and ``y``. Callable from Numba-compiled code only."""
    raise NotImplementedError("col_major_gemv is only available inside Numba kernels")


_JIT_OPTIONS = dict(fastmath=set(_jit.SAFE_FASTMATH), error_model="numpy")


@overload(col_major_gemm, jit_options=_JIT_OPTIONS)
def _col_major_gemm_overload(c, a, b, m, n, k, lda, ldb, ldc, trans_a, trans_b, accumulate):
    single = c.dtype == types.float32
    if BINDING.route == "numpy":
        cblas = _cblas_sgemm if single else _cblas_dgemm
        real = np.float32 if single else np.float64

        def via_numpy(c, a, b, m, n, k, lda, ldb, ldc, trans_a, trans_b, accumulate):
            cblas(
                _COL_MAJOR,
                _TRANS if trans_a else _NO_TRANS,
                _TRANS if trans_b else _NO_TRANS,
                m, n, k, real(1.0), a.ctypes.data, lda, b.ctypes.data, ldb,
                real(1.0 if accumulate else 0.0), c.ctypes.data, ldc,
            )  # fmt: skip

        return via_numpy
    consts = _ZERO_ONE_F32 if single else _ZERO_ONE_F64
    kind = ord("s") if single else ord("d")

    def via_scipy(c, a, b, m, n, k, lda, ldb, ldc, trans_a, trans_b, accumulate):
        zero = consts.ctypes.data
        one = zero + consts.itemsize
        _xxgemm(
            kind,
            ord("t") if trans_a else ord("n"),
            ord("t") if trans_b else ord("n"),
            m, n, k, one, a.ctypes.data, lda, b.ctypes.data, ldb,
            one if accumulate else zero, c.ctypes.data, ldc,
        )  # fmt: skip

    return via_scipy


@overload(col_major_gemv, jit_options=_JIT_OPTIONS)
def _col_major_gemv_overload(y, a, x, m, n, lda, trans, accumulate):
    single = y.dtype == types.float32
    if BINDING.route == "numpy":
        cblas = _cblas_sgemv if single else _cblas_dgemv
        real = np.float32 if single else np.float64

        def via_numpy(y, a, x, m, n, lda, trans, accumulate):
            cblas(
                _COL_MAJOR, _TRANS if trans else _NO_TRANS, m, n, real(1.0), a.ctypes.data,
                lda, x.ctypes.data, 1, real(1.0 if accumulate else 0.0), y.ctypes.data, 1,
            )  # fmt: skip

        return via_numpy
    consts = _ZERO_ONE_F32 if single else _ZERO_ONE_F64
    kind = ord("s") if single else ord("d")

    def via_scipy(y, a, x, m, n, lda, trans, accumulate):
        zero = consts.ctypes.data
        one = zero + consts.itemsize
        _xxgemv(
            kind, ord("t") if trans else ord("n"), m, n, one, a.ctypes.data, lda,
            x.ctypes.data, one if accumulate else zero, y.ctypes.data,
        )  # fmt: skip

    return via_scipy


@_jit.helper
def gemm(c, a, b, transpose_a, transpose_b, accumulate):
    """``c = op(a) @ op(b)`` (``+=`` when ``accumulate``), all row-major 2-D arrays.

    Each operand may be a column slice of a larger C-contiguous matrix: only the last axis
    must have unit stride. The caller guarantees matching shapes and dtypes.
    """
    m, n = c.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # an empty sum; BLAS is not asked about degenerate leading dimensions
        if not accumulate:
            c[:, :] = 0
        return
    itemsize = c.itemsize
    lda = max(a.strides[0] // itemsize, a.shape[1], 1)
    ldb = max(b.strides[0] // itemsize, b.shape[1], 1)
    ldc = max(c.strides[0] // itemsize, n, 1)
    if m == 1 and not transpose_a:
        # One output row (a batch of one): a matrix-vector product. OpenBLAS's gemm does
        # not forward this case to gemv and packs all of ``b`` first, 3x slower.
        if transpose_b:  # c = a @ b.T; b (n, k) is column-major (k, n)
            col_major_gemv(c, b, a, k, n, ldb, True, accumulate)
        else:  # c = a @ b; b (k, n) is column-major (n, k)
            col_major_gemv(c, b, a, n, k, ldb, False, accumulate)
        return
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    col_major_gemm(c, b, a, n, m, k, ldb, lda, ldc, transpose_b, transpose_a, accumulate)
