"""Forward+backward of the other time layers: reference vs fastrnn, float32.

The cases of :data:`fastrnn._cli.TIME_LAYER_CASES`, the ones ``python -m fastrnn`` checks
and times in its second table: TimeEmbedding, TimeAffine (also on ``W = E.T``, as weight
tying passes it), TimeSoftmaxWithLoss, TimeSigmoidWithLoss, TimeDropout and TimeAttention at
the sizes the book's models use them with. One benchmark group per layer and shape
(``"TimeAffine N=20 T=35 D=650 M=10000 tied"``), holding ``reference``
(:mod:`fastrnn.reference`, the book's NumPy code) and ``fastrnn``.

Each call is one forward and one backward pass on seeded data: for the loss layers
``backward(N * T)``, as in ``python -m fastrnn`` (the same work as the book's ``backward(1)``);
TimeDropout draws a new mask from ``np.random`` at every call, as the book's layer does.
``extra_info``: ``kind="time-layer"``, ``layer``, ``shape`` (the case's label); no ``flop``,
since most of these layers do no matrix product. The kernels are compiled by the session's
``compiled_kernels`` fixture, before any call.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastrnn
from fastrnn import reference
from fastrnn._cli import TIME_LAYER_CASES

IMPLEMENTATIONS = ["reference", "fastrnn"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", TIME_LAYER_CASES, ids=[case.id for case in TIME_LAYER_CASES])
def test_forward_backward(benchmark, timed, case, impl):
    """One forward+backward pass of ``impl`` on ``case``."""
    benchmark.group = f"{case.layer} {case.label}"
    module = fastrnn if impl == "fastrnn" else reference
    run = case.pass_maker(np.float32)(module)
    last = {}  # the outputs of the latest call only: a real run makes many calls

    def call():
        last.update(run())

    timed(call, kind="time-layer", impl=impl, layer=case.layer, shape=case.label)
    assert last and all(np.all(np.isfinite(value)) for value in last.values()), sorted(last)
