"""Whole training steps and text generation of the book's models, per layer set.

The models of :mod:`book_models` (Rnnlm, BetterRnnlm, Seq2seq, PeekySeq2seq,
AttentionSeq2seq) at the book's sizes, on random token ids. Groups: ``"<model> step"``, one
training step (forward, backward, ``remove_duplicate``, ``clip_grads``, optimizer update),
and ``"<model> generate"``, one ``generate`` call. Implementations (``impl``):

* ``reference``: every layer from :mod:`fastrnn.reference` (the book's NumPy layers);
* ``recurrent``: the same, with the recurrent layers from :mod:`fastrnn`;
* ``fastrnn``: every layer from :mod:`fastrnn.time_layers`;
* ``torch-1t``/``torch-2t`` (Rnnlm and BetterRnnlm only): the same architecture in PyTorch
  (:mod:`torch_models`) at 1 and 2 threads.

A layer set that does not exist yet is skipped with the reason; PyTorch is skipped when it
is not installed. ``extra_info`` holds, besides what :func:`conftest.run_benchmark` records
(``kind="model"``, ``impl``, ``blas_threads``, ``foreign_load``): ``model``, ``phase``
(``"step"`` or ``"generate"``), ``sizes``, and for generation ``tokens``, the ids one call
produces (the median per token is ``median / tokens``). A training step changes the model,
so rounds are consecutive steps of one training run. In smoke mode (the default,
``--benchmark-disable``) every case runs once and language models generate only a few ids.

For an interleaved comparison with ratios and a per-layer breakdown, see
``benchmarks/compare_models.py``; ``benchmarks/bench_model_equivalence.py`` checks that the
layer sets train to the same numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from book_models import (
    MODELS,
    VARIANTS,
    LayerSetUnavailable,
    build_model,
    generation_runner,
    layer_set,
    make_batch,
    make_trainer,
)

IMPLEMENTATIONS = [*VARIANTS, "torch-1t", "torch-2t"]
CASES = [
    (model, impl)
    for model, spec in MODELS.items()
    for impl in IMPLEMENTATIONS
    if spec.torch or not impl.startswith("torch-")
]
CASE_IDS = [f"{model}-{impl}" for model, impl in CASES]
#: Ids a language model generates per call in smoke mode (the book's 100 otherwise).
SMOKE_TOKENS = 5


def _layers(variant: str):
    try:
        return layer_set(variant)
    except LayerSetUnavailable as err:
        pytest.skip(str(err))


def _torch_trainer(model: str):
    pytest.importorskip("torch")
    import torch_models

    # The PyTorch model starts from the weights of the book's model built from the same
    # seed (see torch_models.from_book).
    return torch_models, torch_models.make_torch_trainer(
        model, build_model(model, _layers("reference"))
    )


def _record(benchmark, timed, run, impl: str, model: str, phase: str, tokens=None) -> None:
    timed(run, kind="model", impl=impl)
    info = benchmark.extra_info
    info.update(model=model, phase=phase, sizes=MODELS[model].sizes)
    if tokens is not None:
        info["tokens"] = tokens
        if benchmark.stats is not None:
            info["per_token"] = benchmark.stats.stats.median / tokens


@pytest.mark.parametrize(("model", "impl"), CASES, ids=CASE_IDS)
def test_step(benchmark, timed, model, impl):
    """One training step of ``model`` with ``impl``'s layers."""
    benchmark.group = f"{model} step"
    xs, ts = make_batch(model)
    if impl.startswith("torch-"):
        torch_models, trainer = _torch_trainer(model)
        xs, ts = torch_models.torch_batch(xs, ts)
    else:
        trainer = make_trainer(model, _layers(impl))

    losses = []

    def run():
        losses.append(trainer.step(xs, ts))

    _record(benchmark, timed, run, impl, model, "step")
    assert losses and np.isfinite(losses).all()


@pytest.mark.parametrize(("model", "impl"), CASES, ids=CASE_IDS)
def test_generate(benchmark, timed, model, impl):
    """One ``generate`` call: N=1, T=1 per layer call; per token = median / tokens."""
    benchmark.group = f"{model} generate"
    spec = MODELS[model]
    tokens = spec.sample_size
    if not spec.seq2seq and benchmark.disabled:
        tokens = SMOKE_TOKENS
    if impl.startswith("torch-"):
        _, trainer = _torch_trainer(model)
        start_id = int(make_batch(model)[1][0, 0])

        def generate():
            return trainer.generate(start_id, sample_size=tokens + 1)[1:]

    else:
        generate = generation_runner(model, build_model(model, _layers(impl)), tokens)

    produced = []
    _record(benchmark, timed, lambda: produced.append(generate()), impl, model, "generate", tokens)
    assert all(len(ids) == tokens for ids in produced)
