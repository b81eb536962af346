"""Packed per-step products (fastrnn._tiles): against NumPy over every tile edge, on the
BLAS library's threads and on the calling thread, from several Python threads at once and
on one core.

That the layers give the reference's numbers with the packed route pinned is checked in
``test_layers.py`` (``test_every_route_matches_reference``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _support import DTYPES, assert_close, assert_threads_give_serial_results
from threadpoolctl import threadpool_limits

import fastrnn
from fastrnn import _kernels as kernels
from fastrnn import _planner
from fastrnn import _tiles as tiles
from fastrnn._blas import BINDING
from fastrnn._jit import kernel


@kernel
def _pack_and_multiply(C, A, W, panels, accumulate, transposed, pool):
    """``C (+)= A @ W`` (``A @ W.T`` when ``transposed``), packing first as the kernels do."""
    tiles.pack_panels(panels, W, transposed)
    tiles.packed_product(C, A, panels, accumulate, pool)


def _product(C, A, W, accumulate, transposed, pool):
    depth, columns = (W.shape[1], W.shape[0]) if transposed else W.shape
    panels = np.full((tiles.panel_count(columns), depth, tiles.PANEL), np.nan, W.dtype)
    _pack_and_multiply(C, A, W, panels, accumulate, transposed, pool)
    return panels


def _pools(dtype):
    threaded = tiles.use_threads(tiles.new_pool(dtype))
    return {"blas threads": threaded, "calling thread": tiles.UNUSED_POOL}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transposed", [False, True], ids=["W", "W.T"])
def test_matches_numpy_over_every_tile_edge(dtype, transposed):
    rng = np.random.default_rng(0)
    pools = _pools(dtype)
    for M in (1, 2, 4, 5, 6, 11, 20):
        for K in (0, 1, 7, 33):
            for G in (1, 7, 8, 9, 16, 17, 40):
                W = rng.standard_normal((G, K) if transposed else (K, G)).astype(dtype)
                A = rng.standard_normal((M, K)).astype(dtype)
                product = A @ (W.T if transposed else W)
                for name, pool in pools.items():
                    for accumulate in (False, True):
                        C = rng.standard_normal((M, G)).astype(dtype)
                        expected = product + C if accumulate else product
                        _product(C, A, W, accumulate, transposed, pool)
                        assert_close(C, expected, err_msg=f"{name} M={M} K={K} G={G}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_panels_hold_the_matrix_and_zeros(dtype):
    W = np.arange(3 * 21, dtype=dtype).reshape(3, 21)
    panels = np.full((2, 3, tiles.PANEL), np.nan, dtype)
    _pack_and_multiply(
        np.zeros((1, 21), dtype), np.zeros((1, 3), dtype), W, panels, False, False,
        tiles.UNUSED_POOL,
    )  # fmt: skip
    np.testing.assert_array_equal(panels[0], W[:, :16])
    np.testing.assert_array_equal(panels[1, :, :5], W[:, 16:])
    np.testing.assert_array_equal(panels[1, :, 5:], 0)
    panelsT = np.full((1, 21, tiles.PANEL), np.nan, dtype)
    _pack_and_multiply(
        np.zeros((1, 3), dtype), np.zeros((1, 21), dtype), W, panelsT, False, True,
        tiles.UNUSED_POOL,
    )  # fmt: skip
    np.testing.assert_array_equal(panelsT[0, :, :3], W.T)
    np.testing.assert_array_equal(panelsT[0, :, 3:], 0)


def _unpacked(panels, columns):
    """The (depth, columns) matrix that ``panels`` hold."""
    depth = panels.shape[1]
    return panels.transpose(1, 0, 2).reshape(depth, -1)[:, :columns]


@pytest.mark.parametrize("H", [1, 9, 16, 23])
def test_gru_packs_its_two_weight_blocks_apart(H):
    """A GRU step makes one product with Wh[:, :2H], one with Wh[:, 2H:]: each block gets
    panels of its own (forward), and of its own depth (backward, Wh.T)."""
    W = np.random.default_rng(H).standard_normal((H, 3 * H))
    forward = np.full((tiles.panel_count(2 * H) + tiles.panel_count(H), H, tiles.PANEL), np.nan)
    kernels.repeat_pack(1, forward, W, False, True)
    zr, h = kernels._gru_forward_panels(forward, H)
    np.testing.assert_array_equal(_unpacked(zr, 2 * H), W[:, : 2 * H])
    np.testing.assert_array_equal(_unpacked(h, H), W[:, 2 * H :])
    backward = np.full((tiles.panel_count(H), 3 * H, tiles.PANEL), np.nan)
    kernels.repeat_pack(1, backward, W, True, True)
    zr, h = kernels._gru_backward_panels(backward, H)
    assert zr.shape[1:] == (2 * H, tiles.PANEL) and h.shape[1:] == (H, tiles.PANEL)
    np.testing.assert_array_equal(_unpacked(zr, H), W[:, : 2 * H].T)
    np.testing.assert_array_equal(_unpacked(h, H), W[:, 2 * H :].T)
    assert not np.isnan(backward).any()  # the two blocks fill the panels' memory exactly


@pytest.mark.parametrize("layer", ["TimeRNN", "TimeLSTM", "TimeGRU"])
def test_a_pinned_packed_route_packs(layer):
    """Pinned, ``packed`` runs packed in both directions for every cell (no fallback)."""
    gates = {"TimeRNN": 1, "TimeLSTM": 4, "TimeGRU": 3}[layer]
    N, T, D, H = 3, 4, 5, 20
    rng = np.random.default_rng(0)
    params = [
        rng.standard_normal(shape) for shape in [(D, gates * H), (H, gates * H), (gates * H,)]
    ]
    _planner.pin("forward=packed,backward=packed")
    try:
        fast = getattr(fastrnn, layer)(*params)
        fast.forward(rng.standard_normal((N, T, D)))
        fast.backward(rng.standard_normal((N, T, H)))
    finally:
        _planner.pin(os.environ.get(_planner.PLAN_VARIABLE, ""))
    engine = fast._engine
    Wh, gru = params[1], layer == "TimeGRU"
    # the kernels' panels hold Wh (Wh.T) as packed here
    forward_panels = engine._forward_views[1].panels
    expected = np.empty((kernels.forward_panel_count(gates, H), H, tiles.PANEL))
    kernels.repeat_pack(1, expected, Wh, False, gru)
    np.testing.assert_array_equal(forward_panels, expected)
    shape = (tiles.panel_count(H), gates * H, tiles.PANEL)
    expected = np.empty(shape)
    kernels.repeat_pack(1, expected, Wh, True, gru)
    np.testing.assert_array_equal(engine.ws.take("panelsT", shape, np.float64), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_blocks_of_larger_arrays(dtype):
    """``C`` and ``A`` may be column blocks (a gate block, a view of a wider buffer): only
    their rows need unit stride; the columns around them stay untouched."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((30, 50)).astype(dtype)
    A_wide = rng.standard_normal((7, 45)).astype(dtype)
    C_wide = rng.standard_normal((7, 80)).astype(dtype)
    before = C_wide.copy()
    A, C = A_wide[:, 5:35], C_wide[:, 13:63]
    for pool in _pools(dtype).values():
        C_wide[...] = before
        _product(C, A, W, True, False, pool)
        assert_close(C, before[:, 13:63] + A @ W)
        np.testing.assert_array_equal(C_wide[:, :13], before[:, :13])
        np.testing.assert_array_equal(C_wide[:, 63:], before[:, 63:])


@pytest.mark.parametrize("pool_kind", ["blas threads", "calling thread"])
def test_nan_and_inf_propagate(pool_kind):
    rng = np.random.default_rng(2)
    W = rng.standard_normal((20, 40)).astype(np.float32)
    A = rng.standard_normal((6, 20)).astype(np.float32)
    A[1, 3], A[4, 0] = np.nan, np.inf
    C = np.zeros((6, 40), np.float32)
    _product(C, A, W, False, False, _pools(np.float32)[pool_kind])
    with np.errstate(invalid="ignore"):
        expected = A @ W
    np.testing.assert_array_equal(np.isnan(C), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(C), np.isinf(expected))
    assert np.isnan(C[1]).all()


def test_threads_follow_the_blas_setting():
    pool = tiles.new_pool(np.float32)
    if not BINDING.thread_dispatch:
        assert tiles.use_threads(pool)[0, 2] == 1  # no dispatch: the calling thread
        return
    with threadpool_limits(1, user_api="blas"):
        assert tiles.use_threads(pool)[0, 2] == 1
    default = tiles.use_threads(pool)[0, 2]
    assert default == max(1, tiles.blas_threads())


def test_python_threads_at_once_give_serial_results():
    """Layers called from several Python threads share the BLAS library's workers: each
    call's jobs must stay its own."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((64, 200)).astype(np.float32)

    def job(seed):
        A = np.random.default_rng(seed).standard_normal((20, 64)).astype(np.float32)
        C = np.zeros((20, 200), np.float32)
        pool = tiles.use_threads(tiles.new_pool(np.float32))
        for _ in range(20):
            _product(C, A, W, True, False, pool)
        return [C]

    assert_threads_give_serial_results(job, range(8))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_one_core_still_finishes_and_is_right():
    """Two BLAS threads on one core (a container limited to one CPU): the dispatch must not
    wait forever for a worker that cannot run, and the numbers stay right."""
    script = textwrap.dedent(
        """
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import numpy as np
        from threadpoolctl import threadpool_limits
        from fastrnn import _tiles as tiles
        from fastrnn._jit import kernel

        @kernel
        def run(C, A, W, panels, pool):
            tiles.pack_panels(panels, W, False)
            for _ in range(50):
                tiles.packed_product(C, A, panels, False, pool)

        rng = np.random.default_rng(0)
        W = rng.standard_normal((100, 400)).astype(np.float32)
        A = rng.standard_normal((20, 100)).astype(np.float32)
        C = np.empty((20, 400), np.float32)
        with threadpool_limits(2, user_api="blas"):
            pool = tiles.use_threads(tiles.new_pool(np.float32))
            panels = np.empty((tiles.panel_count(400), 100, tiles.PANEL), np.float32)
            run(C, A, W, panels, pool)
        np.testing.assert_allclose(C, A @ W, rtol=1e-4, atol=1e-4)
        print("threads", pool[0, 2])

        # the softmax cross-entropy's jobs on the same pool of workers
        from fastrnn import reference, sequence_layers
        xs = rng.standard_normal((4, 8, 5000)).astype(np.float32)
        ts = rng.integers(0, 5000, size=(4, 8))
        fast, book = sequence_layers.TimeSoftmaxWithLoss(), reference.TimeSoftmaxWithLoss()
        with threadpool_limits(2, user_api="blas"):
            loss = fast.forward(xs, ts)
            dxs = fast.backward()
            used = fast._pool(np.dtype(np.float32), 4 * 8, 5000)[0, 2]
        np.testing.assert_allclose(loss, book.forward(xs, ts), rtol=1e-5)
        np.testing.assert_allclose(dxs, book.backward(), rtol=1e-4, atol=1e-9)
        print("softmax threads", used)

        # an LSTM's steps split by batch rows on the same workers
        import fastrnn
        from fastrnn import layers
        layers.CELL_VALUES_PER_THREAD = 1
        Wx, Wh = rng.standard_normal((2, 8, 32)).astype(np.float32) * 0.5
        b = rng.standard_normal(32).astype(np.float32)
        xs = rng.standard_normal((6, 5, 8)).astype(np.float32)
        dhs = rng.standard_normal((6, 5, 8)).astype(np.float32)
        fast, book = fastrnn.TimeLSTM(Wx, Wh, b), reference.TimeLSTM(Wx, Wh, b)
        with threadpool_limits(2, user_api="blas"):
            hs = fast.forward(xs)
            dxs = fast.backward(dhs)
            used = layers._cell_pool(np.empty((5, 6, 32), np.float32))[0, 2]
        np.testing.assert_allclose(hs, book.forward(xs), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dxs, book.backward(dhs), rtol=1e-4, atol=1e-6)
        print("lstm threads", used)

        # a GRU's steps likewise
        Wx, Wh = rng.standard_normal((2, 8, 24)).astype(np.float32) * 0.5
        b = rng.standard_normal(24).astype(np.float32)
        fast, book = fastrnn.TimeGRU(Wx, Wh, b), reference.TimeGRU(Wx, Wh, b)
        with threadpool_limits(2, user_api="blas"):
            hs = fast.forward(xs)
            dxs = fast.backward(dhs)
        np.testing.assert_allclose(hs, book.forward(xs), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dxs, book.backward(dhs), rtol=1e-4, atol=1e-6)
        print("gru done")

        # an affine forward's bias fill likewise
        sequence_layers.BIAS_VALUES_PER_THREAD = 1
        W = rng.standard_normal((8, 300)).astype(np.float32)
        b = rng.standard_normal(300).astype(np.float32)
        with threadpool_limits(2, user_api="blas"):
            out = sequence_layers.TimeAffine(W, b).forward(xs)
        np.testing.assert_allclose(out, reference.TimeAffine(W, b).forward(xs), rtol=1e-5)
        print("affine done")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "threads" in done.stdout
    assert "softmax threads" in done.stdout
    assert "lstm threads" in done.stdout
    assert "gru done" in done.stdout
    assert "affine done" in done.stdout
