"""fastrnn.sequence_layers against fastrnn.reference: embedding, affine, losses, dropout.

Each test runs a fast layer and a reference layer on the same inputs (the reference gets its
own copies of the parameters, so a fast layer that wrote into them would be caught) and
compares every output and gradient with the shared ``TOLERANCE`` table. Besides shapes,
dtypes and memory layouts, the tests pin down the book's API contract that trainers and
optimizers rely on: aliased params (weight tying and ``remove_duplicate`` included), grads
written in place with the parameters' layouts, fresh outputs, untouched inputs, the book's
random stream for dropout.

The second half is a misuse table in the style of ``test_misuse.py``: every wrong argument
raises a plain ``ValueError``/``TypeError`` naming it, before any kernel runs (a spy counts
the kernel calls), and the layer gives the reference's numbers afterwards.
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from _support import (
    DTYPES,
    TOLERANCE,
    KernelSpy,
    assert_close,
    assert_threads_give_serial_results,
    copy_arg,
    other_float,
    same_value,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba.core.dispatcher import Dispatcher
from threadpoolctl import threadpool_limits

import fastrnn._kernels_sequence as kernels_module
from fastrnn import reference as ref
from fastrnn import sequence_layers as seq
from fastrnn._blas import BINDING, blas_threads
from fastrnn._random import global_mt19937
from fastrnn._tiles import DISPATCH, THREADS

DTYPE_IDS = {np.float32: "f32", np.float64: "f64"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
KINDS = ("TimeEmbedding", "TimeAffine", "TimeSoftmaxWithLoss", "TimeSigmoidWithLoss", "TimeDropout")


@pytest.fixture
def global_seed():
    """Seed NumPy's global random state (TimeDropout draws from it, as the book does) and
    restore it afterwards, so that other tests do not see the seeded stream."""
    saved = np.random.get_state()
    yield np.random.seed
    np.random.set_state(saved)


def randn(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def assert_loss(actual, expected, dtype, what="loss"):
    """A Python float within the dtype's tolerance of the reference's (nan where it is)."""
    assert type(actual) is float, f"{what}: {type(actual).__name__}"
    tol = TOLERANCE[np.dtype(dtype)]
    assert actual == pytest.approx(expected, rel=tol["rtol"], abs=tol["atol"], nan_ok=True), what


def assert_fresh(out, *others):
    """``out`` shares no memory with any of ``others`` (inputs, params, earlier outputs)."""
    for i, other in enumerate(others):
        if isinstance(other, np.ndarray):
            assert not np.shares_memory(out, other), f"output aliases argument {i}"


def call_unmodified(method, *args):
    """Call ``method``; its array arguments must come back unchanged."""
    before = [a.copy() if isinstance(a, np.ndarray) else copy.deepcopy(a) for a in args]
    result = method(*args)
    for b, a in zip(before, args, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f"{method.__name__} modified its input")
    return result


def make_ids(rng, N, T, V):
    """Ids in ``[0, V)`` with repeats: position (0, 0) is repeated at the end."""
    ids = rng.integers(0, V, size=(N, T))
    if N * T >= 2:
        ids.flat[-1] = ids.flat[0]
    return ids


def make_layout(rng, layout, shape, dtype=np.float64):
    """An array of ``shape`` (any rank >= 2) in the memory layout named ``layout``."""
    big = tuple(2 * s + 1 for s in shape)
    if layout == "contiguous":
        return randn(rng, shape, dtype)
    if layout == "reversed-T":
        return randn(rng, shape, dtype)[:, ::-1]
    if layout == "fortran":
        return np.asfortranarray(randn(rng, shape, dtype))
    if layout == "stepped-slice":
        return randn(rng, big, dtype)[tuple(slice(1, None, 2) for _ in shape)]
    if layout == "time-major":
        return randn(rng, (shape[1], shape[0], *shape[2:]), dtype).swapaxes(0, 1)
    if layout == "read-only":
        array = randn(rng, shape, dtype)
        array.flags.writeable = False
        return array
    raise ValueError(layout)


LAYOUTS = ["reversed-T", "fortran", "stepped-slice", "time-major", "read-only"]


def book_remove_duplicate(params, grads):
    """The book's ``common/trainer.py`` ``remove_duplicate``: shared weights once, their
    gradients added (transposed for a weight tied by transposition)."""
    params, grads = params[:], grads[:]
    while True:
        found = False
        for i in range(len(params) - 1):
            for j in range(i + 1, len(params)):
                if params[i] is params[j]:
                    grads[i] += grads[j]
                    found = True
                elif (
                    params[i].ndim == 2
                    and params[j].ndim == 2
                    and params[i].T.shape == params[j].shape
                    and np.all(params[i].T == params[j])
                ):
                    grads[i] += grads[j].T
                    found = True
                if found:
                    params.pop(j)
                    grads.pop(j)
                    break
            if found:
                break
        if not found:
            return params, grads


# --------------------------------------------------------------------------------------
# TimeEmbedding
# --------------------------------------------------------------------------------------

#: (N, T, V, D)
EMBEDDING_SHAPES = {
    "N1": (1, 4, 7, 3),
    "T1": (3, 1, 7, 3),
    "V1": (3, 4, 1, 3),
    "D1": (3, 4, 7, 1),
    "all1": (1, 1, 1, 1),
    "N0": (0, 4, 7, 3),
    "T0": (3, 0, 7, 3),
    "N20-T35-V300-D16": (20, 35, 300, 16),
}


def run_embedding(fast, reference, xs, dout, dtype):
    """Forward and backward of both layers, everything compared; returns the fast out."""
    out = call_unmodified(fast.forward, xs)
    expected = reference.forward(xs)
    assert out.dtype == dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)  # a gather is exact
    assert call_unmodified(fast.backward, dout) is None
    reference.backward(dout)
    assert fast.grads[0].dtype == dtype
    assert_close(fast.grads[0], reference.grads[0], dtype, err_msg="dW")
    return out


@pytest.mark.parametrize("shape", EMBEDDING_SHAPES.values(), ids=EMBEDDING_SHAPES.keys())
@dtypes
def test_embedding_matches_reference(rng, dtype, shape):
    """out = W[xs] exactly; dW adds up repeated ids; W is not written."""
    N, T, V, D = shape
    W = randn(rng, (V, D), dtype)
    fast, reference = seq.TimeEmbedding(W), ref.TimeEmbedding(W.copy())
    xs = make_ids(rng, N, T, V)
    out = run_embedding(fast, reference, xs, randn(rng, (N, T, D), dtype), dtype)
    assert_fresh(out, W, xs)
    np.testing.assert_array_equal(W, reference.W)
    assert fast.params[0] is W and fast.W is W


@pytest.mark.parametrize(
    "id_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32, np.uint64]
)
def test_embedding_any_integer_id_dtype(rng, id_dtype):
    V, D = 100, 5
    W = randn(rng, (V, D), np.float32)
    fast, reference = seq.TimeEmbedding(W), ref.TimeEmbedding(W.copy())
    xs = make_ids(rng, 4, 6, V).astype(id_dtype)
    run_embedding(fast, reference, xs, randn(rng, (4, 6, D), np.float32), np.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
def test_embedding_strided_ids_and_gradients(rng, dtype, layout):
    """ids and dout given as non-contiguous (or read-only) views; dout in the other float
    dtype too."""
    N, T, V, D = 3, 5, 9, 4
    W = randn(rng, (V, D), dtype)
    fast, reference = seq.TimeEmbedding(W), ref.TimeEmbedding(W.copy())
    xs = (make_layout(rng, layout, (N, T)) * 100).astype(np.int64) % V
    if layout == "read-only":
        xs.flags.writeable = False
    dout = make_layout(rng, layout, (N, T, D), other_float(dtype))
    run_embedding(fast, reference, xs, dout, dtype)


@dtypes
def test_embedding_repeated_ids_add_up(rng, dtype):
    """Every position looking up one id: its gradient row is the sum of all of dout."""
    V, D = 4, 3
    W = randn(rng, (V, D), dtype)
    layer = seq.TimeEmbedding(W)
    xs = np.full((5, 6), 2)
    layer.forward(xs)
    dout = randn(rng, (5, 6, D), dtype)
    layer.backward(dout)
    expected = np.zeros((V, D), dtype)
    expected[2] = dout.sum(axis=(0, 1))
    assert_close(layer.grads[0], expected, dtype)


@dtypes
def test_embedding_api_contract(rng, dtype):
    """grads[0] keeps its identity, backward overwrites (no accumulation) and can be
    repeated; in-place updates of W are seen; outputs are fresh each call."""
    N, T, V, D = 3, 4, 8, 5
    W = randn(rng, (V, D), dtype)
    fast, reference = seq.TimeEmbedding(W), ref.TimeEmbedding(W)  # shared: both see updates
    grad = fast.grads[0]
    xs, dout = make_ids(rng, N, T, V), randn(rng, (N, T, D), dtype)
    first = run_embedding(fast, reference, xs, dout, dtype)
    fast.backward(dout)  # twice: the same gradient, not twice it
    assert_close(fast.grads[0], reference.grads[0], dtype)
    assert fast.grads[0] is grad
    W -= 0.1 * fast.grads[0]  # the book's SGD, in place
    kept = first.copy()
    second = run_embedding(fast, reference, xs, randn(rng, (N, T, D), dtype), dtype)
    np.testing.assert_array_equal(first, kept)  # the earlier output was not reused
    assert_fresh(second, first, W)
    assert not np.array_equal(first, second)


def test_embedding_weight_attribute_is_params_0(rng):
    W, V = randn(rng, (5, 2)), randn(rng, (5, 2))
    layer = seq.TimeEmbedding(W)
    assert layer.W is W
    layer.W = V
    assert layer.params[0] is V
    np.testing.assert_array_equal(layer.forward(np.array([[4]])), V[[[4]]])


@pytest.mark.parametrize("weight_layout", ["fortran", "read-only"])
@dtypes
def test_embedding_weight_in_other_layouts(rng, dtype, weight_layout):
    """A Fortran-ordered or read-only W: grads[0] as np.zeros_like(W), as the reference."""
    N, T, V, D = 3, 4, 6, 5
    W = make_layout(rng, weight_layout, (V, D), dtype)
    fast, reference = seq.TimeEmbedding(W), ref.TimeEmbedding(W)
    assert fast.grads[0].flags.f_contiguous == reference.grads[0].flags.f_contiguous
    run_embedding(fast, reference, make_ids(rng, N, T, V), randn(rng, (N, T, D), dtype), dtype)


# --------------------------------------------------------------------------------------
# TimeAffine
# --------------------------------------------------------------------------------------

#: (N, T, D, M)
AFFINE_SHAPES = {
    "N1": (1, 4, 3, 5),
    "T1": (3, 1, 3, 5),
    "D1": (3, 4, 1, 5),
    "M1": (3, 4, 3, 1),
    "all1": (1, 1, 1, 1),
    "D0": (2, 3, 0, 4),
    "M0": (2, 3, 4, 0),
    "N7-T9-D65-M131": (7, 9, 65, 131),
    "N128-T10-D512-M59": (128, 10, 512, 59),
}


def make_affine(rng, D, M, dtype, tied):
    """``(W, b)``; with ``tied`` W is ``E.T``, a Fortran-ordered view of an (M, D) ``E``."""
    E = randn(rng, (M, D), dtype) / math.sqrt(max(D, 1))
    return (E.T if tied else np.ascontiguousarray(E.T)), randn(rng, (M,), dtype)


def run_affine(fast, reference, x, dout, dtype):
    """Forward and backward of both layers, everything compared; returns (out, dx)."""
    out = call_unmodified(fast.forward, x)
    expected = reference.forward(x)
    assert out.dtype == dtype and out.shape == expected.shape
    assert_close(out, expected, dtype, err_msg="out")
    dx = call_unmodified(fast.backward, dout)
    dx_ref = reference.backward(dout)
    assert dx.dtype == dtype and dx.shape == dx_ref.shape
    assert_close(dx, dx_ref, dtype, err_msg="dx")
    for i, (g, g_ref) in enumerate(zip(fast.grads, reference.grads, strict=True)):
        assert g.dtype == dtype and g.shape == g_ref.shape
        assert_close(g, g_ref, dtype, err_msg=f"grads[{i}]")
    return out, dx


@pytest.fixture(params=["calling-thread", "blas-threads"])
def bias_threads(request, monkeypatch):
    """Where the affine forward fills its output with the bias: on the calling thread, or
    (``blas-threads``) split between the BLAS library's threads however few its rows
    (the calling thread too where the BLAS has one thread or no thread dispatch)."""
    if request.param == "blas-threads":
        monkeypatch.setattr(seq, "BIAS_VALUES_PER_THREAD", 1)
    else:
        monkeypatch.setattr(seq, "BIAS_VALUES_PER_THREAD", 2**62)
    return request.param


@pytest.mark.parametrize("tied", [False, True], ids=["W", "E.T"])
@pytest.mark.parametrize("shape", AFFINE_SHAPES.values(), ids=AFFINE_SHAPES.keys())
@dtypes
def test_affine_matches_reference(rng, dtype, shape, tied, bias_threads):
    """out, dx, dW, db match; W as given or as a transposed view; params not written."""
    N, T, D, M = shape
    W, b = make_affine(rng, D, M, dtype, tied)
    fast = seq.TimeAffine(W, b)
    reference = ref.TimeAffine(W.copy(order="K"), b.copy())
    # dout of a mean loss's scale, so that dW and db (sums over N * T rows) stay of order
    # one and float32 rounding of other summation orders stays within the tolerance.
    x = randn(rng, (N, T, D), dtype)
    dout = randn(rng, (N, T, M), dtype) / math.sqrt(max(N * T, 1))
    out, dx = run_affine(fast, reference, x, dout, dtype)
    assert_fresh(out, x, W, b)
    assert_fresh(dx, x, dout, W, b)
    assert fast.params[0] is W and fast.params[1] is b
    np.testing.assert_array_equal(W, reference.params[0])
    np.testing.assert_array_equal(b, reference.params[1])


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
def test_affine_strided_inputs(rng, dtype, layout):
    """x and dout as non-contiguous or read-only views, and in the other float dtype."""
    N, T, D, M = 3, 4, 5, 6
    W, b = make_affine(rng, D, M, dtype, tied=False)
    fast, reference = seq.TimeAffine(W, b), ref.TimeAffine(W.copy(), b.copy())
    x = make_layout(rng, layout, (N, T, D), dtype)
    dout = make_layout(rng, layout, (N, T, M), other_float(dtype))
    run_affine(fast, reference, x, dout, dtype)
    x16 = randn(rng, (N, T, D), np.float16)
    run_affine(fast, reference, x16, randn(rng, (N, T, M), np.float16), dtype)


@dtypes
def test_affine_keeps_x_as_the_book_does(rng, dtype):
    """self.x is the forward's x itself when the kernels can read it as it is, and a
    converted copy (equal values) otherwise."""
    W, b = make_affine(rng, 3, 4, dtype, tied=False)
    layer = seq.TimeAffine(W, b)
    x = randn(rng, (2, 5, 3), dtype)
    layer.forward(x)
    assert layer.x is x
    strided = randn(rng, (2, 5, 6), dtype)[:, :, ::2]
    layer.forward(strided)
    assert layer.x is not strided and layer.x.dtype == dtype
    np.testing.assert_array_equal(layer.x, strided)


@pytest.mark.parametrize("layout", ["W-strided", "W-read-only", "b-strided"])
@dtypes
def test_affine_parameters_in_other_layouts(rng, dtype, layout):
    """Parameters the kernels cannot read as they are still give the reference's numbers."""
    N, T, D, M = 3, 4, 5, 6
    W = randn(rng, (D, 2 * M), dtype)[:, ::2] if layout == "W-strided" else randn(rng, (D, M))
    W = W.astype(dtype, copy=False)
    b = randn(rng, (2 * M,), dtype)[::2] if layout == "b-strided" else randn(rng, (M,), dtype)
    if layout == "W-read-only":
        W.flags.writeable = False
    fast, reference = seq.TimeAffine(W, b), ref.TimeAffine(W, b)
    x, dout = randn(rng, (N, T, D), dtype), randn(rng, (N, T, M), dtype)
    run_affine(fast, reference, x, dout, dtype)


@dtypes
def test_affine_api_contract(rng, dtype):
    """grads keep their identity and are overwritten; backward repeats; in-place updates
    of W and b are seen; a parameter replaced in the list is used."""
    N, T, D, M = 3, 4, 5, 6
    W, b = make_affine(rng, D, M, dtype, tied=True)
    fast, reference = seq.TimeAffine(W, b), ref.TimeAffine(W, b)  # shared arrays
    grads = list(fast.grads)
    x, dout = randn(rng, (N, T, D), dtype), randn(rng, (N, T, M), dtype)
    run_affine(fast, reference, x, dout, dtype)
    dx = fast.backward(dout)  # repeated: the same, not accumulated
    assert_close(dx, reference.backward(dout), dtype)
    assert all(g is h for g, h in zip(fast.grads, grads, strict=True))
    for param, grad in zip(fast.params, fast.grads, strict=True):
        param -= 0.1 * grad  # SGD, in place; W is a view, so this updates E
    out, _ = run_affine(fast, reference, x, dout, dtype)
    new_b = b + 1
    fast.params[1] = reference.params[1] = new_b
    out2, _ = run_affine(fast, reference, x, dout, dtype)
    assert_close(out2, out + 1, dtype)
    assert all(g is h for g, h in zip(fast.grads, grads, strict=True))


@pytest.mark.parametrize("replacement", ["fortran-other-dtype", "strided", "c-for-tied"])
@dtypes
def test_affine_writes_into_replaced_grads(rng, dtype, replacement):
    """grads replaced by arrays of another layout or dtype are written in place."""
    N, T, D, M = 2, 3, 4, 5
    W, b = make_affine(rng, D, M, dtype, tied=replacement == "c-for-tied")
    fast, reference = seq.TimeAffine(W, b), ref.TimeAffine(W.copy(order="K"), b.copy())
    if replacement == "fortran-other-dtype":
        fast.grads[0] = np.asfortranarray(np.zeros((D, M), other_float(dtype)))
        fast.grads[1] = np.zeros(M, other_float(dtype))
    elif replacement == "strided":
        fast.grads[0] = np.zeros((D, 2 * M), dtype)[:, ::2]
        fast.grads[1] = np.zeros(2 * M, dtype)[::2]
    else:
        fast.grads[0] = np.zeros((D, M), dtype)
    grads = list(fast.grads)
    x, dout = randn(rng, (N, T, D), dtype), randn(rng, (N, T, M), dtype)
    fast.forward(x)
    reference.forward(x)
    fast.backward(dout)
    reference.backward(dout)
    for g, g_ref, kept in zip(fast.grads, reference.grads, grads, strict=True):
        assert g is kept
        single = np.float32 in (dtype, g.dtype)
        assert_close(g, g_ref.astype(g.dtype), np.float32 if single else np.float64)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0)], ids=["N0", "T0"])
@dtypes
def test_affine_empty_batch_or_sequence(rng, dtype, shape):
    """No rows: empty outputs, zero gradients (the reference cannot reshape an empty
    result to (N, T, -1), so this is checked on its own)."""
    D, M = 3, 5
    W, b = make_affine(rng, D, M, dtype, tied=True)
    layer = seq.TimeAffine(W, b)
    for g in layer.grads:
        g[...] = 1  # stale values must be overwritten
    out = layer.forward(randn(rng, (*shape, D), dtype))
    assert out.shape == (*shape, M) and out.dtype == dtype
    dx = layer.backward(randn(rng, (*shape, M), dtype))
    assert dx.shape == (*shape, D) and dx.dtype == dtype
    assert not layer.grads[0].any() and not layer.grads[1].any()


@dtypes
def test_affine_splits_large_bias_fills_between_blas_threads(rng, dtype, monkeypatch):
    """Above :data:`BIAS_VALUES_PER_THREAD` output values per thread the bias fill is
    split between the BLAS library's threads: the output bit for bit as with the fill on
    the calling thread (the same product after it)."""
    N, T, D = 3, 5, 4
    M = 2 * seq.BIAS_VALUES_PER_THREAD // (N * T) + 1
    W, b = make_affine(rng, D, M, dtype, tied=True)
    x = randn(rng, (N, T, D), dtype)
    threads_used = []

    def spy(*args, kernel=kernels_module.affine_forward):
        pool = args[-1]
        threads_used.append(int(pool[0, THREADS]) if pool[0, DISPATCH] else 1)
        return kernel(*args)

    monkeypatch.setattr(kernels_module, "affine_forward", spy)
    out = seq.TimeAffine(W, b).forward(x)
    monkeypatch.setattr(seq, "BIAS_VALUES_PER_THREAD", 2**62)
    out_alone = seq.TimeAffine(W, b).forward(x)
    split_threads = min(blas_threads(), 2) if BINDING.thread_dispatch else 1
    assert threads_used == [split_threads, 1]
    np.testing.assert_array_equal(out, out_alone)
    assert_close(out, ref.TimeAffine(W, b).forward(x), dtype)


@dtypes
def test_affine_tied_weights_are_used_without_copies(rng, dtype):
    """With W = E.T the kernels read E and write dW.T straight into grads[0] (Fortran, like
    np.zeros_like(W)): no scratch copy of W or of dW is made."""
    N, T, D, M = 3, 4, 5, 7
    W, b = make_affine(rng, D, M, dtype, tied=True)
    layer = seq.TimeAffine(W, b)
    assert layer.grads[0].flags.f_contiguous and not layer.grads[0].flags.c_contiguous
    layer.forward(randn(rng, (N, T, D), dtype))
    layer.backward(randn(rng, (N, T, M), dtype))
    assert not {"W", "dW", "db", "x", "dout"} & set(layer._ws._buffers)


# --------------------------------------------------------------------------------------
# Weight tying: TimeEmbedding(E) and TimeAffine(E.T, b), as in BetterRnnlm
# --------------------------------------------------------------------------------------


class TiedModel:
    """Embedding -> affine with the affine weight tied to ``E.T``, plus the book's loss."""

    def __init__(self, module, E, b):
        self.embed = module.TimeEmbedding(E)
        self.affine = module.TimeAffine(E.T, b)
        self.loss_layer = module.TimeSoftmaxWithLoss()
        self.params = self.embed.params + self.affine.params
        self.grads = self.embed.grads + self.affine.grads

    def step(self, xs, ts):
        loss = self.loss_layer.forward(self.affine.forward(self.embed.forward(xs)), ts)
        self.embed.backward(self.affine.backward(self.loss_layer.backward()))
        return loss


@dtypes
def test_weight_tying_with_the_books_remove_duplicate(rng, dtype):
    """BetterRnnlm's tying: grads keep the layouts the book's remove_duplicate expects,
    the merged gradient is the reference's, and SGD on the merged list trains both layers
    identically over several steps."""
    N, T, V, D = 3, 5, 11, 4
    E, b = randn(rng, (V, D), dtype) / 2, randn(rng, (V,), dtype)
    fast, reference = TiedModel(seq, E, b), TiedModel(ref, E.copy(), b.copy())
    assert fast.affine.params[0].base is E  # the view itself, not a copy
    for step in range(3):
        xs, ts = make_ids(rng, N, T, V), make_ids(rng, N, T, V)
        assert_loss(fast.step(xs, ts), reference.step(xs, ts), dtype, f"loss {step}")
        assert fast.grads[0].flags.c_contiguous and fast.grads[2].flags.f_contiguous
        params, grads = book_remove_duplicate(fast.params, fast.grads)
        ref_params, ref_grads = book_remove_duplicate(reference.params, reference.grads)
        assert len(params) == 2 and params[0] is E and params[1] is b
        for g, g_ref in zip(grads, ref_grads, strict=True):
            assert_close(g, g_ref, dtype, err_msg=f"merged grad, step {step}")
        for lists in ((params, grads), (ref_params, ref_grads)):
            for param, grad in zip(*lists, strict=True):
                param -= 0.5 * grad
        assert_close(E, reference.embed.W, dtype, err_msg=f"E after step {step}")


# --------------------------------------------------------------------------------------
# TimeSoftmaxWithLoss
# --------------------------------------------------------------------------------------

#: (N, T, V)
SOFTMAX_SHAPES = {
    "N1": (1, 4, 7),
    "T1": (3, 1, 7),
    "V1": (3, 4, 1),
    "all1": (1, 1, 1),
    "N0": (0, 4, 7),
    "T0": (3, 0, 7),
    "N6-T35-V997": (6, 35, 997),
    "N128-T10-V59": (128, 10, 59),
}


@pytest.fixture(params=["calling-thread", "blas-threads"])
def softmax_threads(request, monkeypatch):
    """Where the softmax cross-entropy runs: on the calling thread, or (``blas-threads``)
    split between the BLAS library's threads however few its scores, which on a machine
    with one BLAS thread, or a BLAS without a thread dispatch, is the calling thread too."""
    if request.param == "blas-threads":
        monkeypatch.setattr(seq, "SOFTMAX_SCORES_PER_THREAD", 1)
    else:
        monkeypatch.setattr(seq, "SOFTMAX_SCORES_PER_THREAD", 2**62)
    return request.param


def run_softmax(fast, reference, xs, ts, dtype, douts=(1,)):
    """Forward, then a backward per ``dout``, on both layers; returns the loss and the
    last dxs."""
    loss = call_unmodified(fast.forward, xs, ts)
    assert_loss(loss, reference.forward(xs, ts), dtype)
    dxs = None
    for dout in douts:
        dxs = fast.backward(dout)
        expected = reference.backward(dout)
        assert dxs.dtype == dtype and dxs.shape == expected.shape
        assert_close(dxs, expected, dtype, err_msg=f"dxs for dout={dout!r}")
    return loss, dxs


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES.values(), ids=SOFTMAX_SHAPES.keys())
@dtypes
def test_softmax_with_loss_matches_reference(softmax_threads, rng, dtype, shape):
    """Loss and gradient, with a few positions ignored; backward repeated with other douts."""
    N, T, V = shape
    xs = 3 * randn(rng, (N, T, V), dtype)
    ts = make_ids(rng, N, T, V)
    if N * T > 2:
        ts.flat[1] = -1
    douts = (1, 0.5, np.float32(2.0), np.array(3.0), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # N or T = 0: nan, silently, as the reference
        _, dxs = run_softmax(
            seq.TimeSoftmaxWithLoss(), ref.TimeSoftmaxWithLoss(), xs, ts, dtype, douts
        )
    assert_fresh(dxs, xs, ts)


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
def test_softmax_with_loss_strided_inputs(softmax_threads, rng, dtype, layout):
    N, T, V = 3, 4, 6
    xs = make_layout(rng, layout, (N, T, V), dtype)
    ts = (make_layout(rng, layout, (N, T)) * 100).astype(np.int64) % V
    if layout == "read-only":
        ts.flags.writeable = False
    run_softmax(seq.TimeSoftmaxWithLoss(), ref.TimeSoftmaxWithLoss(), xs, ts, dtype)


def test_softmax_with_loss_other_float_inputs_compute_in_float32(rng):
    """float16 scores are computed in float32, as the reference does."""
    xs, ts = randn(rng, (2, 3, 5), np.float16), make_ids(rng, 2, 3, 5)
    run_softmax(seq.TimeSoftmaxWithLoss(), ref.TimeSoftmaxWithLoss(), xs, ts, np.float32)


@pytest.mark.parametrize("onehot_dtype", [np.int64, np.float32, np.bool_, np.uint8])
@dtypes
def test_softmax_with_loss_one_hot_targets(rng, dtype, onehot_dtype):
    N, T, V = 3, 4, 6
    xs, ids = randn(rng, (N, T, V), dtype), make_ids(rng, N, T, V)
    one_hot = np.eye(V, dtype=onehot_dtype)[ids]
    fast = seq.TimeSoftmaxWithLoss()
    run_softmax(fast, ref.TimeSoftmaxWithLoss(), xs, one_hot, dtype)
    by_ids = seq.TimeSoftmaxWithLoss()
    assert by_ids.forward(xs, ids) == fast.forward(xs, one_hot)
    np.testing.assert_array_equal(by_ids.backward(), fast.backward())


@pytest.mark.parametrize("ignore_label", [-1, 0, 5, -100])
@dtypes
def test_softmax_with_loss_honours_ignore_label(softmax_threads, rng, dtype, ignore_label):
    """The attribute's value at forward time decides which positions count; ids equal to
    it may lie inside [0, V)."""
    N, T, V = 4, 5, 6
    xs = randn(rng, (N, T, V), dtype)
    ts = make_ids(rng, N, T, V)
    ts[0, :3] = ignore_label
    fast, reference = seq.TimeSoftmaxWithLoss(), ref.TimeSoftmaxWithLoss()
    fast.ignore_label = reference.ignore_label = ignore_label
    _, dxs = run_softmax(fast, reference, xs, ts, dtype)
    assert not dxs[0, :3].any()
    assert not dxs[ts == ignore_label].any()


@dtypes
def test_softmax_with_loss_all_ignored_is_nan_without_warning(rng, dtype):
    xs = randn(rng, (2, 3, 4), dtype)
    layer = seq.TimeSoftmaxWithLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = layer.forward(xs, np.full((2, 3), -1))
        dxs = layer.backward()
    assert type(loss) is float and math.isnan(loss)
    assert dxs.shape == (2, 3, 4) and dxs.dtype == dtype and not dxs.any()


@dtypes
def test_softmax_with_loss_large_and_special_scores(softmax_threads, rng, dtype):
    """Scores far from zero, -inf (a zero probability, at and away from the target), NaN
    and +inf at counted positions: the reference's numbers and special values."""
    N, T, V = 4, 3, 5
    xs = randn(rng, (N, T, V), dtype)
    ts = make_ids(rng, N, T, V)
    ts[3] = [1, 2, 3]
    xs[0, 0] *= 80  # large differences between scores (exp underflows for some)
    xs[0, 1] += 500  # a large common offset
    xs[1, 0, (ts[1, 0] + 1) % V] = -np.inf  # a zero probability away from the target
    fast, reference = seq.TimeSoftmaxWithLoss(), ref.TimeSoftmaxWithLoss()
    run_softmax(fast, reference, xs, ts, dtype)
    for position, value in [((2, 1, ts[2, 1]), -np.inf), ((3, 0, 0), np.nan), ((3, 2, 4), np.inf)]:
        special = xs.copy()
        special[position] = value
        with np.errstate(all="ignore"):  # the reference's NumPy warns about inf - inf
            run_softmax(fast, reference, special, ts, dtype)


@dtypes
def test_softmax_with_loss_special_scores_at_ignored_positions_do_not_count(
    softmax_threads, rng, dtype
):
    """NaN or inf at an ignored position changes nothing: loss and gradient are those
    without it, and its gradient is 0. (The reference multiplies its NaN softmax there by
    the 0 of the mask and keeps the NaN; ignored positions are 0 here by definition.)"""
    N, T, V = 2, 3, 4
    xs = randn(rng, (N, T, V), dtype)
    ts = make_ids(rng, N, T, V)
    ts[1, 1] = -1
    layer = seq.TimeSoftmaxWithLoss()
    loss, dxs = layer.forward(xs, ts), layer.backward()
    for value in (np.nan, np.inf, -np.inf):
        special = xs.copy()
        special[1, 1] = value
        assert layer.forward(special, ts) == loss
        np.testing.assert_array_equal(layer.backward(), dxs)


@dtypes
def test_softmax_with_loss_splits_large_batches_between_blas_threads(rng, dtype, monkeypatch):
    """Above :data:`SOFTMAX_SCORES_PER_THREAD` scores per thread the rows are split between
    the BLAS library's threads: ``lse`` and the gradient bit for bit as on one thread, the
    loss up to the order in which the threads' sums are added."""
    N, T = 4, 5
    V = 2 * seq.SOFTMAX_SCORES_PER_THREAD // (N * T) + 1
    xs, ts = 3 * randn(rng, (N, T, V), dtype), make_ids(rng, N, T, V)
    ts[1, 2] = -1
    threads_used = []
    for name in ("softmax_cross_entropy_forward", "softmax_cross_entropy_backward"):
        kernel = getattr(kernels_module, name)

        def spy(*args, kernel=kernel):
            pool = args[-1]
            threads_used.append(int(pool[0, THREADS]) if pool[0, DISPATCH] else 1)
            return kernel(*args)

        monkeypatch.setattr(kernels_module, name, spy)
    split, alone = seq.TimeSoftmaxWithLoss(), seq.TimeSoftmaxWithLoss()
    loss = split.forward(xs, ts)
    dxs = split.backward(0.5)
    with threadpool_limits(1, user_api="blas"):
        loss_alone = alone.forward(xs, ts)
        dxs_alone = alone.backward(0.5)
    split_threads = min(blas_threads(), 2) if BINDING.thread_dispatch else 1
    assert threads_used == [split_threads] * 2 + [1, 1]
    counted = ts.reshape(-1) != -1  # lse is only written for these rows
    np.testing.assert_array_equal(split._saved[1][counted], alone._saved[1][counted])
    np.testing.assert_array_equal(dxs, dxs_alone)
    assert loss == pytest.approx(loss_alone, rel=1e-12)


def test_softmax_with_loss_keeps_only_one_value_per_row(rng):
    """What forward leaves for backward: the log-sum-exp of each row (N*T values), never
    an (N*T, V) softmax."""
    N, T, V = 3, 4, 50
    layer = seq.TimeSoftmaxWithLoss()
    layer.forward(randn(rng, (N, T, V), np.float32), make_ids(rng, N, T, V))
    assert layer._ws.nbytes <= N * T * (4 + 8)  # lse (float32) and the ids (int64)


# --------------------------------------------------------------------------------------
# TimeSigmoidWithLoss
# --------------------------------------------------------------------------------------

#: (N, T)
SIGMOID_SHAPES = {"N1": (1, 4), "T1": (3, 1), "all1": (1, 1), "N20-T35": (20, 35)}


def run_sigmoid(fast, reference, xs, ts, dtype, ts_ref=None, douts=(1,)):
    loss = call_unmodified(fast.forward, xs, ts)
    with np.errstate(over="ignore"):
        assert_loss(loss, reference.forward(xs, ts if ts_ref is None else ts_ref), dtype)
    for dout in douts:
        dxs = fast.backward(dout)
        expected = reference.backward(dout)
        assert dxs.dtype == dtype and dxs.shape == expected.shape
        assert_close(dxs, expected, dtype, err_msg=f"dxs for dout={dout!r}")
    return loss


@pytest.mark.parametrize("shape", SIGMOID_SHAPES.values(), ids=SIGMOID_SHAPES.keys())
@dtypes
def test_sigmoid_with_loss_matches_reference(rng, dtype, shape):
    N, T = shape
    xs, ts = 2 * randn(rng, (N, T), dtype), rng.integers(0, 2, size=(N, T))
    fast = seq.TimeSigmoidWithLoss()
    run_sigmoid(fast, ref.TimeSigmoidWithLoss(), xs, ts, dtype, douts=(1, 0.25, np.float64(3)))


@pytest.mark.parametrize("label_dtype", [np.bool_, np.uint8, np.int32, np.float32, np.float64])
@dtypes
def test_sigmoid_with_loss_label_dtypes(rng, dtype, label_dtype):
    """Labels as bool, integers or floats holding 0/1 (the reference takes integers)."""
    N, T = 3, 4
    xs, ts = randn(rng, (N, T), dtype), rng.integers(0, 2, size=(N, T))
    fast, reference = seq.TimeSigmoidWithLoss(), ref.TimeSigmoidWithLoss()
    run_sigmoid(fast, reference, xs, ts.astype(label_dtype), dtype, ts_ref=ts)


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
def test_sigmoid_with_loss_strided_inputs(rng, dtype, layout):
    xs = make_layout(rng, layout, (4, 5), dtype)
    ts = (make_layout(rng, layout, (4, 5)) > 0).astype(np.int64)
    fast, reference = seq.TimeSigmoidWithLoss(), ref.TimeSigmoidWithLoss()
    run_sigmoid(fast, reference, xs, ts, dtype)


@dtypes
def test_sigmoid_with_loss_extreme_and_special_scores(rng, dtype):
    """Scores where the book's 1e-7 guard decides the loss (a confident wrong label), ±inf
    and NaN: the reference's numbers."""
    xs = np.array([[30.0, -30.0, 20.0, -20.0, 0.0], [np.inf, -np.inf, np.inf, -np.inf, 1.0]])
    ts = np.array([[0, 1, 1, 0, 1], [1, 0, 0, 1, 0]])
    fast, reference = seq.TimeSigmoidWithLoss(), ref.TimeSigmoidWithLoss()
    run_sigmoid(fast, reference, xs.astype(dtype), ts, dtype)
    xs[1, 4] = np.nan
    loss = run_sigmoid(fast, reference, xs.astype(dtype), ts, dtype)
    assert math.isnan(loss)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0)], ids=["N0", "T0"])
def test_sigmoid_with_loss_empty_is_nan(shape):
    """Nothing to average over: nan (the book divides by zero) and an empty gradient."""
    layer = seq.TimeSigmoidWithLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = layer.forward(np.zeros(shape, np.float32), np.zeros(shape, np.int64))
        dxs = layer.backward()
    assert type(loss) is float and math.isnan(loss)
    assert dxs.shape == shape and dxs.dtype == np.float32


def test_sigmoid_with_loss_backward_is_fresh_and_repeatable(rng):
    xs, ts = randn(rng, (3, 4), np.float32), rng.integers(0, 2, size=(3, 4))
    layer = seq.TimeSigmoidWithLoss()
    layer.forward(xs, ts)
    first = layer.backward()
    kept = first.copy()
    second = layer.backward()
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(first, second)
    assert_fresh(second, first, xs)


# --------------------------------------------------------------------------------------
# TimeDropout
# --------------------------------------------------------------------------------------

DROPOUT_SHAPES = {
    "N2-T3-D4": (2, 3, 4),
    "all1": (1, 1, 1),
    "N0": (0, 3, 4),
    "N20-T35-D65": (20, 35, 65),
    "rank2": (5, 7),
    "rank4": (2, 3, 4, 5),
    "rank1": (7,),
}


@pytest.fixture(params=["state", "rand"])
def dropout_draws(request, monkeypatch):
    """Both ways TimeDropout draws: in the kernel from the global MT19937's state, and
    through ``np.random.rand`` (what it does under another global bit generator)."""
    if request.param == "rand":
        monkeypatch.setattr(seq, "global_mt19937", lambda: None)
    return request.param


def run_dropout(fast, reference, xs, dout, seed, global_seed):
    """Forward both layers from the same seed: the book's mask and output bit for bit, and
    the global random state left at the same place; then backward."""
    global_seed(seed)
    out = call_unmodified(fast.forward, xs)
    state = np.random.get_state()
    global_seed(seed)
    with np.errstate(invalid="ignore"):  # NumPy warns about inf * 0 (a NaN, as in fastrnn)
        expected = reference.forward(xs)
    for mine, theirs in zip(state, np.random.get_state(), strict=True):
        np.testing.assert_array_equal(mine, theirs, err_msg="the random state moved differently")
    assert out.dtype == expected.dtype and fast.mask.dtype == reference.mask.dtype
    np.testing.assert_array_equal(fast.mask, reference.mask)
    np.testing.assert_array_equal(out, expected)
    dx = call_unmodified(fast.backward, dout)
    with np.errstate(invalid="ignore"):
        dx_ref = reference.backward(dout)
    assert dx.dtype == dx_ref.dtype
    np.testing.assert_array_equal(dx, dx_ref)
    return out, dx


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.0, 0.9])
@pytest.mark.parametrize("shape", DROPOUT_SHAPES.values(), ids=DROPOUT_SHAPES.keys())
@dtypes
def test_dropout_is_the_books_seeded_draw(rng, global_seed, dropout_draws, dtype, shape, ratio):
    xs, dout = randn(rng, shape, dtype), randn(rng, shape, dtype)
    fast, reference = seq.TimeDropout(ratio), ref.TimeDropout(ratio)
    out, dx = run_dropout(fast, reference, xs, dout, 1234, global_seed)
    assert_fresh(out, xs, fast.mask)
    assert_fresh(dx, dout, fast.mask)


@pytest.mark.parametrize(
    "in_dtype", [np.float16, np.int64, np.int8, np.bool_, np.float32, np.float64]
)
def test_dropout_input_dtypes(rng, global_seed, in_dtype):
    """float32/float64 as given, anything else computed in float32, as the reference."""
    xs = (10 * randn(rng, (3, 4, 5))).astype(in_dtype)
    dout = randn(rng, (3, 4, 5), np.float64)
    fast, reference = seq.TimeDropout(0.4), ref.TimeDropout(0.4)
    run_dropout(fast, reference, xs, dout, 7, global_seed)


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
def test_dropout_strided_inputs(rng, global_seed, dropout_draws, dtype, layout):
    xs = make_layout(rng, layout, (3, 4, 5), dtype)
    dout = make_layout(rng, layout, (3, 4, 5), other_float(dtype))
    run_dropout(seq.TimeDropout(), ref.TimeDropout(), xs, dout, 3, global_seed)


@dtypes
def test_dropout_special_values(rng, global_seed, dropout_draws, dtype):
    """inf and NaN in xs: dropped inf becomes NaN (inf * 0), as in the reference."""
    xs = randn(rng, (4, 5, 6), dtype)
    xs[0, 0, :3] = np.inf
    xs[1, 1, :3] = np.nan
    xs[2, 2, :3] = -np.inf
    run_dropout(
        seq.TimeDropout(), ref.TimeDropout(), xs, randn(rng, xs.shape, dtype), 5, global_seed
    )


def test_dropout_of_a_0d_array(global_seed, dropout_draws):
    """A 0-d input gets one draw (the reference cannot: np.random.rand() is a float)."""
    layer = seq.TimeDropout(0.5)
    global_seed(2)
    draw = np.random.rand()
    global_seed(2)
    out = layer.forward(np.array(3.0))
    assert out.shape == layer.mask.shape == () and out.dtype == np.float64
    assert out == (6.0 if draw > 0.5 else 0.0)
    assert layer.backward(np.array(1.0)) == layer.mask


def test_dropout_numpy_float32_ratio(rng, global_seed, dropout_draws):
    """A NumPy float32 ratio: the book's comparison (in float64) and scale (in float32)."""
    xs = randn(rng, (4, 5, 6), np.float64)
    ratio = np.float32(0.3)
    run_dropout(seq.TimeDropout(ratio), ref.TimeDropout(ratio), xs, xs, 9, global_seed)


def test_the_state_view_follows_numpys_global_generator(global_seed):
    """The view the kernel draws through is the live state of NumPy's global MT19937."""
    lock, view = global_mt19937()
    assert lock is np.random.mtrand._rand._bit_generator.lock
    for change in (lambda: global_seed(4), lambda: np.random.rand(5), lambda: np.random.bytes(12)):
        change()
        state = np.random.get_state(legacy=False)["state"]
        np.testing.assert_array_equal(view[:624], state["key"])
        assert view[624] == state["pos"]
        assert global_mt19937()[1] is view


@pytest.mark.parametrize("position", [0, 1, 2, 311, 622, 623, 624])
@pytest.mark.parametrize("size", [1, 2, 311, 312, 313, 623, 624, 625, 1249])
def test_dropout_draws_across_the_generators_blocks(rng, global_seed, position, size):
    """MT19937 makes its words 624 at a time and a draw takes two: whatever word a mask
    starts at (``position``; 624: the block is used up), and however its draws straddle
    blocks, it is NumPy's, and the state ends where ``np.random.rand`` leaves it."""
    xs = randn(rng, (size,), np.float32)
    fast, reference = seq.TimeDropout(0.5), ref.TimeDropout(0.5)
    key = rng.integers(0, 2**32, size=624, dtype=np.uint64).astype(np.uint32)
    start = ("MT19937", key, position, 1, 0.25)  # with a cached Gaussian, which stays
    np.random.set_state(start)
    out = fast.forward(xs)
    state = np.random.get_state()
    np.random.set_state(start)
    expected = reference.forward(xs)
    for mine, theirs in zip(state, np.random.get_state(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(fast.mask, reference.mask)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.skipif(
    not hasattr(np.random, "set_bit_generator"), reason="np.random.set_bit_generator: NumPy 1.25"
)
def test_dropout_under_another_global_bit_generator(rng):
    """With PCG64 behind NumPy's global functions, the masks are ``np.random.rand``'s draws
    from it; back on the MT19937, the layer reads that generator's state again."""
    original = np.random.get_bit_generator()
    saved = original.state
    xs = randn(rng, (3, 4, 5), np.float64)
    fast, reference = seq.TimeDropout(0.5), ref.TimeDropout(0.5)
    try:
        for generator in (np.random.PCG64, np.random.MT19937, np.random.PCG64):
            np.random.set_bit_generator(generator(5))
            out = fast.forward(xs)
            after = np.random.rand(4)
            np.random.set_bit_generator(generator(5))
            np.testing.assert_array_equal(out, reference.forward(xs))
            np.testing.assert_array_equal(fast.mask, reference.mask)
            np.testing.assert_array_equal(after, np.random.rand(4))
    finally:
        np.random.set_bit_generator(original)
        original.state = saved
    out = fast.forward(xs)  # the original generator's state again, not a stale view's
    original.state = saved
    np.testing.assert_array_equal(out, reference.forward(xs))
    original.state = saved


def test_dropout_draws_are_whole_under_python_threads(rng, global_seed):
    """Python threads drawing at once (dropout layers and ``np.random.rand``): every draw
    holds the generator's lock, as NumPy's do, so the global state ends where making all
    the draws one after another leaves it (a torn draw would leave it elsewhere)."""
    xs = randn(rng, (7, 11, 13), np.float32)  # 1001 draws: an odd number of pairs
    calls = 30
    barrier = threading.Barrier(6)

    def dropout():
        layer = seq.TimeDropout(0.3)
        barrier.wait()
        for _ in range(calls):
            layer.forward(xs)

    def numpy_draws():
        barrier.wait()
        for _ in range(calls):
            np.random.rand(333)

    global_seed(23)
    threads = [threading.Thread(target=f) for f in [dropout] * 4 + [numpy_draws] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = np.random.get_state()
    global_seed(23)
    np.random.rand(calls * (4 * xs.size + 2 * 333))
    for mine, theirs in zip(state, np.random.get_state(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_dropout_not_training_returns_xs_and_draws_nothing(rng, global_seed):
    xs = randn(rng, (2, 3, 4), np.float32)
    layer = seq.TimeDropout()
    assert layer.train_flg is True and layer.params == [] and layer.grads == []
    assert layer.dropout_ratio == 0.5 and layer.mask is None
    global_seed(3)
    layer.forward(xs)
    mask = layer.mask
    layer.train_flg = False
    state = np.random.get_state()[1].copy()
    assert layer.forward(xs) is xs
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert layer.mask is mask
    dout = randn(rng, (2, 3, 4), np.float32)
    np.testing.assert_array_equal(layer.backward(dout), dout * mask)  # the last training mask


def test_dropout_masks_are_fresh_arrays(rng, global_seed):
    """Each training forward makes a new mask; one kept from an earlier call stays as it
    was."""
    xs = randn(rng, (3, 4, 5), np.float32)
    layer = seq.TimeDropout()
    global_seed(1)
    layer.forward(xs)
    first = layer.mask
    kept = first.copy()
    layer.forward(xs)
    assert layer.mask is not first
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, layer.mask)


# --------------------------------------------------------------------------------------
# Every layer: dtypes, workspaces
# --------------------------------------------------------------------------------------


def drive(kind, layer, rng, N, T, dtype, width=5, V=7):
    """One forward and one backward of ``layer`` at (N, T) with fresh data."""
    if kind == "TimeEmbedding":
        layer.forward(make_ids(rng, N, T, V))
        return layer.backward(randn(rng, (N, T, width), dtype))
    if kind == "TimeAffine":
        layer.forward(randn(rng, (N, T, width), dtype))
        return layer.backward(randn(rng, (N, T, V), dtype))
    if kind == "TimeSoftmaxWithLoss":
        layer.forward(randn(rng, (N, T, V), dtype), make_ids(rng, N, T, V))
        return layer.backward()
    if kind == "TimeSigmoidWithLoss":
        layer.forward(randn(rng, (N, T), dtype), rng.integers(0, 2, size=(N, T)))
        return layer.backward()
    layer.forward(randn(rng, (N, T, width), dtype))
    return layer.backward(randn(rng, (N, T, width), dtype))


def build(kind, rng, dtype, width=5, V=7):
    if kind == "TimeEmbedding":
        return seq.TimeEmbedding(randn(rng, (V, width), dtype))
    if kind == "TimeAffine":
        return seq.TimeAffine(randn(rng, (width, V), dtype), randn(rng, (V,), dtype))
    return getattr(seq, kind)()


@pytest.mark.parametrize("kind", KINDS)
def test_float32_stays_float32(rng, kind, global_seed):
    layer = build(kind, rng, np.float32)
    grad_in = drive(kind, layer, rng, 3, 4, np.float32)
    assert grad_in is None or grad_in.dtype == np.float32
    assert all(g.dtype == np.float32 for g in layer.grads)


@pytest.mark.parametrize("kind", KINDS)
def test_workspaces_grow_once(rng, kind, global_seed):
    """Buffers are reallocated only when a larger shape arrives: calls at a shape seen
    before, or smaller, reuse them."""
    layer = build(kind, rng, np.float64)

    def addresses():
        return {name: b.ctypes.data for name, b in layer._ws._buffers.items()}

    drive(kind, layer, rng, 2, 3, np.float64)
    small = addresses()
    drive(kind, layer, rng, 2, 3, np.float64)
    assert addresses() == small
    drive(kind, layer, rng, 6, 9, np.float64)
    large = addresses()
    for N, T in [(6, 9), (2, 3), (1, 1), (6, 9)]:
        drive(kind, layer, rng, N, T, np.float64)
        assert addresses() == large


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    N=st.integers(1, 6),
    T=st.integers(1, 6),
    D=st.integers(1, 9),
    V=st.integers(1, 40),
    dtype=st.sampled_from(DTYPES),
    tied=st.booleans(),
    ignored=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_language_model_step_property(N, T, D, V, dtype, tied, ignored, seed):
    """Random shapes: embedding -> affine -> softmax loss and back, against the reference,
    with a random share of ignored targets."""
    rng = np.random.default_rng(seed)
    E, b = randn(rng, (V, D), dtype), randn(rng, (V,), dtype)
    W = E.T if tied else randn(rng, (D, V), dtype)
    xs, ts = rng.integers(0, V, size=(N, T)), rng.integers(0, V, size=(N, T))
    ts[rng.random((N, T)) < ignored] = -1
    results = []
    for module in (seq, ref):
        embed, affine = module.TimeEmbedding(E.copy()), module.TimeAffine(W.copy(order="K"), b)
        loss_layer = module.TimeSoftmaxWithLoss()
        scores = affine.forward(embed.forward(xs))
        loss = loss_layer.forward(scores, ts)
        dscores = loss_layer.backward(0.5)
        embed.backward(affine.backward(dscores))
        results.append((loss, scores, dscores, *affine.grads, *embed.grads))
    (loss, *arrays), (ref_loss, *ref_arrays) = results
    assert_loss(loss, ref_loss, dtype)
    for i, (a, e) in enumerate(zip(arrays, ref_arrays, strict=True)):
        assert_close(a, e, dtype, err_msg=f"array {i}")


# --------------------------------------------------------------------------------------
# Misuse: a table of mistakes (see test_misuse.py for the pattern)
# --------------------------------------------------------------------------------------

N, T, D, M, V = 2, 3, 4, 5, 6


@pytest.fixture
def kernel_spy(monkeypatch):
    public_kernels = [
        name
        for name, value in vars(kernels_module).items()
        if isinstance(value, Dispatcher) and not name.startswith("_")
    ]
    return KernelSpy().install(monkeypatch, kernels_module, public_kernels)


class Pair:
    """A fast and a reference layer of one kind, sharing their parameter arrays."""

    def __init__(self, kind, dtype, spy, seed):
        self.kind = kind
        self.dtype = np.dtype(dtype)
        self.spy = spy
        self.seed = seed  # reseeds NumPy's global state before each dropout forward
        self.rng = np.random.default_rng(20261128)
        if kind == "TimeEmbedding":
            self.params = [self.data(V, D)]
        elif kind == "TimeAffine":
            self.params = [self.data(D, M), self.data(M)]
        else:
            self.params = []
        self.fast = self.build(seq, self.params)
        self.ref = self.build(ref, self.params)
        self.last_forward = None
        self.single = self.dtype == np.float32  # whether the last forward involved float32

    def build(self, module, args):
        return getattr(module, self.kind)(*args)

    def data(self, *shape, dtype=None):
        return self.rng.standard_normal(shape).astype(dtype or self.dtype)

    def ids(self, *shape, high=V):
        return self.rng.integers(0, high, size=shape)

    def forward_args(self, n=N, t=T):
        if self.kind == "TimeEmbedding":
            return (self.ids(n, t),)
        if self.kind == "TimeAffine":
            return (self.data(n, t, D),)
        if self.kind == "TimeSoftmaxWithLoss":
            return self.data(n, t, V), self.ids(n, t)
        if self.kind == "TimeSigmoidWithLoss":
            return self.data(n, t), self.ids(n, t, high=2)
        return (self.data(n, t, D),)

    def backward_args(self):
        n, t = self.last_forward
        if self.kind in ("TimeEmbedding", "TimeDropout"):
            return (self.data(n, t, D),)
        if self.kind == "TimeAffine":
            return (self.data(n, t, M),)
        return (0.5,)

    def state(self, layer):
        items = [(f"grads[{i}]", g) for i, g in enumerate(layer.grads)]
        if self.kind == "TimeDropout":
            items.append(("mask", layer.mask))
        return items

    def compare(self, actual, expected, what, single):
        """Within the tolerance of float64, or of float32 when ``single`` (anything of the
        call computed or stored in float32 or float16)."""
        if expected is None:
            assert actual is None, what
            return
        if isinstance(expected, float):
            assert_loss(actual, expected, np.float32 if single else np.float64, what)
            return
        assert isinstance(actual, np.ndarray) and actual.shape == expected.shape, what
        single = single or np.dtype(np.float32) in (actual.dtype, expected.dtype)
        tolerance = TOLERANCE[np.dtype(np.float32 if single else np.float64)]
        np.testing.assert_allclose(actual, expected, err_msg=what, **tolerance)

    def same(self, method, *args):
        """Call ``method`` on both layers; outputs and state must agree."""
        kept = [copy_arg(a) for a in args]
        calls = self.spy.calls
        if method == "forward":
            np.random.seed(self.seed)
        with np.errstate(all="ignore"):  # the reference's NumPy warns about NaN and inf
            expected = getattr(self.ref, method)(*args)
        if method == "forward":
            np.random.seed(self.seed)
        actual = getattr(self.fast, method)(*args)
        for before, after in zip(kept, args, strict=True):
            assert same_value(before, after), f"{method} modified its argument"
        if method == "forward":
            self.last_forward = (args[0].shape[0], args[0].shape[1])
            involved = [*args, *self.fast.params]
            self.single = any(np.asarray(a).dtype in (np.float32, np.float16) for a in involved)
        single = self.single or np.asarray(args[0]).dtype == np.float32
        self.compare(actual, expected, method, single)
        for (label, a), (_, e) in zip(self.state(self.fast), self.state(self.ref), strict=True):
            if e is None:
                assert a is None, label
            else:
                self.compare(a, e, label, single)
        assert self.spy.calls > calls, "the kernel spy saw no kernel call"
        return actual

    def raises(self, exc_type, needles, method, *args):
        """``method`` must raise exactly ``exc_type`` naming ``needles``, changing nothing:
        no kernel call, no draw from the random state, the same params, grads and mask."""
        params_before = list(self.fast.params)
        state_before = [(label, copy_arg(v)) for label, v in self.state(self.fast)]
        random_before = np.random.get_state()[1].copy()
        calls = self.spy.calls
        with pytest.raises(exc_type) as info:
            if method == "construct":
                self.build(seq, args)
            else:
                getattr(self.fast, method)(*args)
        error = info.value
        assert type(error) is exc_type, f"{type(error).__module__}.{type(error).__name__}"
        for needle in needles:
            assert needle in str(error), f"{needle!r} not in {str(error)!r}"
        assert self.spy.calls == calls, "a kernel ran before the error was raised"
        np.testing.assert_array_equal(np.random.get_state()[1], random_before)
        assert all(a is b for a, b in zip(params_before, self.fast.params, strict=True))
        for (label, before), (_, after) in zip(state_before, self.state(self.fast), strict=True):
            assert same_value(before, after), f"{label} changed by a call that raised"
        return error

    def restore_params(self):
        self.fast.params[:] = self.params

    def recover(self):
        """A correct backward of the last accepted forward, then a fresh forward and
        backward: the reference's numbers whatever raised before."""
        if self.last_forward is not None:
            self.same("backward", *self.backward_args())
        self.same("forward", *self.forward_args())
        self.same("backward", *self.backward_args())


@dataclass(frozen=True)
class Case:
    name: str
    kinds: tuple[str, ...]
    run: Callable[[Pair], None]


CASES: dict[str, Case] = {}


def case(*kinds):
    def register(run):
        assert run.__name__ not in CASES
        CASES[run.__name__] = Case(run.__name__, kinds, run)
        return run

    return register


WITH_DATA_XS = ("TimeAffine", "TimeSoftmaxWithLoss", "TimeSigmoidWithLoss", "TimeDropout")
LOSSES = ("TimeSoftmaxWithLoss", "TimeSigmoidWithLoss")


def first_arg_replaced(p, value):
    """The forward arguments with the first (xs / x) replaced by ``value``."""
    return (value, *p.forward_args()[1:])


def first_name(p):
    return "x" if p.kind == "TimeAffine" else "xs"


# ---- the first forward argument: wrong types ------------------------------------------


@case(*KINDS)
def first_arg_none(p):
    p.raises(TypeError, [first_name(p), "NoneType"], "forward", *first_arg_replaced(p, None))


@case(*KINDS)
def first_arg_nested_list(p):
    value = p.forward_args()[0].tolist()
    p.raises(TypeError, [first_name(p), "list"], "forward", *first_arg_replaced(p, value))


@case(*KINDS)
def first_arg_complex(p):
    value = p.forward_args()[0] + 1j
    p.raises(TypeError, [first_name(p), "complex"], "forward", *first_arg_replaced(p, value))


@case(*KINDS)
def first_arg_object_and_strings(p):
    value = p.forward_args()[0]
    for bad, needle in [(value.astype(object), "object"), (np.full(value.shape, "a"), "<U1")]:
        p.raises(TypeError, [first_name(p), needle], "forward", *first_arg_replaced(p, bad))


@case("TimeAffine", "TimeSoftmaxWithLoss", "TimeSigmoidWithLoss")
def scores_int_or_bool(p):
    value = p.forward_args()[0]
    for bad, needle in [(np.ones(value.shape, np.int64), "int64"), (value > 0, "bool")]:
        p.raises(TypeError, [first_name(p), needle], "forward", *first_arg_replaced(p, bad))


@case("TimeEmbedding")
def ids_float_bool(p):
    for bad, needle in [(p.data(N, T), str(p.dtype)), (p.ids(N, T) > 2, "bool")]:
        p.raises(TypeError, ["xs", needle, "integer"], "forward", bad)


# ---- the first forward argument: wrong ranks and sizes --------------------------------


@case("TimeEmbedding")
def ids_wrong_rank(p):
    p.raises(ValueError, ["xs", "(N, T)", "(6,)"], "forward", p.ids(N * T))
    p.raises(ValueError, ["xs", "(N, T)", "(2, 3, 1)"], "forward", p.ids(N, T, 1))


@case("TimeEmbedding")
def ids_out_of_range(p):
    ids = p.ids(N, T)
    ids[1, 2] = V
    p.raises(ValueError, ["xs", "[0, V=6)", "got 6 at (1, 2)"], "forward", ids)
    ids[1, 2] = -1
    p.raises(ValueError, ["xs", "[0, V=6)", "got -1 at (1, 2)"], "forward", ids)
    huge = ids.astype(np.uint64)
    huge[0, 1] = 2**63 + 5
    p.raises(ValueError, ["xs", "V=6", str(2**63 + 5)], "forward", huge)


@case("TimeAffine")
def x_wrong_shapes(p):
    p.raises(ValueError, ["x", "(N, T, D=4)", "(2, 3, 5)"], "forward", p.data(N, T, D + 1))
    p.raises(ValueError, ["x", "(N, T, D=4)", "(2, 4)"], "forward", p.data(N, D))
    p.raises(ValueError, ["x", "(N, T, D=4)", "(2, 3, 4, 1)"], "forward", p.data(N, T, D, 1))


@case("TimeSoftmaxWithLoss")
def scores_wrong_shapes(p):
    ts = p.ids(N, T)
    p.raises(ValueError, ["xs", "(N, T, V)", "(2, 3)"], "forward", p.data(N, T), ts)
    p.raises(ValueError, ["xs", "V >= 1", "(2, 3, 0)"], "forward", p.data(N, T, 0), ts)


@case("TimeSigmoidWithLoss")
def sigmoid_scores_wrong_rank(p):
    ts = p.ids(N, T, high=2)
    p.raises(ValueError, ["xs", "(N, T)", "(2, 3, 1)"], "forward", p.data(N, T, 1), ts)
    p.raises(ValueError, ["xs", "(N, T)", "(2,)"], "forward", p.data(N), ts)


# ---- targets and labels ---------------------------------------------------------------


@case("TimeSoftmaxWithLoss")
def targets_wrong_shape(p):
    xs = p.data(N, T, V)
    p.raises(ValueError, ["ts", "(2, 3)", "(3, 2)"], "forward", xs, p.ids(T, N))
    p.raises(ValueError, ["ts", "(2, 3)", "(6,)"], "forward", xs, p.ids(N * T))
    one_hot = np.eye(V + 1, dtype=np.int64)[p.ids(N, T)]
    p.raises(ValueError, ["ts", "one-hot (2, 3, 6)", "(2, 3, 7)"], "forward", xs, one_hot)


@case("TimeSoftmaxWithLoss")
def targets_wrong_types(p):
    xs = p.data(N, T, V)
    for bad, needle in [
        (p.ids(N, T).astype(np.float64), "float64"),
        (p.ids(N, T) > 2, "bool"),
        (p.ids(N, T) + 0j, "complex"),
        (None, "NoneType"),
        (p.ids(N, T).tolist(), "list"),
    ]:
        p.raises(TypeError, ["ts", needle], "forward", xs, bad)
    one_hot = np.eye(V, dtype=np.complex64)[p.ids(N, T)]
    p.raises(TypeError, ["ts", "complex64"], "forward", xs, one_hot)


@case("TimeSoftmaxWithLoss")
def targets_out_of_range(p):
    xs = p.data(N, T, V)
    ts = p.ids(N, T)
    ts[0, 1] = V
    p.raises(
        ValueError, ["ts", "[0, V=6) or ignore_label=-1", "got 6 at (0, 1)"], "forward", xs, ts
    )
    ts[0, 1] = -2
    p.raises(ValueError, ["ts", "got -2 at (0, 1)"], "forward", xs, ts)
    ts[0, 1] = -1  # the ignore label: fine
    p.same("forward", xs, ts)
    p.fast.ignore_label = p.ref.ignore_label = -100
    p.raises(ValueError, ["ts", "ignore_label=-100", "got -1 at (0, 1)"], "forward", xs, ts)
    p.same("backward", 1)  # the last accepted forward (ignore_label -1) is intact
    p.fast.ignore_label = p.ref.ignore_label = -1


@case("TimeSoftmaxWithLoss")
def ignore_label_not_an_integer(p):
    for bad, exc, needles in [
        (None, TypeError, ["ignore_label", "NoneType"]),
        (-1.0, TypeError, ["ignore_label", "float"]),
        (2**64, ValueError, ["ignore_label", "int64"]),
    ]:
        p.fast.ignore_label = bad
        p.raises(exc, needles, "forward", *p.forward_args())
    p.fast.ignore_label = np.int8(-1)  # NumPy integers are fine
    p.same("forward", *p.forward_args())


@case("TimeSigmoidWithLoss")
def labels_not_binary(p):
    xs = p.data(N, T)
    for bad, value in [(2, "2"), (-1, "-1"), (0.5, "0.5"), (np.nan, "nan")]:
        ts = p.ids(N, T, high=2).astype(np.float64 if isinstance(bad, float) else np.int64)
        ts[1, 0] = bad
        p.raises(ValueError, ["ts", "labels 0 or 1", f"got {value} at (1, 0)"], "forward", xs, ts)


@case("TimeSigmoidWithLoss")
def labels_wrong_type_or_shape(p):
    xs = p.data(N, T)
    labels = p.ids(N, T, high=2)
    p.raises(TypeError, ["ts", "complex"], "forward", xs, labels + 0j)
    p.raises(TypeError, ["ts", "NoneType"], "forward", xs, None)
    p.raises(TypeError, ["ts", "<U1"], "forward", xs, np.full((N, T), "1"))
    p.raises(ValueError, ["ts", "(2, 3)", "(3, 2)"], "forward", xs, p.ids(T, N, high=2))


# ---- inputs that are fine -------------------------------------------------------------


@case(*KINDS)
def failed_forward_keeps_the_last_forward(p):
    p.same("forward", *p.forward_args(n=N + 1))
    bad = p.forward_args()[0].astype(complex)
    p.raises(TypeError, [first_name(p)], "forward", *first_arg_replaced(p, bad))
    p.same("backward", *p.backward_args())  # backpropagates the (N + 1) forward


@case(*KINDS)
def backward_twice(p):
    p.same("forward", *p.forward_args())
    args = p.backward_args()
    p.same("backward", *args)
    p.same("backward", *args)


@case(*KINDS)
def empty_batch_and_sequence(p):
    if p.kind in ("TimeSigmoidWithLoss", "TimeAffine"):  # the reference fails; tested above
        return
    for n, t in [(0, T), (N, 0)]:
        p.same("forward", *p.forward_args(n, t))
        p.same("backward", *p.backward_args())


@case(*WITH_DATA_XS)
def scores_other_float_dtype_and_strides(p):
    args = p.forward_args()
    p.same("forward", *first_arg_replaced(p, args[0].astype(other_float(p.dtype))))
    strided = np.concatenate([args[0], args[0]], axis=-1)[..., ::2][:, ::-1]
    p.same("forward", *first_arg_replaced(p, strided))
    p.same("forward", *first_arg_replaced(p, args[0].astype(np.float16)))


@case(*WITH_DATA_XS)
def scores_nan_inf(p):
    xs = p.forward_args()[0]
    if p.kind == "TimeSigmoidWithLoss":
        xs[0, 1], xs[1, 2] = np.inf, -np.inf
    else:
        xs[0, 1, 0], xs[1, 2, 1] = np.inf, -np.inf
    p.same("forward", *first_arg_replaced(p, xs))
    p.same("backward", *p.backward_args())
    xs.flat[0] = np.nan
    p.same("forward", *first_arg_replaced(p, xs))
    p.same("backward", *p.backward_args())


@case("TimeEmbedding", "TimeAffine")
def weights_nan_inf(p):
    p.params[0].flat[[0, 3]] = [np.nan, np.inf]  # in place: both layers share the arrays
    p.params[-1].flat[-1] = -np.inf
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())


@case("TimeEmbedding", "TimeAffine", "TimeDropout")
def gradient_nan_inf(p):
    p.same("forward", *p.forward_args())
    (dout,) = p.backward_args()
    dout.flat[[0, 4, -1]] = [np.nan, np.inf, -np.inf]
    p.same("backward", dout)


@case(*LOSSES)
def dout_values(p):
    p.same("forward", *p.forward_args())
    for dout in (1, 0, -2.5, np.float32(0.5), np.int64(3), np.array(0.25), np.inf, np.nan):
        p.same("backward", dout)


# ---- backward misuse ------------------------------------------------------------------


@case(*KINDS)
def backward_before_forward(p):
    p.raises(
        ValueError,
        ["backward", "forward"],
        "backward",
        *((1.0,) if p.kind in LOSSES else (p.data(N, T, D),)),
    )


@case("TimeEmbedding", "TimeAffine", "TimeDropout")
def dout_shape_not_the_last_forward(p):
    p.same("forward", *p.forward_args(n=N + 1))
    width = M if p.kind == "TimeAffine" else D
    expected = str((N + 1, T, width))
    p.raises(ValueError, ["dout", expected, str((N, T, width))], "backward", p.data(N, T, width))
    p.raises(ValueError, ["dout", expected, str((N + 1, T))], "backward", p.data(N + 1, T))
    p.same("backward", *p.backward_args())


@case("TimeEmbedding", "TimeAffine", "TimeDropout")
def dout_wrong_types(p):
    p.same("forward", *p.forward_args())
    (good,) = p.backward_args()
    for bad, needle in [
        (np.ones(good.shape, np.int64), "int64"),
        (good + 1j, "complex"),
        (good.tolist(), "list"),
        (None, "NoneType"),
    ]:
        p.raises(TypeError, ["dout", needle], "backward", bad)


@case(*LOSSES)
def dout_not_a_number(p):
    p.same("forward", *p.forward_args())
    for bad, needle in [
        (None, "NoneType"),
        ("1", "str"),
        (np.ones(2), "(2,)"),
        (1j, "complex"),
        (True, "bool"),
    ]:
        p.raises(TypeError, ["dout", needle], "backward", bad)


@case("TimeDropout")
def backward_after_eval_forward_only(p):
    p.fast.train_flg = p.ref.train_flg = False
    xs = p.data(N, T, D)
    assert p.fast.forward(xs) is xs
    p.raises(ValueError, ["backward", "training forward"], "backward", p.data(N, T, D))
    p.fast.train_flg = p.ref.train_flg = True


# ---- dropout ratios -------------------------------------------------------------------


@case("TimeDropout")
def bad_ratio_at_construction(p):
    for bad, exc in [
        (1.0, ValueError),
        (1.5, ValueError),
        (-0.1, ValueError),
        (np.nan, ValueError),
        ("0.5", TypeError),
        (None, TypeError),
        (True, TypeError),
    ]:
        p.raises(exc, ["dropout_ratio"], "construct", bad)


@case("TimeDropout")
def bad_ratio_set_later(p):
    p.same("forward", *p.forward_args())
    for bad in (1, 2.0, -0.5):
        p.fast.dropout_ratio = bad
        p.raises(ValueError, ["dropout_ratio", "[0, 1)", repr(bad)], "forward", p.data(N, T, D))
    p.fast.dropout_ratio = 0.5
    p.same("backward", *p.backward_args())  # the last accepted forward's mask is intact


# ---- parameters and gradients replaced in the lists -----------------------------------


@case("TimeEmbedding")
def embedding_param_replaced_badly(p):
    W = p.params[0]
    for bad, exc, needles in [
        (W.astype(np.int64), TypeError, ["W", "int64", "float32 or float64"]),
        (W.astype(np.float16), TypeError, ["W", "float16"]),
        (W[0], ValueError, ["W", "(V, D)", "(4,)"]),
        (W[None], ValueError, ["W", "(V, D)", "(1, 6, 4)"]),
        (W.tolist(), TypeError, ["W", "list"]),
    ]:
        p.fast.params[0] = bad
        p.raises(exc, needles, "forward", *p.forward_args())
    p.restore_params()
    p.fast.params.append(W)
    p.raises(TypeError, ["TimeEmbedding.params", "[W]"], "forward", *p.forward_args())
    p.fast.params.pop()


@case("TimeAffine")
def affine_params_replaced_badly(p):
    W, b = p.params
    for index, bad, exc, needles in [
        (0, W.astype(np.int32), TypeError, ["W", "int32"]),
        (0, W[:, :-1], ValueError, ["b", "(4,)", str((M,))]),
        (0, W[:-1], ValueError, ["x", "D=3"]),
        (0, W[0], ValueError, ["W", "(D, M)", str((M,))]),
        (1, b.astype(other_float(p.dtype)), TypeError, ["W and b", str(other_float(p.dtype))]),
        (1, b[None], ValueError, ["b", str((1, M)), str((M,))]),
        (1, None, TypeError, ["b", "NoneType"]),
    ]:
        p.fast.params[index] = bad
        p.raises(exc, needles, "forward", *p.forward_args())
        p.restore_params()


@case("TimeEmbedding", "TimeAffine")
def params_updated_in_place_and_replaced(p):
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())
    for param, grad in zip(p.params, p.fast.grads, strict=True):
        param -= 0.1 * grad
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())
    replaced = p.params[0] * 0.5  # a new array in the list, not an update in place
    p.fast.params[0] = p.ref.params[0] = replaced
    if p.kind == "TimeEmbedding":
        p.ref.W = replaced  # the reference reads its W attribute
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())
    p.fast.params[0] = p.ref.params[0] = p.params[0]
    if p.kind == "TimeEmbedding":
        p.ref.W = p.params[0]
    p.same("forward", *p.forward_args())  # backward uses its forward's arrays (see TimeAffine)


@case("TimeEmbedding", "TimeAffine")
def params_switched_to_the_other_dtype(p):
    other = other_float(p.dtype)
    for i, param in enumerate(p.params):
        p.fast.params[i] = p.ref.params[i] = param.astype(other)
    if p.kind == "TimeEmbedding":
        p.ref.W = p.ref.params[0]
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())  # grads keep their dtype, like the reference's


@case("TimeEmbedding", "TimeAffine")
def grads_replaced_badly(p):
    p.same("forward", *p.forward_args())
    good = p.fast.grads[0]
    wrong = np.zeros((good.shape[0] + 1, good.shape[1]), p.dtype)
    p.fast.grads[0] = wrong
    p.raises(
        ValueError, ["grads[0]", str(wrong.shape), str(good.shape)], "backward", *p.backward_args()
    )
    p.fast.grads[0] = np.zeros(good.shape, np.int64)
    p.raises(TypeError, ["grads[0]", "int64"], "backward", *p.backward_args())
    frozen = np.zeros_like(good)
    frozen.flags.writeable = False
    p.fast.grads[0] = frozen
    p.raises(ValueError, ["grads[0]", "read-only"], "backward", *p.backward_args())
    p.fast.grads[0] = good
    p.same("backward", *p.backward_args())


# ---- constructors ---------------------------------------------------------------------


@case("TimeEmbedding")
def embedding_constructor(p):
    W = p.params[0]
    for bad, exc, needles in [
        (W.astype(np.int64), TypeError, ["W", "int64"]),
        (W.astype(W.dtype.newbyteorder()), TypeError, ["W", ">f"]),
        (W[0], ValueError, ["W", "(V, D)", "(4,)"]),
        (None, TypeError, ["W", "NoneType"]),
        (W.tolist(), TypeError, ["W", "list"]),
    ]:
        p.raises(exc, needles, "construct", bad)


@case("TimeAffine")
def affine_constructor(p):
    W, b = p.params
    for args, exc, needles in [
        ((W.astype(np.int64), b), TypeError, ["W", "int64"]),
        ((W, b.astype(np.float16)), TypeError, ["b", "float16"]),
        ((W, b.astype(other_float(p.dtype))), TypeError, ["W and b"]),
        ((W[0], b), ValueError, ["W", "(D, M)", "(5,)"]),
        ((W, b[:-1]), ValueError, ["b", "(4,)", "(5,)", str(W.shape)]),
        ((W, b[None]), ValueError, ["b", "(1, 5)"]),
        ((W.tolist(), b), TypeError, ["W", "list"]),
        ((W, None), TypeError, ["b", "NoneType"]),
    ]:
        p.raises(exc, needles, "construct", *args)


# --------------------------------------------------------------------------------------


def _table():
    return [
        pytest.param(c.name, kind, id=f"{c.name}-{kind}")
        for c in CASES.values()
        for kind in c.kinds
    ]


def test_misuse_table_covers_every_layer():
    covered = {kind for c in CASES.values() for kind in c.kinds}
    assert covered == set(KINDS)
    assert len(CASES) >= 30


@dtypes
@pytest.mark.parametrize(("name", "kind"), _table())
def test_misuse(name, kind, dtype, kernel_spy, global_seed):
    global_seed(0)
    pair = Pair(kind, dtype, kernel_spy, seed=4321)
    CASES[name].run(pair)
    pair.recover()


def test_separate_layers_in_threads_give_the_serial_results(monkeypatch):
    """Kernels release the GIL; separate layers in threads give bit-for-bit the serial
    results. (TimeDropout is left out: it draws from NumPy's global random state, which
    threads share, as the book's layer does.) The softmax cross-entropy splits its rows
    between the BLAS library's threads, which all the Python threads share, and so does the
    affine forward's bias fill."""
    monkeypatch.setattr(seq, "SOFTMAX_SCORES_PER_THREAD", 1)
    monkeypatch.setattr(seq, "BIAS_VALUES_PER_THREAD", 1)
    N, T, D, V = 6, 9, 16, 50

    def job(seed):
        rng = np.random.default_rng(seed)
        E = randn(rng, (V, D), np.float32)
        b = randn(rng, V, np.float32)
        embed, affine = seq.TimeEmbedding(E), seq.TimeAffine(E.T, b)  # tied, as in the book
        loss, sigmoid = seq.TimeSoftmaxWithLoss(), seq.TimeSigmoidWithLoss()
        results = []
        for _ in range(5):
            ids = rng.integers(0, V, size=(N, T))
            scores = affine.forward(embed.forward(ids))
            results += [scores.copy(), np.float64(loss.forward(scores, ids))]
            dx = affine.backward(loss.backward())
            embed.backward(dx)
            results += [dx.copy(), *(g.copy() for g in affine.grads + embed.grads)]
            labels = rng.integers(0, 2, size=(N, T))
            results += [np.float64(sigmoid.forward(scores[..., 0], labels)), sigmoid.backward()]
        return results

    assert_threads_give_serial_results(job, range(4))
