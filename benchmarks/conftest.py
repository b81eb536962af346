"""Shared fixtures and helpers of the benchmark suite.

Every benchmark records what the report needs in ``benchmark.extra_info``: ``kind``,
``impl``, ``layer``, ``shape``, ``flop`` (matrix-product flop per call), ``blas_threads`` and,
after a real run, ``gflops`` (from the median, when ``flop`` is known) and ``foreign_load``:
the cores other processes kept busy meanwhile. The kinds:

* ``"layer"``: a recurrent layer's forward+backward (``bench_layers.py``), ``shape``
  ``[N, T, D, H]``;
* ``"time-layer"``: another time layer's forward+backward (``bench_time_layers.py``),
  ``shape`` the case's label such as ``"N=20 T=35 D=650 V=10000"``, no ``flop``;
* ``"decode"``: one decoding step (``bench_decode.py``);
* ``"peak"``: the 2048^3 sgemm the shares of peak refer to (``bench_blas.py``);
* ``"model"``: a training step or a generation of one of the book's models
  (``bench_models.py``), which adds ``model``, ``phase``, ``sizes`` and, for generation,
  ``tokens`` and ``per_token``.
The machine description of :func:`fastrnn._cli.machine_info` (CPU, cores, package versions,
BLAS libraries and threads) is stored in the JSON's ``machine_info["fastrnn"]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import fastrnn
from fastrnn import _cli
from fastrnn._cli import (
    LAYERS,
    TIME_LAYER_CASES,
    ForeignLoad,
    Shape,
    blas_threads,
    forward_backward,
    make_data,
    make_params,
    seed_for,
    seeded_global_random,
    settle,
    torch_threads,
)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add fastrnn's machine description (versions, BLAS libraries, threads) to the JSON."""
    machine_info["fastrnn"] = _cli.machine_info()


@pytest.fixture(scope="session")
def compiled_kernels() -> None:
    """Compile (or load from Numba's cache) every float32 kernel once per session.

    Runs one forward+backward pass of each layer (the recurrent ones and every case of
    :data:`fastrnn._cli.TIME_LAYER_CASES`) on a tiny shape, so that no timed call and no
    smoke run of a benchmark pays for compilation.
    """
    shape = Shape(2, 3, 4, 5)
    for layer in LAYERS:
        rng = np.random.default_rng(seed_for("warm-up", layer))
        params = make_params(layer, shape, np.float32, rng)
        xs, dhs = make_data(layer, shape, np.float32, rng)
        forward_backward(getattr(fastrnn, layer)(*params), xs, dhs)()
    with seeded_global_random(seed_for("warm-up")):  # TimeDropout draws from np.random
        for case in TIME_LAYER_CASES:
            case.tiny_pass(fastrnn, np.float32)()


def torch_thread_count(impl: str) -> int:
    """``"torch-2t"`` -> 2."""
    return int(impl.removeprefix("torch-").removesuffix("t"))


@pytest.fixture
def timed(benchmark, compiled_kernels):
    """The benchmark fixture, wrapped: ``timed(fn, kind=..., impl=..., ...)``.

    See :func:`run_benchmark` for the arguments.
    """

    def run(fn, **info):
        run_benchmark(benchmark, fn, **info)

    return run


def run_benchmark(
    benchmark,
    fn: Callable[[], object],
    *,
    kind: str,
    impl: str,
    layer: str | None = None,
    shape: Shape | str | None = None,
    flop: int | None = None,
) -> None:
    """Benchmark ``fn`` and record what the report needs in ``benchmark.extra_info``.

    In a real run (``--benchmark-enable``) ``fn`` is first warmed up for a quarter of a
    second, which also lets the worker threads of another library's pool (PyTorch's, or
    OpenBLAS's after PyTorch ran) stop spinning; in smoke mode it runs once.
    PyTorch implementations (``impl`` ``"torch-<n>t"``) run with ``n`` threads, restored
    afterwards. ``shape`` is recorded as ``[N, T, D, H]`` for a :class:`Shape`, as given for
    a label.
    """
    benchmark.extra_info.update(
        kind=kind,
        impl=impl,
        layer=layer,
        shape=list(shape) if isinstance(shape, Shape) else shape,
        flop=flop,
        blas_threads=blas_threads(),
    )
    if impl.startswith("torch-"):
        threads = torch_thread_count(impl)
        benchmark.extra_info["torch_threads"] = threads
        with torch_threads(threads):
            _run(benchmark, fn)
    else:
        _run(benchmark, fn)
    if benchmark.stats is not None and flop:
        benchmark.extra_info["gflops"] = flop / benchmark.stats.stats.median / 1e9


def _run(benchmark, fn):
    if benchmark.disabled:
        benchmark(fn)
        return
    load = ForeignLoad().start()
    settle(fn)
    benchmark(fn)
    foreign = load.cores()
    benchmark.extra_info["foreign_load"] = None if foreign is None else round(foreign, 3)
