"""The BLAS peak the layers are measured against: a 2048^3 float32 matrix product.

``sgemm-numpy`` goes through NumPy's BLAS, the library fastrnn's kernels call too: the
report's "share of peak" is relative to it. ``extra_info["gflops"]`` is computed from the
median.
"""

from __future__ import annotations

import numpy as np

from fastrnn._cli import blas_peak_runner

SIZE = 2048
GROUP = f"BLAS peak {SIZE}^3 float32"


def test_sgemm_numpy(benchmark, timed):
    """C = A @ B through ``numpy.matmul`` into a preallocated output, no copies."""
    benchmark.group = GROUP
    run, flop = blas_peak_runner(SIZE, np.float32)
    timed(run, kind="peak", impl="sgemm-numpy", flop=flop)
