"""Forward+backward of the recurrent layers: reference vs fastrnn vs PyTorch, float32.

One benchmark group per layer and shape (``"TimeLSTM 20x35x650x650"``), holding the
implementations side by side: ``reference`` (fastrnn.reference, the book's NumPy code),
``fastrnn``, and ``torch-1t``/``torch-2t`` (``nn.RNN(tanh)``, ``nn.LSTM``, ``nn.GRU``,
``nn.LSTM(bidirectional=True)``, batch_first, at 1 and 2 threads; skipped without PyTorch).
PyTorch's GRU applies the reset gate after the recurrent product, the book's before it: the
same products, so comparable times, different outputs.

Each call is one ``forward(xs)`` and one ``backward(dhs)`` on seeded data;
``extra_info["flop"]`` counts the matrix products (see :func:`fastrnn._cli.gemm_flop`).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn._cli import (
    BOOK_SHAPES,
    Shape,
    build_layer,
    forward_backward,
    gemm_flop,
    make_data,
    make_params,
    seed_for,
    torch_runner,
)

CASES = [(layer, shape) for layer in ("TimeRNN", "TimeLSTM", "TimeGRU") for shape in BOOK_SHAPES]
CASES += [("TimeBiLSTM", Shape(20, 35, 650, 650)), ("TimeBiLSTM", Shape(128, 29, 16, 256))]
IMPLEMENTATIONS = ["reference", "fastrnn", "torch-1t", "torch-2t"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("layer", "shape"), CASES, ids=[f"{layer}-{shape.label}" for layer, shape in CASES]
)
def test_forward_backward(benchmark, timed, layer, shape, impl):
    """One forward+backward pass of ``impl`` on ``layer`` at ``shape``."""
    benchmark.group = f"{layer} {shape.label}"
    if impl.startswith("torch-"):
        pytest.importorskip("torch")
        run = torch_runner(layer, shape, np.float32)
    else:
        rng = np.random.default_rng(seed_for(layer, shape))
        params = make_params(layer, shape, np.float32, rng)
        xs, dhs = make_data(layer, shape, np.float32, rng)
        module = fastrnn if impl == "fastrnn" else reference
        run = forward_backward(build_layer(module, layer, params), xs, dhs)
    timed(
        run,
        kind="layer",
        impl=impl,
        layer=layer,
        shape=shape,
        flop=gemm_flop(layer, shape),
    )
