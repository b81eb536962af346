"""The oracle's sequence layers: embedding, affine, losses, dropout and attention.

The rest of the book's time-layer set in :mod:`fastrnn.reference`, checked like the
recurrent layers in ``test_reference.py``: backward passes by central differences
(float64), forward passes against the book's formulas written out by hand or with einsum,
and dtype handling.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from test_reference import assert_fd, numerical_grad

from fastrnn import reference as ref


@pytest.fixture
def global_seed():
    """Seed NumPy's global random state (which TimeDropout draws from, as the book does)
    and restore it afterwards, so that other tests do not see the seeded stream."""
    saved = np.random.get_state()
    yield np.random.seed
    np.random.set_state(saved)


def _softmax_last(x):
    """Softmax over the last axis, straight from the definition (inputs of order one)."""
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------
# softmax and the Softmax layer
# --------------------------------------------------------------------------------------


def test_softmax_is_the_definition_and_does_not_overflow(rng):
    """softmax(x) = exp(x) / sum(exp(x)) per row; large scores do not overflow."""
    x = rng.standard_normal((3, 5))
    np.testing.assert_allclose(ref.softmax(x), _softmax_last(x), rtol=1e-14)
    np.testing.assert_allclose(ref.softmax(x[0]), _softmax_last(x[0]), rtol=1e-14)
    big = np.array([[1000.0, 1000.0, 0.0]])
    np.testing.assert_allclose(ref.softmax(big), [[0.5, 0.5, 0.0]], rtol=1e-15, atol=0)


def test_softmax_layer_gradient_matches_finite_differences(rng):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((3, 4))
    layer = ref.Softmax()

    def loss():
        return np.sum(layer.forward(x) * w)

    loss()
    assert_fd(layer.backward(w), loss, x, "dx")


# --------------------------------------------------------------------------------------
# Embedding, TimeEmbedding
# --------------------------------------------------------------------------------------


def test_embedding_step_adds_repeated_ids_and_resets(rng):
    """Embedding: forward is W[idx]; backward scatter-adds (a repeated id sums its rows)
    into a zeroed grads[0], so a second backward does not accumulate onto the first."""
    W = rng.standard_normal((5, 3))
    idx = np.array([1, 3, 1, 1])
    layer = ref.Embedding(W)
    np.testing.assert_array_equal(layer.forward(idx), W[idx])
    dout = rng.standard_normal((4, 3))
    assert layer.backward(rng.standard_normal((4, 3))) is None
    assert layer.backward(dout) is None
    expected = np.zeros_like(W)
    expected[1] = dout[0] + dout[2] + dout[3]
    expected[3] = dout[1]
    np.testing.assert_allclose(layer.grads[0], expected, rtol=1e-15)


@pytest.mark.parametrize("shape", [(2, 4, 5, 3), (1, 1, 1, 1)], ids=["N2-T4-V5-D3", "all1"])
def test_time_embedding_gradient_matches_finite_differences(rng, shape):
    """TimeEmbedding with repeated ids (across the batch and across time): the gradient of
    W adds up every position that looked the id up."""
    N, T, V, D = shape
    W = rng.standard_normal((V, D))
    xs = np.array([[0, 2, 0, 4], [2, 2, 1, 0]])[:N, :T] % V
    w = rng.standard_normal((N, T, D))
    layer = ref.TimeEmbedding(W)

    def loss():
        return np.sum(layer.forward(xs) * w)

    loss()
    assert layer.backward(w) is None
    grad = layer.grads[0].copy()
    assert_fd(grad, loss, W, "dW")
    expected = np.zeros_like(W)
    for n, t in np.ndindex(N, T):
        expected[xs[n, t]] += w[n, t]
    np.testing.assert_allclose(grad, expected, rtol=1e-14)


def test_time_embedding_forward_is_w_rows_one_layer_per_step(rng):
    """out[n, t] = W[xs[n, t]], one Embedding per step sharing W; params/grads/W."""
    W = rng.standard_normal((6, 2)).astype(np.float32)
    xs = rng.integers(0, 6, size=(3, 4))
    xs_copy = xs.copy()
    layer = ref.TimeEmbedding(W)
    out = layer.forward(xs)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, W[xs])
    np.testing.assert_array_equal(xs, xs_copy)
    assert len(layer.layers) == 4
    assert all(isinstance(e, ref.Embedding) and e.params[0] is W for e in layer.layers)
    assert layer.params[0] is W and layer.W is W
    layer.backward(np.ones((3, 4, 2)))
    assert layer.grads[0].dtype == np.float32
    np.testing.assert_array_equal(layer.grads[0][:, 0], np.bincount(xs.ravel(), minlength=6))


# --------------------------------------------------------------------------------------
# TimeAffine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True], ids=["W", "W-is-E.T"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1)], ids=["N2-T3-D4-M5", "all1"])
def test_time_affine_gradients_match_finite_differences(rng, shape, tied):
    """dx, dW, db match central differences; with W a transposed view (weight tying) W is
    kept as given and grads[0] has its (Fortran) layout."""
    N, T, D, M = shape
    E = rng.standard_normal((M, D))
    W = E.T if tied else E.T.copy()
    b = rng.standard_normal(M)
    x = rng.standard_normal((N, T, D))
    w = rng.standard_normal((N, T, M))
    layer = ref.TimeAffine(W, b)
    assert layer.params[0] is W
    if tied:
        assert layer.grads[0].flags.f_contiguous
        assert layer.grads[0].flags.c_contiguous == (min(D, M) == 1)

    def loss():
        return np.sum(layer.forward(x) * w)

    loss()
    dx = layer.backward(w)
    grads = [g.copy() for g in layer.grads]
    assert_fd(dx, loss, x, "dx")
    assert_fd(grads[0], loss, W, "dW")
    assert_fd(grads[1], loss, b, "db")


def test_time_affine_forward_is_the_formula(rng):
    """out = x @ W + b per step (einsum), backward written out likewise."""
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    x, dout = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 4))
    layer = ref.TimeAffine(W, b)
    np.testing.assert_allclose(layer.forward(x), np.einsum("ntd,dm->ntm", x, W) + b, rtol=1e-13)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, np.einsum("ntm,dm->ntd", dout, W), rtol=1e-13)
    np.testing.assert_allclose(layer.grads[0], np.einsum("ntd,ntm->dm", x, dout), rtol=1e-13)
    np.testing.assert_allclose(layer.grads[1], dout.sum(axis=(0, 1)), rtol=1e-13)


# --------------------------------------------------------------------------------------
# TimeSoftmaxWithLoss
# --------------------------------------------------------------------------------------


def _softmax_loss_by_hand(xs, ts, ignore=-1):
    """-mean of log softmax(xs[n, t])[ts[n, t]] over the positions not ignored."""
    losses = [
        -math.log(_softmax_last(xs[n, t])[ts[n, t]])
        for n, t in np.ndindex(*ts.shape)
        if ts[n, t] != ignore
    ]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("dout", [1, 0.7])
@pytest.mark.parametrize("ignored", [False, True], ids=["all-used", "some-ignored"])
def test_time_softmax_with_loss_gradient_matches_finite_differences(rng, ignored, dout):
    N, T, V = 2, 3, 4
    xs = rng.standard_normal((N, T, V))
    ts = rng.integers(0, V, size=(N, T))
    if ignored:
        ts[0, 1] = ts[1, 2] = -1
    layer = ref.TimeSoftmaxWithLoss()

    def loss():
        return dout * layer.forward(xs, ts)

    loss()
    dxs = layer.backward(dout)
    assert dxs.shape == (N, T, V)
    if ignored:
        assert not dxs[0, 1].any() and not dxs[1, 2].any()
        dxs_used = np.delete(dxs.reshape(N * T, V), [1, 5], axis=0)
        assert np.all(dxs_used != 0)
    assert_fd(dxs, loss, xs, "dxs")


def test_time_softmax_with_loss_forward_by_hand(rng):
    """The loss is the mean of -log softmax over unignored positions, a Python float;
    softmax - onehot over the count of used positions is the gradient."""
    N, T, V = 2, 3, 5
    xs = rng.standard_normal((N, T, V))
    ts = rng.integers(0, V, size=(N, T))
    ts[1, 0] = -1
    layer = ref.TimeSoftmaxWithLoss()
    loss = layer.forward(xs, ts)
    assert type(loss) is float
    assert loss == pytest.approx(_softmax_loss_by_hand(xs, ts), rel=1e-14)
    expected = _softmax_last(xs)
    for n, t in np.ndindex(N, T):
        expected[n, t, ts[n, t]] -= 1
    expected /= 5
    expected[1, 0] = 0
    np.testing.assert_allclose(layer.backward(), expected, rtol=1e-13, atol=1e-16)


def test_time_softmax_with_loss_scalar_by_hand():
    """V = 2, N = T = 1, round numbers: loss = log(1 + e^(x0 - x1)) for target 1."""
    layer = ref.TimeSoftmaxWithLoss()
    loss = layer.forward(np.array([[[0.5, 2.0]]]), np.array([[1]]))
    assert loss == pytest.approx(math.log(1 + math.exp(-1.5)), rel=1e-15)
    p1 = 1 / (1 + math.exp(-1.5))
    np.testing.assert_allclose(layer.backward(2.0).ravel(), [2 * (1 - p1), 2 * (p1 - 1)])


def test_time_softmax_with_loss_one_hot_targets_equal_ids(rng):
    """One-hot (N, T, V) targets are argmax'ed: same loss and gradient as the ids."""
    N, T, V = 3, 2, 4
    xs = rng.standard_normal((N, T, V))
    ts = rng.integers(0, V, size=(N, T))
    one_hot = np.eye(V, dtype=np.int64)[ts]
    by_id, by_one_hot = ref.TimeSoftmaxWithLoss(), ref.TimeSoftmaxWithLoss()
    assert by_one_hot.forward(xs, one_hot) == by_id.forward(xs, ts)
    np.testing.assert_array_equal(by_one_hot.backward(), by_id.backward())


def test_time_softmax_with_loss_ignored_positions_do_not_count(rng):
    """Scores at ignored positions change neither the loss nor any gradient, even scores
    whose softmax underflows to 0 where the book would index (ignore_label = -1 is the
    last column) and compute -inf * 0 = nan."""
    N, T, V = 2, 2, 3
    xs = rng.standard_normal((N, T, V))
    ts = np.array([[0, -1], [2, 1]])
    layer = ref.TimeSoftmaxWithLoss()
    loss = layer.forward(xs, ts)
    dxs = layer.backward()
    other = xs.copy()
    other[0, 1] = [800.0, 0.0, -800.0]
    assert layer.forward(other, ts) == loss
    np.testing.assert_array_equal(layer.backward(), dxs)
    used = ref.TimeSoftmaxWithLoss().forward(xs[[0, 1, 1], [0, 0, 1]][None], [[0, 2, 1]])
    assert loss == pytest.approx(used, rel=1e-15)


def test_time_softmax_with_loss_all_ignored_is_nan_without_warning(rng):
    """Every position ignored: loss nan, gradient all zeros, and NumPy stays silent."""
    xs = rng.standard_normal((2, 3, 4))
    layer = ref.TimeSoftmaxWithLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = layer.forward(xs, np.full((2, 3), -1))
        dxs = layer.backward()
    assert type(loss) is float and math.isnan(loss)
    assert dxs.shape == (2, 3, 4) and dxs.dtype == np.float64
    assert not dxs.any()


def test_time_softmax_with_loss_backward_twice_and_inputs_untouched(rng):
    """backward leaves the forward cache alone: a second call gives the same gradient
    (the book's would not); xs and ts are not modified."""
    xs = rng.standard_normal((2, 3, 4))
    ts = rng.integers(0, 4, size=(2, 3))
    ts[0, 0] = -1
    xs_copy, ts_copy = xs.copy(), ts.copy()
    layer = ref.TimeSoftmaxWithLoss()
    layer.forward(xs, ts)
    first = layer.backward()
    np.testing.assert_array_equal(layer.backward(), first)
    np.testing.assert_array_equal(layer.backward(0.5), 0.5 * first)
    np.testing.assert_array_equal(xs, xs_copy)
    np.testing.assert_array_equal(ts, ts_copy)


# --------------------------------------------------------------------------------------
# SigmoidWithLoss, TimeSigmoidWithLoss
# --------------------------------------------------------------------------------------

#: The book's ``+ 1e-7`` inside the log puts the analytic gradient ``(y - t) / N`` off the
#: true one by a relative ``~1e-7 / p`` (``p`` the probability of the label): keep ``p``
#: away from 0 (scores of order one) and allow for it.
SIGMOID_FD_TOL = dict(rtol=1e-5, atol=1e-8)


def test_sigmoid_with_loss_step_by_hand(rng):
    """Single step: loss = -mean(log(p + 1e-7)), p = y or 1 - y by label; dx = (y - t)/N."""
    x = rng.standard_normal(5)
    t = np.array([1, 0, 0, 1, 1])
    layer = ref.SigmoidWithLoss()
    loss = layer.forward(x, t)
    y = _sig(x)
    p = np.where(t == 1, y, 1 - y)
    assert type(loss) is float
    assert loss == pytest.approx(-np.sum(np.log(p + 1e-7)) / 5, rel=1e-14)
    np.testing.assert_allclose(layer.backward(3.0), (y - t) * 3.0 / 5, rtol=1e-14)


def test_time_sigmoid_with_loss_scalar_by_hand():
    """N = 1, T = 2, round numbers, with math: the book's 1e-7 is there."""
    layer = ref.TimeSigmoidWithLoss()
    loss = layer.forward(np.array([[0.0, 2.0]]), np.array([[1, 0]]))
    y2 = 1 / (1 + math.exp(-2.0))
    expected = (-math.log(0.5 + 1e-7) - math.log(1 - y2 + 1e-7)) / 2
    assert loss == pytest.approx(expected, rel=1e-15)
    np.testing.assert_allclose(layer.backward().ravel(), [(0.5 - 1) / 2, y2 / 2], rtol=1e-15)


@pytest.mark.parametrize("dout", [1, 0.5])
@pytest.mark.parametrize("shape", [(3, 4), (1, 1)], ids=["N3-T4", "all1"])
def test_time_sigmoid_with_loss_gradient(rng, shape, dout):
    """dxs = (sigmoid(xs) - ts) * dout / (T * N), the loss is the mean of the steps'
    losses, and the gradient matches central differences (up to the book's 1e-7)."""
    N, T = shape
    xs = rng.uniform(-2, 2, size=(N, T))
    ts = rng.integers(0, 2, size=(N, T))
    layer = ref.TimeSigmoidWithLoss()

    def loss():
        return dout * layer.forward(xs, ts)

    value = layer.forward(xs, ts)
    steps = [ref.SigmoidWithLoss().forward(xs[:, t], ts[:, t]) for t in range(T)]
    assert value == pytest.approx(sum(steps) / T, rel=1e-15)
    dxs = layer.backward(dout)
    np.testing.assert_allclose(dxs, (_sig(xs) - ts) * dout / (T * N), rtol=1e-14)
    np.testing.assert_allclose(dxs, numerical_grad(loss, xs), **SIGMOID_FD_TOL)


# --------------------------------------------------------------------------------------
# TimeDropout
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 0.3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_time_dropout_mask_is_the_books_seeded_draw(global_seed, rng, dtype, ratio):
    """After the same np.random.seed the mask is (np.random.rand(...) > ratio) scaled by
    1 / (1 - ratio) in the input's dtype; forward is xs * mask, backward dout * mask."""
    xs = rng.standard_normal((2, 3, 4)).astype(dtype)
    xs_copy = xs.copy()
    layer = ref.TimeDropout(ratio)
    global_seed(1234)
    out = layer.forward(xs)
    global_seed(1234)
    flg = np.random.rand(2, 3, 4) > ratio
    expected_mask = flg.astype(dtype) * (1 / (1.0 - ratio))
    assert layer.mask.dtype == dtype and out.dtype == dtype
    np.testing.assert_array_equal(layer.mask, expected_mask)
    np.testing.assert_array_equal(out, xs * expected_mask)
    np.testing.assert_array_equal(xs, xs_copy)
    dout = rng.standard_normal((2, 3, 4)).astype(dtype)
    dx = layer.backward(dout)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, dout * expected_mask)


def test_time_dropout_float32_mask_is_the_books(global_seed, rng):
    """float32 input: the mask is bit for bit the book's flg.astype(np.float32) * scale."""
    xs = rng.standard_normal((3, 2, 5)).astype(np.float32)
    layer = ref.TimeDropout(0.3)
    global_seed(7)
    layer.forward(xs)
    global_seed(7)
    book_mask = (np.random.rand(3, 2, 5) > 0.3).astype(np.float32) * (1 / (1.0 - 0.3))
    assert book_mask.dtype == np.float32
    np.testing.assert_array_equal(layer.mask, book_mask)


def test_time_dropout_not_training_is_the_identity(global_seed, rng):
    """train_flg False: xs comes back as is, no random number is drawn, mask unchanged."""
    xs = rng.standard_normal((2, 3, 4))
    layer = ref.TimeDropout()
    assert layer.train_flg is True and layer.params == [] and layer.grads == []
    global_seed(3)
    layer.forward(xs)
    mask = layer.mask
    layer.train_flg = False
    state = np.random.get_state()[1].copy()
    assert layer.forward(xs) is xs
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert layer.mask is mask


def test_time_dropout_non_float_input_computes_in_float32(global_seed):
    """Integer input: the mask and output are float32."""
    layer = ref.TimeDropout(0.5)
    global_seed(0)
    out = layer.forward(np.ones((2, 3), dtype=np.int64))
    assert layer.mask.dtype == np.float32 and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 2.0}


def test_time_dropout_gradient_matches_finite_differences(global_seed, rng):
    """With the mask held fixed (the same seed before every forward) dropout is linear
    in xs, and backward is its gradient."""
    xs = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((2, 3, 4))
    layer = ref.TimeDropout(0.4)

    def loss():
        global_seed(11)
        return np.sum(layer.forward(xs) * w)

    loss()
    assert 0 < np.count_nonzero(layer.mask) < xs.size
    assert_fd(layer.backward(w), loss, xs, "dxs")


# --------------------------------------------------------------------------------------
# Attention: WeightSum, AttentionWeight, Attention, TimeAttention
# --------------------------------------------------------------------------------------

ATTENTION_SHAPES = {"N2-T3-H4": (2, 3, 4), "all1": (1, 1, 1), "N3-T5-H2": (3, 5, 2)}


@pytest.mark.parametrize("shape", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_weight_sum(rng, shape):
    """c = sum_t a[:, t] hs[:, t] (einsum); dhs, da match central differences."""
    N, T, H = shape
    hs = rng.standard_normal((N, T, H))
    a = rng.standard_normal((N, T))
    w = rng.standard_normal((N, H))
    layer = ref.WeightSum()
    np.testing.assert_allclose(layer.forward(hs, a), np.einsum("nth,nt->nh", hs, a), rtol=1e-13)

    def loss():
        return np.sum(layer.forward(hs, a) * w)

    loss()
    dhs, da = layer.backward(w)
    assert_fd(dhs, loss, hs, "dhs")
    assert_fd(da, loss, a, "da")


@pytest.mark.parametrize("shape", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_attention_weight(rng, shape):
    """a = softmax_t(hs[:, t] . h) (einsum), rows sum to 1; dhs, dh match FD."""
    N, T, H = shape
    hs = rng.standard_normal((N, T, H))
    h = rng.standard_normal((N, H))
    w = rng.standard_normal((N, T))
    layer = ref.AttentionWeight()
    a = layer.forward(hs, h)
    np.testing.assert_allclose(a, _softmax_last(np.einsum("nth,nh->nt", hs, h)), rtol=1e-13)
    np.testing.assert_allclose(a.sum(axis=1), 1, rtol=1e-14)

    def loss():
        return np.sum(layer.forward(hs, h) * w)

    loss()
    dhs, dh = layer.backward(w)
    if T == 1:  # a single weight is always 1: nothing depends on hs or h
        assert not dhs.any() and not dh.any()
        return
    assert_fd(dhs, loss, hs, "dhs")
    assert_fd(dh, loss, h, "dh")


@pytest.mark.parametrize("shape", ATTENTION_SHAPES.values(), ids=ATTENTION_SHAPES.keys())
def test_attention(rng, shape):
    """out = sum_t a[:, t] hs[:, t], a the attention weights (kept as attention_weight);
    dhs (through both the weights and the sum) and dh match FD."""
    N, T, H = shape
    hs = rng.standard_normal((N, T, H))
    h = rng.standard_normal((N, H))
    w = rng.standard_normal((N, H))
    layer = ref.Attention()
    out = layer.forward(hs, h)
    a = _softmax_last(np.einsum("nth,nh->nt", hs, h))
    np.testing.assert_allclose(layer.attention_weight, a, rtol=1e-13)
    np.testing.assert_allclose(out, np.einsum("nt,nth->nh", a, hs), rtol=1e-13)

    def loss():
        return np.sum(layer.forward(hs, h) * w)

    loss()
    dhs, dh = layer.backward(w)
    assert_fd(dhs, loss, hs, "dhs")
    if T == 1:
        assert not dh.any()
    else:
        assert_fd(dh, loss, h, "dh")


@pytest.mark.parametrize(
    "shape", [(2, 3, 4, 2), (1, 1, 2, 1), (2, 4, 2, 3)], ids=["N2-Te3-Td4-H2", "Te1", "N2-Te4"]
)
def test_time_attention(rng, shape):
    """out[:, t] attends over all of hs_enc with hs_dec[:, t] (einsum); attention_weights
    holds Td arrays (N, Te) summing to 1; dhs_enc, dhs_dec match FD."""
    N, Te, Td, H = shape
    hs_enc = rng.standard_normal((N, Te, H))
    hs_dec = rng.standard_normal((N, Td, H))
    w = rng.standard_normal((N, Td, H))
    layer = ref.TimeAttention()
    out = layer.forward(hs_enc, hs_dec)
    a = _softmax_last(np.einsum("nsh,nth->nts", hs_enc, hs_dec))
    np.testing.assert_allclose(out, np.einsum("nts,nsh->nth", a, hs_enc), rtol=1e-13)
    assert isinstance(layer.attention_weights, list) and len(layer.attention_weights) == Td
    assert len(layer.layers) == Td
    for t, weights in enumerate(layer.attention_weights):
        assert weights.shape == (N, Te)
        np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-14)
        np.testing.assert_allclose(weights, a[:, t], rtol=1e-13)

    def loss():
        return np.sum(layer.forward(hs_enc, hs_dec) * w)

    loss()
    dhs_enc, dhs_dec = layer.backward(w)
    assert dhs_enc.shape == hs_enc.shape and dhs_dec.shape == hs_dec.shape
    assert_fd(dhs_enc, loss, hs_enc, "dhs_enc")
    if Te == 1:
        assert not dhs_dec.any()
    else:
        assert_fd(dhs_dec, loss, hs_dec, "dhs_dec")


def test_attention_weight_by_hand():
    """N = H = 1, T = 2: a = softmax(hs * h) with math.exp."""
    layer = ref.AttentionWeight()
    a = layer.forward(np.array([[[1.0], [-0.5]]]), np.array([[2.0]]))
    e0, e1 = math.exp(2.0), math.exp(-1.0)
    np.testing.assert_allclose(a.ravel(), [e0 / (e0 + e1), e1 / (e0 + e1)], rtol=1e-15)
    c = ref.WeightSum().forward(np.array([[[1.0], [-0.5]]]), a)
    np.testing.assert_allclose(c.ravel(), [(e0 - 0.5 * e1) / (e0 + e1)], rtol=1e-15)


# --------------------------------------------------------------------------------------
# dtypes, inputs and outputs
# --------------------------------------------------------------------------------------


def _run(name, rng, dtype):
    """Build layer ``name`` from float64 draws cast to ``dtype``; run forward and backward.

    Returns the layer, the inputs, copies of them taken before the call, the forward
    output and every backward output (grads included).
    """
    N, T, D, V = 2, 3, 4, 5
    x, scores = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, V))
    ids = rng.integers(0, V, size=(N, T))
    if name == "TimeEmbedding":
        layer = ref.TimeEmbedding(rng.standard_normal((V, D)).astype(dtype))
        inputs = [ids]
        dout = x.astype(dtype)
    elif name == "TimeAffine":
        layer = ref.TimeAffine(*(rng.standard_normal(s).astype(dtype) for s in [(D, V), (V,)]))
        inputs = [x.astype(dtype)]
        dout = scores.astype(dtype)
    elif name == "TimeSoftmaxWithLoss":
        layer = ref.TimeSoftmaxWithLoss()
        inputs = [scores.astype(dtype), ids]
        dout = 1
    elif name == "TimeSigmoidWithLoss":
        layer = ref.TimeSigmoidWithLoss()
        inputs = [x[..., 0].astype(dtype), ids % 2]
        dout = 1
    elif name == "TimeAttention":
        layer = ref.TimeAttention()
        inputs = [x.astype(dtype), rng.standard_normal((N, 2, D)).astype(dtype)]
        dout = rng.standard_normal((N, 2, D)).astype(dtype)
    elif name in ("Attention", "AttentionWeight", "WeightSum"):
        layer = getattr(ref, name)()
        second = x[:, 0] if name != "WeightSum" else x[..., 0]
        inputs = [x.astype(dtype), second.astype(dtype)]
        out_shape = {"Attention": (N, D), "AttentionWeight": (N, T), "WeightSum": (N, D)}
        dout = rng.standard_normal(out_shape[name]).astype(dtype)
    else:
        raise ValueError(name)
    copies = [np.copy(i) for i in inputs]
    out = layer.forward(*inputs)
    back = layer.backward(dout)
    back = list(back) if isinstance(back, tuple) else [] if back is None else [back]
    return layer, inputs, copies, out, [*back, *layer.grads]


SEQUENCE_LAYERS = [
    "TimeEmbedding",
    "TimeAffine",
    "TimeSoftmaxWithLoss",
    "TimeSigmoidWithLoss",
    "WeightSum",
    "AttentionWeight",
    "Attention",
    "TimeAttention",
]


@pytest.mark.parametrize("name", SEQUENCE_LAYERS)
def test_layers_compute_in_float32(rng, name):
    """float32 params or inputs give float32 outputs and gradients, equal to the float64
    computation (from the same draws) to float32 precision."""
    state = rng.bit_generator.state
    *_, out32, back32 = _run(name, rng, np.float32)
    rng.bit_generator.state = state
    *_, out64, back64 = _run(name, rng, np.float64)
    if isinstance(out32, float):
        assert out32 == pytest.approx(out64, rel=1e-5)
    else:
        assert out32.dtype == np.float32
        np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)
    assert back32, "nothing to compare"
    for g32, g64 in zip(back32, back64, strict=True):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SEQUENCE_LAYERS)
def test_inputs_are_not_modified_and_outputs_are_fresh(rng, name):
    """forward and backward leave the inputs as they were, and forward's output shares no
    memory with the inputs or the parameters."""
    layer, inputs, copies, out, _ = _run(name, rng, np.float64)
    for i, c in zip(inputs, copies, strict=True):
        np.testing.assert_array_equal(i, c)
    if not isinstance(out, float):
        assert not any(np.shares_memory(out, a) for a in [*inputs, *layer.params])
