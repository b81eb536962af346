"""The BLAS peak the layers are measured against: a 2048^3 float32 matrix product.

``sgemm-scipy`` goes through SciPy's BLAS, the library fastrnn's kernels call (Numba's
BLAS is SciPy's): the report's "share of peak" is relative to it. ``matmul-numpy`` is the
same product through NumPy's own OpenBLAS, which the reference layers use, for comparison.
``extra_info["gflops"]`` is computed from the median.
"""

from __future__ import annotations

import numpy as np

from fastrnn._cli import blas_peak_runner, seed_for

SIZE = 2048
GROUP = f"BLAS peak {SIZE}^3 float32"


def test_sgemm_scipy(benchmark, timed):
    """C = A @ B through ``scipy.linalg.blas.sgemm``, Fortran-ordered, no copies."""
    benchmark.group = GROUP
    run, flop = blas_peak_runner(SIZE, np.float32)
    timed(run, kind="peak", impl="sgemm-scipy", flop=flop)


def test_matmul_numpy(benchmark, timed):
    """C = A @ B through ``numpy.matmul`` into a preallocated output."""
    benchmark.group = GROUP
    rng = np.random.default_rng(seed_for("numpy gemm", SIZE))
    a = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    b = rng.standard_normal((SIZE, SIZE), dtype=np.float32)
    c = np.empty((SIZE, SIZE), np.float32)
    timed(
        lambda: np.matmul(a, b, out=c),
        kind="peak",
        impl="matmul-numpy",
        flop=2 * SIZE**3,
    )
