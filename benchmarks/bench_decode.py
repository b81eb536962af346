"""One decoding step: a stateful TimeLSTM forward with N=1, T=1, D=H=650, float32.

The group ``"TimeLSTM decode 1x1x650x650"`` sets fastrnn's step against the least any
implementation must do, the two matrix-vector products ``x @ Wx`` and ``h @ Wh``
((1, 650) @ (650, 2600) each), timed through the same BLAS library fastrnn calls:

* ``two-matvec``: both products with fastrnn's own ``gemm`` helper (m = 1) in one
  compiled function, no Python in between; the report's decode overhead is fastrnn's time
  over this one.
* ``two-matmul``: the same two products as ``numpy.matmul`` calls from Python.

Also timed: ``reference`` and PyTorch's ``nn.LSTM`` step at 1 and 2 threads (no autograd).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn._blas import gemm
from fastrnn._cli import Shape, make_params, seed_for
from fastrnn._jit import helper

SHAPE = Shape(1, 1, 650, 650)
GROUP = f"TimeLSTM decode {SHAPE.label}"
#: Flop of the step's two products.
FLOP = 2 * (SHAPE.D + SHAPE.H) * 4 * SHAPE.H


@helper
def _two_matvecs(gx, gh, x, h, Wx, Wh):
    gemm(gx, x, Wx, False, False, False)
    gemm(gh, h, Wh, False, False, False)


def _step_data():
    rng = np.random.default_rng(seed_for("decode", SHAPE))
    params = make_params("TimeLSTM", SHAPE, np.float32, rng)
    x = rng.standard_normal((1, 1, SHAPE.D)).astype(np.float32)
    return params, x


@pytest.mark.parametrize(
    "impl", ["two-matvec", "two-matmul", "fastrnn", "reference", "torch-1t", "torch-2t"]
)
def test_decode_step(benchmark, timed, impl):
    """One time step of a stateful LSTM at batch size 1, or its two products alone."""
    benchmark.group = GROUP
    params, x = _step_data()
    Wx, Wh, b = params
    H = SHAPE.H
    if impl == "two-matvec":
        x2d, h2d = x[0], np.zeros((1, H), np.float32) + 0.5
        gx, gh = np.empty((1, 4 * H), np.float32), np.empty((1, 4 * H), np.float32)
        _two_matvecs(gx, gh, x2d, h2d, Wx, Wh)  # compile outside the timing

        def run():
            _two_matvecs(gx, gh, x2d, h2d, Wx, Wh)

    elif impl == "two-matmul":
        x1d, h1d = x[0, 0], np.full(H, 0.5, np.float32)
        gx, gh = np.empty(4 * H, np.float32), np.empty(4 * H, np.float32)

        def run():
            np.matmul(x1d, Wx, out=gx)
            np.matmul(h1d, Wh, out=gh)

    elif impl in ("fastrnn", "reference"):
        module = fastrnn if impl == "fastrnn" else reference
        layer = module.TimeLSTM(*params, stateful=True)
        layer.forward(x)  # the state exists from here on, as in a decoding loop

        def run():
            layer.forward(x)

    else:
        torch = pytest.importorskip("torch")
        torch.manual_seed(seed_for("torch decode", SHAPE))
        lstm = torch.nn.LSTM(SHAPE.D, H, batch_first=True)
        x_t = torch.from_numpy(x)
        state = [(torch.zeros(1, 1, H), torch.zeros(1, 1, H))]

        def run():
            with torch.no_grad():
                _, state[0] = lstm(x_t, state[0])

    timed(run, kind="decode", impl=impl, layer="TimeLSTM", shape=SHAPE, flop=FLOP)
