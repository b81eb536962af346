"""The kernels' element-wise ``fast_exp`` against NumPy, in both dtypes."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastrnn._jit import SAFE_FASTMATH
from fastrnn._math import fast_exp

#: Largest error in ulp of the result, and the argument below which 0 is returned.
EXP_CONTRACT = {np.float32: (5.0, -87.33), np.float64: (1.0, -708.0)}


@numba.njit(fastmath=set(SAFE_FASTMATH), error_model="numpy")
def _exp_all(out, x):
    for j in range(x.size):
        out[j] = fast_exp(x[j])


def _fast_exp(x):
    out = np.empty_like(x)
    _exp_all(out, x)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_exp_is_within_its_ulp_bound(dtype):
    max_ulp, low = EXP_CONTRACT[dtype]
    high = np.log(np.finfo(dtype).max)
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.uniform(low, high, 200_000), rng.uniform(-30, 30, 200_000), rng.uniform(-1, 1, 50_000)]
    ).astype(dtype)
    x = x[(x >= low) & (x <= high)]
    exact = np.exp(x.astype(np.longdouble))
    ulp = np.spacing(exact.astype(dtype)).astype(np.longdouble)
    errors = np.abs(_fast_exp(x).astype(np.longdouble) - exact) / ulp
    assert errors.max() <= max_ulp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_exp_special_values(dtype):
    _, low = EXP_CONTRACT[dtype]
    high = np.log(np.finfo(dtype).max)
    x = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 2 * high, 2 * low, low - 1, -1e4], dtype=dtype
    )
    got = _fast_exp(x)
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:], np.array([np.inf, 0, 1, 1, np.inf, 0, 0, 0], dtype))
    # Just above the bound the result is normal, and close to NumPy's.
    edge = np.array([low + 0.01], dtype=dtype)
    np.testing.assert_allclose(_fast_exp(edge), np.exp(edge), rtol=10 * np.finfo(dtype).eps)
