"""The layer sets train the book's models to the same numbers.

Each model of :mod:`book_models` is trained for :data:`STEPS` steps with the book's
optimizer and clipping, once per layer set, from the same seed: the same initial weights,
the same batches, and (``np.random.seed`` again before training) the same dropout masks,
which the book's ``TimeDropout`` draws from NumPy's global random state. The losses of
every step and the parameters after the last one must agree with the ``reference`` run.
PyTorch's Rnnlm (:mod:`torch_models`) is checked the same way, and a BetterRnnlm without
dropout checks that PyTorch's tied weights train as the book's ``remove_duplicate`` does.

BetterRnnlm is trained at D = H = 128 instead of 650 (the vocabulary stays 10000): at the
book's size its twelve steps take half a minute per layer set. What this file checks is the
models' plumbing (dropout masks, weight tying, the recurrent layers' states across
batches, the layers working together); the layers themselves, at the book's sizes, are
checked against the reference in ``tests/``.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import pytest
from book_models import (
    MODELS,
    BetterRnnlm,
    LayerSetUnavailable,
    Trainer,
    layer_set,
    make_batch,
    remove_duplicate,
)

from fastrnn._cli import limit_blas_threads, seed_for, torch_threads

STEPS = 12

# Tolerances, for float32 after STEPS steps. Measured against the reference, for the
# recurrent and the fastrnn layer sets alike: losses differ by at most 7e-7 (8e-8 relative
# to losses of 2.5 to 9.2), parameters by at most 2e-7 (weights of magnitude <= 1); PyTorch's
# Rnnlm is as close. The bounds below leave 50 to 100 times that, for other BLAS libraries
# and summation orders: SGD at lr = 20 passes a gradient's rounding error on 20-fold, and
# Adam divides each gradient element by its own running size, which magnifies the rounding
# of a gradient that is almost zero. Mistakes land far outside: in BetterRnnlm, an affine
# layer that copies its weight (a dropped tie) moves the weights by 1e-2 after 12 steps,
# other dropout masks by 5e-2. The losses, on random targets, hardly notice (2e-6 and 3e-4):
# the parameters are the sharper check. (The looser rtol 2e-3 / atol 2e-4 would hold too,
# with a thousandfold margin that could hide a small gradient error.)
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # Nothing here is timed: one thread is about as fast at these sizes, and unlike two it
    # does not slow down manyfold when another process keeps a core busy.
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(RuntimeError):  # no threadpoolctl: leave the threads be
            stack.enter_context(limit_blas_threads(1))
        yield


def _layers(variant: str):
    try:
        return layer_set(variant)
    except LayerSetUnavailable as err:
        pytest.skip(str(err))


def _build(name: str, layers):
    if name == "BetterRnnlm":
        return BetterRnnlm(layers, 10000, 128, 128, dropout_ratio=0.5)
    return MODELS[name].build(layers)


@functools.cache
def train(name: str, variant: str) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Losses of STEPS training steps, and the parameters before and after them."""
    np.random.seed(seed_for("equivalence", name))
    model = _build(name, layer_set(variant))
    initial = [p.copy() for p in model.params]
    spec = MODELS[name]
    trainer = Trainer(model, spec.optimizer(), spec.max_grad)
    np.random.seed(seed_for("equivalence dropout", name))  # the same dropout masks
    losses = np.array([trainer.step(*make_batch(name, k)) for k in range(STEPS)])
    return losses, initial, [p.copy() for p in model.params]


@pytest.mark.parametrize("variant", ["recurrent", "fastrnn"])
@pytest.mark.parametrize("model", list(MODELS))
def test_trains_like_reference(model, variant):
    """Same losses at every step and same parameters after STEPS steps as the reference."""
    _layers("reference")
    _layers(variant)
    ref_losses, ref_initial, ref_params = train(model, "reference")
    losses, initial, params = train(model, variant)
    for i, (start, ref_start) in enumerate(zip(initial, ref_initial, strict=True)):
        np.testing.assert_array_equal(start, ref_start, err_msg=f"initial params[{i}]")
    np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    for i, (p, ref) in enumerate(zip(params, ref_params, strict=True)):
        np.testing.assert_allclose(
            p, ref, rtol=PARAM_RTOL, atol=PARAM_ATOL, err_msg=f"{model} params[{i}]"
        )
    # Not vacuous: training moved the weights far beyond the tolerance (by 1e-2 to 0.25).
    moved = max(np.abs(p - p0).max() for p, p0 in zip(ref_params, ref_initial, strict=True))
    assert moved > 100 * PARAM_ATOL


@pytest.mark.parametrize("variant", ["reference", "recurrent", "fastrnn"])
def test_weight_tying_survives_training(variant):
    """BetterRnnlm's output layer keeps seeing the embedding matrix, and remove_duplicate
    merges the two into one parameter."""
    layers = _layers(variant)
    np.random.seed(seed_for("tying", variant))
    model = BetterRnnlm(layers, 300, 32, 32)
    trainer = Trainer(model, MODELS["BetterRnnlm"].optimizer(), 0.25)
    for k in range(2):
        xs, ts = make_batch("BetterRnnlm", k)
        trainer.step(xs % 300, ts % 300)
    embed_W, affine_W = model.embed.params[0], model.affine.params[0]
    assert np.shares_memory(embed_W, affine_W)
    np.testing.assert_array_equal(affine_W, embed_W.T)
    params, _ = remove_duplicate(model.params, model.grads)
    assert len(params) == len(model.params) - 1


def _torch_run(name: str, model, steps: int = STEPS):
    torch = pytest.importorskip("torch")
    import torch_models

    trainer = torch_models.TorchTrainer(
        torch_models.from_book(model), MODELS[name].optimizer().lr, MODELS[name].max_grad
    )
    with torch.random.fork_rng(), torch_threads(1):
        torch.manual_seed(0)
        losses = [
            trainer.step(*torch_models.torch_batch(*make_batch(name, k))) for k in range(steps)
        ]
    return np.array(losses), trainer.model


def test_torch_rnnlm_trains_like_reference():
    """PyTorch's Rnnlm, from the book's initial weights, follows the book's training."""
    _layers("reference")
    ref_losses, _, ref_params = train("Rnnlm", "reference")
    np.random.seed(seed_for("equivalence", "Rnnlm"))
    losses, net = _torch_run("Rnnlm", _build("Rnnlm", layer_set("reference")))
    np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL, atol=LOSS_ATOL)

    import torch_models

    embed_W, Wx, Wh, b, affine_W, affine_b = ref_params
    lstm = net.lstms[0]
    pairs = {
        "embed_W": (net.embed.weight, embed_W),
        "Wx": (lstm.weight_ih_l0.T, torch_models._torch_gates(Wx)),
        "Wh": (lstm.weight_hh_l0.T, torch_models._torch_gates(Wh)),
        "b": (lstm.bias_ih_l0, torch_models._torch_gates(b)),
        "affine_W": (net.affine.weight.T, affine_W),
        "affine_b": (net.affine.bias, affine_b),
    }
    for name, (mine, ref) in pairs.items():
        np.testing.assert_allclose(
            mine.detach().numpy(), ref, rtol=PARAM_RTOL, atol=PARAM_ATOL, err_msg=name
        )


def test_torch_tied_weights_train_like_remove_duplicate():
    """A BetterRnnlm without dropout: PyTorch's tied weights against the book's
    ``TimeAffine(embed_W.T, b)`` and ``remove_duplicate``."""
    layers = _layers("reference")
    spec = MODELS["BetterRnnlm"]

    def build():
        np.random.seed(seed_for("torch tying"))
        return BetterRnnlm(layers, 10000, 64, 64, dropout_ratio=0.0)

    model = build()
    trainer = Trainer(model, spec.optimizer(), spec.max_grad)
    ref_losses = [trainer.step(*make_batch("BetterRnnlm", k)) for k in range(STEPS)]
    losses, net = _torch_run("BetterRnnlm", build())
    np.testing.assert_allclose(losses, ref_losses, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    np.testing.assert_allclose(
        net.embed.weight.detach().numpy(), model.embed.params[0], rtol=PARAM_RTOL, atol=PARAM_ATOL
    )
