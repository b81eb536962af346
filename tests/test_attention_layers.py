"""fastrnn.attention_layers against fastrnn.reference: WeightSum, AttentionWeight, Attention
and TimeAttention, every output and gradient.

The first part runs the fast and the reference layer on the same inputs and compares
everything with the shared ``TOLERANCE`` table: edge shapes, the book's shapes, strided and
mixed-dtype inputs, NaN and inf, repeated backward passes, the attention weights the book
keeps, and the API contract the book's models rely on (fresh outputs, inputs never
modified). The second part is a misuse table in the style of ``test_misuse.py``: every
wrong call raises a plain ``ValueError``/``TypeError`` naming the argument, before any
kernel runs (a spy counts the kernel calls), and leaves the layer usable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from _support import (
    DTYPES,
    TOLERANCE,
    KernelSpy,
    assert_threads_give_serial_results,
    copy_arg,
    other_float,
    same_value,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrnn._kernels_attention as kernels_module
from fastrnn import attention_layers, reference

KINDS = ("TimeAttention", "Attention", "AttentionWeight", "WeightSum")
STEP_KINDS = ("Attention", "AttentionWeight", "WeightSum")
SOFTMAX_KINDS = ("TimeAttention", "Attention", "AttentionWeight")  # need Te >= 1
KERNEL_NAMES = (
    "time_attention_forward",
    "time_attention_backward",
    "attention_weight_forward",
    "attention_weight_backward",
    "weight_sum_forward",
    "weight_sum_backward",
)
#: The argument names of forward and backward, as the book calls them.
FORWARD_NAMES = {
    "TimeAttention": ("hs_enc", "hs_dec"),
    "Attention": ("hs", "h"),
    "AttentionWeight": ("hs", "h"),
    "WeightSum": ("hs", "a"),
}
GRAD_NAME = {
    "TimeAttention": "dout",
    "Attention": "dout",
    "AttentionWeight": "da",
    "WeightSum": "dc",
}
DTYPE_IDS = {np.float32: "f32", np.float64: "f64"}
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: DTYPE_IDS[d])
kinds = pytest.mark.parametrize("kind", KINDS)


def shapes_of(kind, N, Te, Td, H):
    """Shapes of the forward arguments and of the incoming gradient. The per-step layers
    take one decoder step; their encoder sequence has ``Te`` steps."""
    if kind == "TimeAttention":
        return [(N, Te, H), (N, Td, H)], (N, Td, H)
    if kind == "Attention":
        return [(N, Te, H), (N, H)], (N, H)
    if kind == "AttentionWeight":
        return [(N, Te, H), (N, H)], (N, Te)
    return [(N, Te, H), (N, Te)], (N, H)  # WeightSum


def make_args(rng, kind, N, Te, Td, H, dtype, scale=0.7):
    """Forward arguments and an incoming gradient, random, in ``dtype``."""
    forward_shapes, grad_shape = shapes_of(kind, N, Te, Td, H)
    forward = [(scale * rng.standard_normal(s)).astype(dtype) for s in forward_shapes]
    return forward, rng.standard_normal(grad_shape).astype(dtype)


def build(kind):
    return getattr(attention_layers, kind)(), getattr(reference, kind)()


def tolerance(*dtypes_involved):
    """float32's tolerance if anything was computed or stored in float32."""
    single = np.dtype(np.float32)
    involved = {np.dtype(d) for d in dtypes_involved}
    return TOLERANCE[single if single in involved else np.dtype(np.float64)]


def compare(actual, expected, what, compute_dtype=None):
    """Same structure, shapes and dtypes; values within tolerance; NaN and inf at exactly
    the reference's positions (``assert_allclose`` checks both)."""
    if isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected) and len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            compare(a, e, f"{what}[{i}]", compute_dtype)
        return
    assert isinstance(actual, np.ndarray), what
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    tol = tolerance(actual.dtype, expected.dtype, compute_dtype or actual.dtype)
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


def arrays_in(value):
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in arrays_in(v)]
    return [value] if isinstance(value, np.ndarray) else []


def call_both(fast, ref, method, args, label=""):
    """Call ``method`` on both layers and compare. The fast layer must leave its
    arguments as they were and return arrays that share no memory with them."""
    kept = [a.copy() for a in args]
    with np.errstate(all="ignore"):  # the reference's NumPy warns about NaN and inf
        expected = getattr(ref, method)(*args)
    actual = getattr(fast, method)(*args)
    for i, (before, after) in enumerate(zip(kept, args, strict=True)):
        np.testing.assert_array_equal(after, before, err_msg=f"{label}{method} modified arg {i}")
    compare(actual, expected, f"{label}{method}")
    for out in arrays_in(actual):
        for arg in args:
            assert not np.may_share_memory(out, arg), f"{label}{method}: output aliases an input"
    compare_weights(fast, ref, label)
    return actual, expected


def compare_weights(fast, ref, label=""):
    """``attention_weights`` (TimeAttention) and ``attention_weight`` (Attention)."""
    for attr in ("attention_weights", "attention_weight"):
        if hasattr(ref, attr):
            expected, actual = getattr(ref, attr), getattr(fast, attr)
            if expected is None:
                assert actual is None, f"{label}{attr}"
            else:
                compare(actual, expected, f"{label}{attr}")


def run_both(fast, ref, forward_args, grad, label=""):
    out, _ = call_both(fast, ref, "forward", forward_args, label)
    grads, _ = call_both(fast, ref, "backward", [grad], label)
    return out, grads


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------

#: (N, Te, Td, H): edge shapes, shapes on both sides of the kernels' blocks of four rows,
#: and empty batches, sequences and hidden sizes where the reference defines a result.
SHAPES = {
    "N1": (1, 5, 3, 4),
    "Te1": (3, 1, 4, 5),
    "Td1": (3, 6, 1, 5),
    "H1": (3, 5, 4, 1),
    "all1": (1, 1, 1, 1),
    "N4-Te9-Td7-H13": (4, 9, 7, 13),
    "N2-Te29-Td10-H33": (2, 29, 10, 33),
    "N0": (0, 5, 3, 4),
    "Td0": (3, 5, 0, 4),
    "H0": (3, 5, 2, 0),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@dtypes
@kinds
def test_matches_reference(rng, kind, dtype, shape):
    """Outputs, gradients and attention weights match the reference, in the input dtype."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, *shape, dtype)
    out, grads = run_both(fast, ref, forward_args, grad)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)


def test_weight_sum_with_no_steps(rng):
    """WeightSum over T = 0 steps is an empty sum, as in the reference (the softmax layers
    need T >= 1; see the misuse table)."""
    fast, ref = build("WeightSum")
    forward_args, grad = make_args(rng, "WeightSum", 3, 0, 1, 4, np.float64)
    out, _ = run_both(fast, ref, forward_args, grad)
    assert not out.any()


@dtypes
def test_every_block_remainder(rng, dtype):
    """Te and Td from 1 to 9: the kernels take rows four, two and one at a time, so every
    remainder of both the weighted sums and the dot products is met."""
    for Te in range(1, 10):
        for Td in range(0, 10):
            fast, ref = build("TimeAttention")
            forward_args, grad = make_args(rng, "TimeAttention", 2, Te, Td, 7, dtype)
            run_both(fast, ref, forward_args, grad, label=f"Te={Te} Td={Td}: ")
    for kind in STEP_KINDS:
        for T in range(1, 10):
            fast, ref = build(kind)
            forward_args, grad = make_args(rng, kind, 2, T, 1, 7, dtype)
            run_both(fast, ref, forward_args, grad, label=f"{kind} T={T}: ")


@pytest.mark.parametrize(
    "shape", [(128, 29, 10, 256), (1, 29, 1, 256)], ids=["training", "generation"]
)
def test_book_shapes(rng, shape):
    """The book's shapes: N=128, Te=29, Td=10, H=256 in training, one token at a time in
    generation. States as an LSTM gives them, in (-1, 1)."""
    N, Te, Td, H = shape
    fast, ref = build("TimeAttention")
    hs_enc = np.tanh(rng.standard_normal((N, Te, H))).astype(np.float32)
    hs_dec = np.tanh(rng.standard_normal((N, Td, H))).astype(np.float32)
    dout = (0.1 * rng.standard_normal((N, Td, H))).astype(np.float32)
    run_both(fast, ref, [hs_enc, hs_dec], dout)


# --------------------------------------------------------------------------------------
# Layouts and dtypes
# --------------------------------------------------------------------------------------


def lay_out(array, layout):
    """The same values in another memory layout."""
    if layout == "reversed":
        return np.ascontiguousarray(array[::-1, ::-1])[::-1, ::-1]
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "stepped":
        big = np.full(tuple(2 * s + 1 for s in array.shape), np.nan, dtype=array.dtype)
        view = big[tuple(slice(1, None, 2) for _ in array.shape)]
        view[...] = array
        return view
    if layout == "concatenated":  # the book's slices of np.concatenate((c, hs), axis=-1)
        other = np.full(array.shape, np.nan, dtype=array.dtype)
        return np.concatenate((other, array), axis=-1)[..., array.shape[-1] :]
    if layout == "read-only":
        frozen = array.copy()
        frozen.flags.writeable = False
        return frozen
    if layout == "unaligned":
        raw = np.empty(array.nbytes + 1, np.uint8)[1:].view(array.dtype).reshape(array.shape)
        raw[...] = array
        assert not raw.flags.aligned or array.size == 0
        return raw
    raise AssertionError(layout)


LAYOUTS = ["reversed", "fortran", "stepped", "concatenated", "read-only", "unaligned"]


@pytest.mark.parametrize("layout", LAYOUTS)
@dtypes
@kinds
def test_strided_inputs(rng, kind, dtype, layout):
    """Inputs and gradients as views of any layout give the reference's numbers, and the
    views are left as they were."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 6, 4, 5, dtype)
    forward_args = [lay_out(a, layout) for a in forward_args]
    grad = lay_out(grad, layout)
    if layout in ("reversed", "stepped", "concatenated"):
        assert not any(a.flags.c_contiguous for a in forward_args + [grad])
    run_both(fast, ref, forward_args, grad)


def test_book_decoder_layout(rng):
    """The book's AttentionDecoder: ``hs_dec`` straight from the LSTM, the gradient a slice
    ``dout[:, :, :H]`` of the affine layer's, and ``denc_hs[:, -1] += dh`` on the result."""
    N, Te, Td, H = 4, 7, 5, 6
    fast, ref = build("TimeAttention")
    enc_hs = rng.standard_normal((N, Te, H))
    dec_hs = rng.standard_normal((N, Td, H))
    call_both(fast, ref, "forward", [enc_hs, dec_hs])
    dout = rng.standard_normal((N, Td, 2 * H))
    dc = dout[:, :, :H]
    (denc_hs, ddec_hs1), (expected_enc, _) = call_both(fast, ref, "backward", [dc])
    dh = rng.standard_normal((N, H))
    denc_hs[:, -1] += dh  # the caller owns the returned gradient
    expected_enc[:, -1] += dh
    np.testing.assert_allclose(denc_hs, expected_enc, **TOLERANCE[np.dtype(np.float64)])
    call_both(fast, ref, "backward", [dc])  # unaffected by the caller's change


#: (dtype of the first argument, dtype of the second, expected compute dtype)
MIXED = {
    "f32+f64": (np.float32, np.float64, np.float64),
    "f64+f32": (np.float64, np.float32, np.float64),
    "f16+f16": (np.float16, np.float16, np.float32),
    "f16+f32": (np.float16, np.float32, np.float32),
    "f16+f64": (np.float16, np.float64, np.float64),
    "big-endian": (np.dtype(">f8"), np.dtype(">f4"), np.float64),
}


@pytest.mark.parametrize("first, second, expected", MIXED.values(), ids=MIXED.keys())
@kinds
def test_mixed_dtypes(rng, kind, first, second, expected):
    """The compute dtype is the reference's: float32/float64 as given (their common dtype),
    float32 for anything else. The gradient may come in another float dtype."""
    fast, ref = build(kind)
    (x, y), grad = make_args(rng, kind, 3, 5, 2, 4, np.float64)
    out, grads = run_both(fast, ref, [x.astype(first), y.astype(second)], grad.astype(second))
    assert out.dtype == expected and all(g.dtype == expected for g in grads)


# --------------------------------------------------------------------------------------
# The API contract
# --------------------------------------------------------------------------------------


@dtypes
@kinds
def test_repeated_backward(rng, kind, dtype):
    """backward may run again for the same forward: with the same gradient it gives the
    same result, with another one the reference's."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 6, 4, 5, dtype)
    _, first = run_both(fast, ref, forward_args, grad)
    second, _ = call_both(fast, ref, "backward", [grad])
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.may_share_memory(a, b)
    call_both(fast, ref, "backward", [make_args(rng, kind, 3, 6, 4, 5, dtype)[1]])


@kinds
def test_outputs_are_fresh(rng, kind):
    """Every call returns new arrays: modifying one changes nothing else, and outputs of
    earlier calls keep their values (workspaces are never handed out)."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 6, 4, 5, np.float64)
    out1, grads1 = run_both(fast, ref, forward_args, grad)
    kept = [a.copy() for a in [out1, *grads1]]
    other_args, other_grad = make_args(rng, kind, 3, 6, 4, 5, np.float64)
    out2, grads2 = run_both(fast, ref, other_args, other_grad)
    for old, new in zip([out1, *grads1], [out2, *grads2], strict=True):
        assert not np.may_share_memory(old, new)
    for before, now in zip(kept, [out1, *grads1], strict=True):
        np.testing.assert_array_equal(now, before)
    # The caller may overwrite what it got, the weights included, without changing what
    # backward computes.
    for array in [out2, *grads2, *arrays_in(getattr(fast, "attention_weights", None))]:
        array[...] = 7.0
    if kind == "Attention":
        fast.attention_weight[...] = 7.0
    compare(fast.backward(other_grad), ref.backward(other_grad), "backward after the edits")


def test_attention_weights_as_the_book_keeps_them(rng):
    """``attention_weights``: a list of Td arrays (N, Te), like the reference's, that
    ``np.array`` stacks to (Td, N, Te) as ch08's visualisation does. The list of an earlier
    forward keeps its values."""
    N, Te, Td, H = 2, 5, 3, 4
    fast, ref = build("TimeAttention")
    assert fast.attention_weights is None and fast.params == [] and fast.grads == []
    forward_args, _ = make_args(rng, "TimeAttention", N, Te, Td, H, np.float32)
    call_both(fast, ref, "forward", forward_args)
    weights = fast.attention_weights
    assert isinstance(weights, list) and len(weights) == Td
    assert all(w.shape == (N, Te) and w.dtype == np.float32 for w in weights)
    assert all(w.flags.c_contiguous for w in weights)  # as the book's arrays are
    stacked = np.array(weights)
    assert stacked.shape == (Td, N, Te)
    np.testing.assert_allclose(stacked.sum(axis=2), 1, rtol=1e-6)
    kept = stacked.copy()
    call_both(fast, ref, "forward", make_args(rng, "TimeAttention", N, Te, Td, H, np.float32)[0])
    np.testing.assert_array_equal(np.array(weights), kept)
    assert fast.attention_weights is not weights


def test_attention_weight_of_one_step(rng):
    fast, ref = build("Attention")
    assert fast.attention_weight is None and fast.params == [] and fast.grads == []
    forward_args, _ = make_args(rng, "Attention", 3, 5, 1, 4, np.float32)
    call_both(fast, ref, "forward", forward_args)
    assert fast.attention_weight.shape == (3, 5)


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_per_step_layers_have_no_params(kind):
    layer = getattr(attention_layers, kind)()
    assert layer.params == [] and layer.grads == []


@kinds
def test_workspaces_are_reused(rng, kind):
    """Calls at one shape, with inputs that need a copy, reuse the same scratch buffers."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 6, 4, 5, np.float64)
    strided = [lay_out(a, "stepped") for a in forward_args]
    run_both(fast, ref, strided, lay_out(grad, "stepped"))
    buffers = {name: b.ctypes.data for name, b in fast._ws._buffers.items()}
    assert buffers  # copies and scratch went through the workspace
    for _ in range(3):
        run_both(fast, ref, strided, lay_out(grad, "stepped"))
        assert {name: b.ctypes.data for name, b in fast._ws._buffers.items()} == buffers


def test_separate_layers_in_threads_give_the_serial_results():
    """Kernels release the GIL; separate layers in threads give bit-for-bit the serial
    results."""

    def job(seed):
        rng = np.random.default_rng(seed)
        results = []
        for kind in KINDS:
            layer = getattr(attention_layers, kind)()
            for _ in range(5):
                forward_args, grad = make_args(rng, kind, 6, 9, 5, 16, np.float32)
                results.append(layer.forward(*forward_args).copy())
                results += [g.copy() for g in layer.backward(grad)]
        return results

    assert_threads_give_serial_results(job, range(4))


# --------------------------------------------------------------------------------------
# NaN and inf
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "second", "gradient"])
@dtypes
@kinds
def test_nan_and_inf_propagate_as_in_the_reference(rng, kind, dtype, where, value):
    """A NaN or an inf in any input or gradient lands at exactly the reference's positions
    (a softmax row with one becomes all NaN), and other samples stay finite."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 5, 4, 6, dtype)
    target = grad if where == "gradient" else forward_args[0 if where == "first" else 1]
    target[(1,) + (0,) * (target.ndim - 1)] = value  # sample 1 only
    out, grads = run_both(fast, ref, forward_args, grad)
    specials = sum(np.count_nonzero(~np.isfinite(a)) for a in [out, *grads])
    assert specials, "nothing non-finite came out"
    for a in [out, *grads]:
        assert np.isfinite(a[[0, 2]]).all()


#: Input scales whose scores are far beyond exp's range (the softmax is one-hot) while no
#: single product overflows.
HUGE = {np.float32: 1e15, np.float64: 1e150}


@dtypes
@kinds
def test_huge_inputs(rng, kind, dtype):
    """Huge scores give the reference's one-hot weights and gradients."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 5, 4, 6, dtype)
    run_both(fast, ref, [HUGE[dtype] * a for a in forward_args], grad)


@pytest.mark.parametrize("kind", ["TimeAttention", "WeightSum"])
def test_overflowing_products(rng, kind):
    """Products that overflow float32: the results are non-finite where the reference's
    are. Where NumPy's sum meets an overflowed product of the other sign it gives NaN; the
    kernels' fused multiply-add (``contract``) adds the exact product, so that the result
    there may be inf instead of NaN."""
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, 3, 5, 4, 6, np.float32)
    forward_args = [np.float32(1e30) * a for a in forward_args]
    with np.errstate(all="ignore"):
        expected = [ref.forward(*forward_args), *ref.backward(grad)]
    got = [fast.forward(*forward_args), *fast.backward(grad)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(e))
        finite = np.isfinite(e)
        np.testing.assert_allclose(g[finite], e[finite], **TOLERANCE[np.dtype(np.float32)])
    assert not all(np.isfinite(e).all() for e in expected)


# --------------------------------------------------------------------------------------
# Random shapes, dtypes and layouts
# --------------------------------------------------------------------------------------

PROPERTY_LAYOUTS = ("C", "fortran", "stepped", "reversed", "concatenated")


def _lay_out_any(array, layout):
    return array if layout == "C" else lay_out(array, layout)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(KINDS),
    dims=st.tuples(st.integers(0, 4), st.integers(1, 10), st.integers(0, 6), st.integers(0, 12)),
    dtypes_=st.tuples(*[st.sampled_from([np.float16, np.float32, np.float64])] * 3),
    layouts=st.tuples(*[st.sampled_from(PROPERTY_LAYOUTS)] * 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_dtypes_and_layouts(kind, dims, dtypes_, layouts, seed):
    rng = np.random.default_rng(seed)
    fast, ref = build(kind)
    forward_args, grad = make_args(rng, kind, *dims, np.float64)
    arrays = [
        _lay_out_any(a.astype(d), layout)
        for a, d, layout in zip([*forward_args, grad], dtypes_, layouts, strict=True)
    ]
    for call in range(2):  # a second forward reuses the workspaces
        run_both(fast, ref, arrays[:2], arrays[2], label=f"call {call}: ")


# --------------------------------------------------------------------------------------
# Misuse: a table in the style of test_misuse.py
# --------------------------------------------------------------------------------------

N, TE, TD, H = 2, 5, 3, 4


@pytest.fixture
def kernel_spy(monkeypatch):
    return KernelSpy().install(monkeypatch, kernels_module, KERNEL_NAMES)


class Pair:
    """A fast and a reference attention layer of one kind, driven in lockstep."""

    def __init__(self, kind, dtype, spy, seed=20261128):
        self.kind = kind
        self.dtype = np.dtype(dtype)
        self.spy = spy
        self.rng = np.random.default_rng(seed)
        self.fast, self.ref = build(kind)
        self.last_forward = None  # (N, Te, Td, H) of the last forward both layers accepted

    def data(self, *shape, dtype=None):
        return self.rng.standard_normal(shape).astype(dtype or self.dtype)

    def forward_args(self, n=N, te=TE, td=TD, h=H):
        forward_shapes, _ = shapes_of(self.kind, n, te, td, h)
        return [self.data(*s) for s in forward_shapes]

    def grad_shape(self, dims=None):
        return shapes_of(self.kind, *(dims or self.last_forward))[1]

    def backward_args(self):
        return [self.data(*self.grad_shape())]

    def state(self, layer):
        """Everything a call may change that the caller can see."""
        return [
            (attr, getattr(layer, attr))
            for attr in ("attention_weights", "attention_weight")
            if hasattr(layer, attr)
        ]

    def same(self, method, *args):
        """Call ``method`` on both layers; outputs and attention weights must agree."""
        calls = self.spy.calls
        call_both(self.fast, self.ref, method, list(args), f"{self.kind}: ")
        if method == "forward":
            hs, second = args
            td = second.shape[1] if self.kind == "TimeAttention" else 1
            self.last_forward = (hs.shape[0], hs.shape[1], td, hs.shape[2])
        if method in ("forward", "backward"):
            assert self.spy.calls > calls, "the kernel spy saw no kernel call"

    def raises(self, exc_type, needles, method, *args):
        """``method`` must raise exactly ``exc_type`` naming ``needles``, changing nothing."""
        before = [(label, value, copy_arg(value)) for label, value in self.state(self.fast)]
        calls = self.spy.calls
        with pytest.raises(exc_type) as info:
            getattr(self.fast, method)(*args)
        error = info.value
        assert type(error) is exc_type, f"{type(error).__module__}.{type(error).__name__}"
        message = str(error)
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"
        assert self.spy.calls == calls, "a kernel ran before the error was raised"
        for (label, value, copied), (_, now) in zip(before, self.state(self.fast), strict=True):
            unchanged = now is value and same_value(now, copied)
            assert unchanged, f"{label} changed by a call that raised"
        return error

    def recover(self):
        """A correct backward of the last accepted forward, then a new forward and
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


def case(*case_kinds):
    def register(run):
        assert run.__name__ not in CASES
        CASES[run.__name__] = Case(run.__name__, case_kinds or KINDS, run)
        return run

    return register


def first_name(p):
    return FORWARD_NAMES[p.kind][0]


def second_name(p):
    return FORWARD_NAMES[p.kind][1]


def with_arg(p, index, value):
    args = p.forward_args()
    args[index] = value
    return args


# ---- the first argument (encoder states) ----------------------------------------------


@case()
def first_rank2(p):
    p.raises(
        ValueError, [first_name(p), "(2, 5)", "(N, "], "forward", *with_arg(p, 0, p.data(N, TE))
    )


@case()
def first_rank4(p):
    bad = p.data(N, TE, H, 1)
    p.raises(ValueError, [first_name(p), "(2, 5, 4, 1)"], "forward", *with_arg(p, 0, bad))


@case()
def first_scalar(p):
    bad = np.array(1.0, dtype=p.dtype)
    p.raises(ValueError, [first_name(p), "()"], "forward", *with_arg(p, 0, bad))


@case()
def first_bad_types(p):
    for bad, needle in [
        (p.data(N, TE, H) + 1j, "complex"),
        (np.ones((N, TE, H), dtype=np.int64), "int64"),
        (p.data(N, TE, H) > 0, "bool"),
        (p.data(N, TE, H).astype(object), "object"),
        (np.full((N, TE, H), "a"), "<U1"),
        (p.data(N, TE, H).tolist(), "list"),
        (None, "NoneType"),
    ]:
        p.raises(TypeError, [first_name(p), needle], "forward", *with_arg(p, 0, bad))


@case(*SOFTMAX_KINDS)
def no_encoder_steps(p):
    steps = "Te" if p.kind == "TimeAttention" else "T"
    bad = p.forward_args(te=0)
    p.raises(ValueError, [first_name(p), f"{steps} >= 1", "(2, 0, 4)"], "forward", *bad)


# ---- the second argument (decoder states, weights) -----------------------------------


@case()
def second_other_batch(p):
    bad = p.forward_args(n=N + 1)[1]
    needles = [second_name(p), f"N={N}", str(bad.shape), str((N, TE, H))]
    p.raises(ValueError, needles, "forward", *with_arg(p, 1, bad))


@case(*SOFTMAX_KINDS)
def second_other_hidden_size(p):
    bad = p.forward_args(h=H + 1)[1]
    needles = [second_name(p), f"H={H}", str(bad.shape), str((N, TE, H))]
    p.raises(ValueError, needles, "forward", *with_arg(p, 1, bad))


@case("WeightSum")
def weights_other_length(p):
    bad = p.data(N, TE + 1)
    p.raises(ValueError, ["a", f"T={TE}", str(bad.shape)], "forward", *with_arg(p, 1, bad))


@case()
def second_wrong_rank(p):
    bad = p.data(N, TD, H, 1) if p.kind == "TimeAttention" else p.data(N)
    p.raises(ValueError, [second_name(p), str(bad.shape)], "forward", *with_arg(p, 1, bad))


@case("TimeAttention")
def decoder_states_of_one_step(p):
    # The book's per-step h (N, H) handed to TimeAttention, which wants (N, Td, H).
    bad = p.data(N, H)
    p.raises(ValueError, ["hs_dec", "(2, 4)", "Td"], "forward", *with_arg(p, 1, bad))


@case()
def second_bad_types(p):
    good = p.forward_args()[1]
    for bad, needle in [
        (good.astype(np.int32), "int32"),
        (good + 1j, "complex"),
        (good > 0, "bool"),
        (good.tolist(), "list"),
        (None, "NoneType"),
    ]:
        p.raises(TypeError, [second_name(p), needle], "forward", *with_arg(p, 1, bad))


@case()
def failed_forward_keeps_the_last_forward(p):
    p.same("forward", *p.forward_args(n=N + 1))
    p.raises(ValueError, [first_name(p)], "forward", *with_arg(p, 0, p.data(N, TE)))
    p.same("backward", *p.backward_args())  # backpropagates the N + 1 forward


# ---- inputs that are fine --------------------------------------------------------------


@case()
def other_float_dtypes(p):
    other = other_float(p.dtype)
    first, second = p.forward_args()
    p.same("forward", first.astype(other), second)
    p.same("backward", *p.backward_args())
    p.same("forward", first.astype(np.float16), second.astype(np.float16))
    p.same("backward", *p.backward_args())


@case()
def strided_views(p):
    first, second = p.forward_args()
    p.same("forward", first[::-1, ::-1], np.asfortranarray(second))
    p.same("backward", lay_out(p.backward_args()[0], "stepped"))


@case()
def nan_and_inf(p):
    first, second = p.forward_args()
    first[0, 1, 2] = np.nan
    second[(1,) + (0,) * (second.ndim - 1)] = np.inf
    p.same("forward", first, second)
    grad = p.backward_args()[0]
    grad[(0,) * grad.ndim] = -np.inf
    p.same("backward", grad)


@case()
def zero_batch(p):
    p.same("forward", *p.forward_args(n=0))
    p.same("backward", *p.backward_args())


@case("TimeAttention")
def zero_decoder_steps(p):
    p.same("forward", *p.forward_args(td=0))
    p.same("backward", *p.backward_args())
    assert p.fast.attention_weights == []


@case(*SOFTMAX_KINDS)
def zero_hidden_size(p):
    p.same("forward", *p.forward_args(h=0))  # every score 0: uniform weights
    p.same("backward", *p.backward_args())


@case()
def batch_size_changes(p):
    for n in (N, N + 3, 1, N):
        p.same("forward", *p.forward_args(n=n))
        p.same("backward", *p.backward_args())


# ---- backward misuse ------------------------------------------------------------------


@case()
def backward_before_forward(p):
    grad = p.data(*p.grad_shape((N, TE, TD, H)))
    p.raises(ValueError, ["backward", "forward"], "backward", grad)


@case()
def backward_twice(p):
    p.same("forward", *p.forward_args())
    grad = p.backward_args()
    p.same("backward", *grad)
    p.same("backward", *grad)


@case()
def grad_wrong_shape(p):
    p.same("forward", *p.forward_args())
    good = p.grad_shape()
    bad = good[:-1] + (good[-1] + 1,)
    needles = [GRAD_NAME[p.kind], str(bad), str(good), "last forward"]
    p.raises(ValueError, needles, "backward", p.data(*bad))
    p.same("backward", *p.backward_args())  # the saved forward survived the error


@case()
def grad_wrong_rank(p):
    p.same("forward", *p.forward_args())
    good = p.grad_shape()
    bad = good + (1,)
    p.raises(ValueError, [GRAD_NAME[p.kind], str(bad), str(good)], "backward", p.data(*bad))


@case()
def grad_of_an_older_forward(p):
    p.same("forward", *p.forward_args(n=N))
    p.same("forward", *p.forward_args(n=N + 1))
    old = p.grad_shape((N, TE, TD, H))
    needles = [GRAD_NAME[p.kind], str(old), str(p.grad_shape())]
    p.raises(ValueError, needles, "backward", p.data(*old))
    p.same("backward", *p.backward_args())


@case()
def grad_bad_types(p):
    p.same("forward", *p.forward_args())
    good = p.backward_args()[0]
    for bad, needle in [
        (good.astype(np.int64), "int64"),
        (good + 1j, "complex"),
        (good.tolist(), "list"),
        (None, "NoneType"),
    ]:
        p.raises(TypeError, [GRAD_NAME[p.kind], needle], "backward", bad)
    p.same("backward", good)


@case()
def grad_other_float_dtype_and_strides(p):
    p.same("forward", *p.forward_args())
    p.same("backward", p.backward_args()[0].astype(other_float(p.dtype)))
    p.same("backward", lay_out(p.backward_args()[0], "concatenated"))
    p.same("backward", lay_out(p.backward_args()[0], "read-only"))


# --------------------------------------------------------------------------------------


def _table():
    return [
        pytest.param(c.name, kind, id=f"{c.name}-{kind}")
        for c in CASES.values()
        for kind in c.kinds
    ]


def test_table_covers_every_layer():
    assert len(CASES) >= 25
    assert {kind for c in CASES.values() for kind in c.kinds} == set(KINDS)


@dtypes
@pytest.mark.parametrize(("name", "kind"), _table())
def test_misuse(name, kind, dtype, kernel_spy):
    pair = Pair(kind, dtype, kernel_spy)
    CASES[name].run(pair)
    pair.recover()
