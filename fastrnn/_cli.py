"""The main job: ``python -m fastrnn`` checks fastrnn against the reference and times both.

Commands
--------
``python -m fastrnn`` (or ``python -m fastrnn check``)
    For every layer (TimeRNN, TimeLSTM, TimeGRU, TimeBiLSTM) on the book's shapes, run one
    forward and backward pass of :mod:`fastrnn` and of :mod:`fastrnn.reference` on the same
    seeded data and compare ``hs``, ``dxs`` and every gradient. Then time forward+backward of
    both and print the medians and their ratio. A second table does the same for the other
    time layers (TimeEmbedding, TimeAffine, TimeSoftmaxWithLoss, TimeSigmoidWithLoss,
    TimeDropout, TimeAttention) at the shapes the book's models use them with
    (:data:`TIME_LAYER_CASES`), comparing every output and gradient. The exit status is 1 if
    any check of either table fails. Big shapes get fewer rounds, and the second table fewer
    still, so the whole run, kernel compilation included, takes about a minute on two cores.
``python -m fastrnn bench [--layers ...] [--shapes ...] [--repeat N] [--torch]``
    The same comparison, plus, for the recurrent layers, the GEMM throughput of fastrnn in
    GFLOP/s and its share of the ``?gemm`` peak measured at the start of the same run (a
    2048^3 product through NumPy's BLAS, the library the kernels call), and with ``--torch``
    PyTorch's ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` at 1 and 2 threads. The time-layer
    table has the same columns as in ``check``.

Shapes are written ``NxTxDxH``: batch, time steps, input size, hidden size. The book's shapes
are 10x5x100x100, 20x35x100x100, 20x35x650x650, 128x7x16x128 and 128x29x16x256. ``--shapes``
applies to the recurrent layers; the other time layers always run at their book shapes,
labelled with their own sizes (``V`` vocabulary, ``M`` output size, ``Te``/``Td`` encoder
and decoder steps).

How the numbers are made
------------------------
* Times are medians of rounds of one ``forward(xs)`` plus one ``backward(dhs)`` call on the
  public layer API, with the inputs and upstream gradients prepared beforehand (for the
  loss layers ``backward(N * T)``, see :func:`_loss_dout`; TimeDropout's rounds include
  drawing a new mask from ``np.random``, as the book's layer does). fastrnn's kernels and
  the reference both call NumPy's BLAS (see :mod:`fastrnn._blas`).
* PyTorch has its own thread pool, and OpenBLAS's worker threads keep spinning for about
  0.1 s after their last call (unless ``OPENBLAS_THREAD_TIMEOUT`` shortens that), so the
  first calls after a switch between libraries run slower. Before each series of rounds the
  implementation is therefore warmed up for a quarter of a second (or the process sleeps
  that long when one call takes longer than that); for the time-layer table, where PyTorch
  never runs, a tenth of a second.
* The reference's and fastrnn's rounds are interleaved (:func:`measure_interleaved`), so a
  burst of load from elsewhere slows both alike; PyTorch's rounds follow as a block, as
  its threads would otherwise spin into the next call of the others.
* The ``other load`` column is the number of cores other processes kept busy while a row
  was measured (from ``/proc/stat``, Linux only). Rows above 0.25 are marked ``!``: with a
  multithreaded BLAS, one busy core can make fastrnn (and PyTorch) several times slower,
  because every product waits for its slowest thread.
* Checks compare with ``|fast - ref| <= atol * scale + rtol * |ref|`` elementwise, where
  ``scale = max(1, max|ref|)`` over the array: gradients are sums over ``N*T`` rows, so
  their rounding error grows with their magnitude, not with each element's. float32 uses
  ``rtol=2e-4, atol=2e-5`` (the kernels' tanh approximation is a few ulp off libm's, and BLAS
  sums in another order), float64 ``rtol=1e-9, atol=1e-11``. The ``err/tol`` column is the
  largest ratio of error to allowed error: a check passes when it is at most 1. The time
  layers' checks compare every output, loss and gradient the same way; TimeDropout's masks
  come from ``np.random``, seeded alike (and restored after) for both implementations.
* The GRU is the book's (reset gate applied to ``h`` before the product with ``Whh``);
  PyTorch's ``nn.GRU`` applies it after. Both do the same matrix products, so their times
  are comparable, their outputs are not.
* FLOP counts cover the matrix products only, ``2*m*n*k`` each: the input projection and
  the recurrent products of the forward pass, and ``dWx``, ``dWh``, ``dxs`` and the
  recurrent products of the backward pass: ``6 * T * N * G * H * (D + H)`` for ``G`` gate
  blocks, twice that for the bidirectional LSTM.

Thread control: ``--blas-threads N`` limits both OpenBLAS libraries (and any other BLAS)
through threadpoolctl; the ``OPENBLAS_NUM_THREADS`` environment variable does the same when
set before Python starts. ``--torch-threads`` sets PyTorch's threads per column.

The helpers here (shapes, seeded data, FLOP counts, the BLAS peak, the PyTorch
counterparts, the machine description) are also used by ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

# --------------------------------------------------------------------------------------
# What is measured
# --------------------------------------------------------------------------------------


class Shape(NamedTuple):
    """A problem size: batch ``N``, time steps ``T``, input size ``D``, hidden size ``H``."""

    N: int
    T: int
    D: int
    H: int

    @property
    def label(self) -> str:
        """``"NxTxDxH"``, e.g. ``"20x35x650x650"``."""
        return "x".join(str(v) for v in self)

    @classmethod
    def parse(cls, text: str) -> Shape:
        """Read ``"NxTxDxH"`` (also accepts commas or spaces between the four sizes)."""
        parts = text.replace(",", "x").replace(" ", "x").lower().split("x")
        values = [p for p in parts if p]
        if len(values) != 4 or not all(v.isdigit() and int(v) > 0 for v in values):
            raise ValueError(f"a shape is four positive sizes NxTxDxH, got {text!r}")
        return cls(*(int(v) for v in values))


#: The (N, T, D, H) of the book's examples: the chapter 5/6 toy sizes, the PTB language
#: model (small and large), and the chapter 7 seq2seq addition task (two hidden sizes).
BOOK_SHAPES: tuple[Shape, ...] = (
    Shape(10, 5, 100, 100),
    Shape(20, 35, 100, 100),
    Shape(20, 35, 650, 650),
    Shape(128, 7, 16, 128),
    Shape(128, 29, 16, 256),
)

#: Layer name -> number of gate blocks ``G`` in ``Wx`` (D, G*H).
GATES = {"TimeRNN": 1, "TimeLSTM": 4, "TimeGRU": 3, "TimeBiLSTM": 4}
LAYERS = tuple(GATES)
_LAYER_ALIASES = {
    "rnn": "TimeRNN",
    "lstm": "TimeLSTM",
    "gru": "TimeGRU",
    "bilstm": "TimeBiLSTM",
    **{name.lower(): name for name in LAYERS},
    **{name.lower().removeprefix("time"): name for name in LAYERS},
}

#: (rtol, atol) of the checks, per compute dtype; see the module docstring.
TOLERANCE = {
    np.dtype(np.float32): (2e-4, 2e-5),
    np.dtype(np.float64): (1e-9, 1e-11),
}


def _canonical_name(aliases: dict[str, str], text: str, choices: str) -> str:
    """``aliases[text]``, case and spaces ignored; else a ValueError listing ``choices``."""
    try:
        return aliases[text.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown layer {text!r}; choose from {choices}") from None


def layer_name(text: str) -> str:
    """The canonical layer name for ``text``: ``lstm``, ``TimeLSTM`` -> ``"TimeLSTM"``."""
    return _canonical_name(_LAYER_ALIASES, text, f"rnn, lstm, gru, bilstm (or {', '.join(LAYERS)})")


def output_width(layer: str, H: int) -> int:
    """Width of ``hs``: ``H``, or ``2H`` for the bidirectional LSTM."""
    return 2 * H if layer == "TimeBiLSTM" else H


def seed_for(*keys: object) -> int:
    """A seed that depends only on ``keys`` (stable across runs, unlike ``hash``)."""
    return zlib.crc32("/".join(str(k) for k in keys).encode())


def make_params(layer: str, shape: Shape, dtype, rng: np.random.Generator) -> list[np.ndarray]:
    """Seeded parameters with the book's scaling.

    Returns
    -------
    list of arrays
        ``[Wx (D, G*H), Wh (H, G*H), b (G*H,)]``, twice over (six arrays) for TimeBiLSTM.
        ``Wx`` and ``Wh`` are ``randn / sqrt(fan_in)`` as in the book; ``b`` is small and
        random rather than zero, so that its gradient is checked too.
    """
    G = GATES[layer]
    _, _, D, H = shape
    directions = 2 if layer == "TimeBiLSTM" else 1
    params = []
    for _ in range(directions):
        params += [
            (rng.standard_normal((D, G * H)) / np.sqrt(D)).astype(dtype),
            (rng.standard_normal((H, G * H)) / np.sqrt(H)).astype(dtype),
            (0.1 * rng.standard_normal(G * H)).astype(dtype),
        ]
    return params


def make_data(layer: str, shape: Shape, dtype, rng: np.random.Generator):
    """Seeded ``xs`` (N, T, D) and upstream gradient ``dhs`` (N, T, H or 2H), both N(0, 1)."""
    N, T, D, H = shape
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, output_width(layer, H))).astype(dtype)
    return xs, dhs


def gemm_flop(layer: str, shape: Shape) -> int:
    """Floating-point operations in the matrix products of one forward+backward pass.

    ``2*m*n*k`` per product over the ``T*N`` rows: forward ``xs @ Wx`` and ``h @ Wh``;
    backward ``dA @ Wh.T`` (recurrent), ``dxs = dA @ Wx.T``, ``dWx = xs.T @ dA`` and
    ``dWh = h.T @ dA``. That is ``6 * T * N * G*H * (D + H)``, doubled for TimeBiLSTM.
    """
    N, T, D, H = shape
    rows, width = T * N, GATES[layer] * H
    per_direction = 2 * rows * width * (3 * D + 3 * H)
    return per_direction * (2 if layer == "TimeBiLSTM" else 1)


def build_layer(module, layer: str, params: Sequence[np.ndarray]):
    """``module.<layer>`` (fastrnn or fastrnn.reference) built on copies of ``params``."""
    return getattr(module, layer)(*[p.copy() for p in params])


def forward_backward(layer, xs: np.ndarray, dhs: np.ndarray) -> Callable[[], None]:
    """A callable running ``layer.forward(xs)`` then ``layer.backward(dhs)``."""

    def run():
        layer.forward(xs)
        layer.backward(dhs)

    return run


# --------------------------------------------------------------------------------------
# The other time layers
# --------------------------------------------------------------------------------------

#: The book's time layers besides the recurrent ones, each with a plain-NumPy twin of the
#: same name in :mod:`fastrnn.reference`.
TIME_LAYERS = (
    "TimeEmbedding",
    "TimeAffine",
    "TimeSoftmaxWithLoss",
    "TimeSigmoidWithLoss",
    "TimeDropout",
    "TimeAttention",
)
_TIME_LAYER_ALIASES = {
    "softmax": "TimeSoftmaxWithLoss",
    "sigmoid": "TimeSigmoidWithLoss",
    **{name.lower(): name for name in TIME_LAYERS},
    **{name.lower().removeprefix("time"): name for name in TIME_LAYERS},
}

#: One forward and one backward pass of a layer on prepared data. Returns every output and
#: gradient by name: the layer's own arrays (copy them to keep them past the next call).
Pass = Callable[[], dict[str, object]]
#: Builds the :data:`Pass` of ``fastrnn`` or ``fastrnn.reference`` on the same data.
PassMaker = Callable[[object], Pass]


def time_layer_name(text: str) -> str:
    """The canonical name of a non-recurrent time layer: ``affine`` -> ``"TimeAffine"``."""
    choices = f"{', '.join(TIME_LAYERS)} (case-insensitive, 'Time' optional)"
    return _canonical_name(_TIME_LAYER_ALIASES, text, choices)


def _hidden_states(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Values in (-1, 1), as an LSTM's hidden states are."""
    return np.tanh(rng.standard_normal(shape)).astype(dtype)


def _loss_dout(N: int, T: int) -> float:
    """The loss layers' upstream gradient: ``N * T`` rather than the book's 1.

    Their ``dxs`` is divided by the ``N * T`` positions, so with ``dout=1`` its entries are
    about ``1 / (N * T)``, far below the check's ``atol * max(1, max|ref|)``: even a wrong
    gradient would pass. With ``dout = N * T``, ``dxs`` is ``softmax - onehot`` (or
    ``sigmoid - t``), of order 1, and the check sees every error. The cost is the same.
    """
    return float(N * T)


def _embedding(dtype, rng, *, N, T, D, V) -> PassMaker:
    W = (0.01 * rng.standard_normal((V, D))).astype(dtype)  # the book's initialisation
    ids = rng.integers(0, V, size=(N, T))
    dout = rng.standard_normal((N, T, D)).astype(dtype)

    def make(module) -> Pass:
        layer = module.TimeEmbedding(W.copy())

        def run():
            out = layer.forward(ids)
            layer.backward(dout)
            return {"out": out, "dW": layer.grads[0]}

        return run

    return make


def _affine(dtype, rng, *, N, T, D, M, tied=False) -> PassMaker:
    """``tied``: ``W`` is ``E.T`` for an embedding matrix ``E`` (M, D), as weight tying
    passes it (a transposed view, not a copy)."""
    E = (rng.standard_normal((M, D)) / np.sqrt(D)).astype(dtype)
    b = (0.1 * rng.standard_normal(M)).astype(dtype)
    x = _hidden_states(rng, (N, T, D), dtype)
    dout = rng.standard_normal((N, T, M)).astype(dtype)

    def make(module) -> Pass:
        W = E.copy().T if tied else np.ascontiguousarray(E.T)
        layer = module.TimeAffine(W, b.copy())

        def run():
            out = layer.forward(x)
            dx = layer.backward(dout)
            return {"out": out, "dx": dx, "dW": layer.grads[0], "db": layer.grads[1]}

        return run

    return make


def _loss(layer_name: str, xs: np.ndarray, ts: np.ndarray) -> PassMaker:
    """A loss layer's pass: ``forward(xs, ts)``, then ``backward`` of :func:`_loss_dout`."""
    dout = _loss_dout(*ts.shape)

    def make(module) -> Pass:
        layer = getattr(module, layer_name)()

        def run():
            loss = layer.forward(xs, ts)
            return {"loss": loss, "dxs": layer.backward(dout)}

        return run

    return make


def _softmax_with_loss(dtype, rng, *, N, T, V) -> PassMaker:
    xs = rng.standard_normal((N, T, V)).astype(dtype)
    return _loss("TimeSoftmaxWithLoss", xs, rng.integers(0, V, size=(N, T)))


def _sigmoid_with_loss(dtype, rng, *, N, T) -> PassMaker:
    xs = rng.standard_normal((N, T)).astype(dtype)
    return _loss("TimeSigmoidWithLoss", xs, rng.integers(0, 2, size=(N, T)))


def _dropout(dtype, rng, *, N, T, D, ratio) -> PassMaker:
    """Draws a new mask from ``np.random`` at every pass, as the book's layer does."""
    xs = _hidden_states(rng, (N, T, D), dtype)
    dout = rng.standard_normal((N, T, D)).astype(dtype)

    def make(module) -> Pass:
        layer = module.TimeDropout(ratio)

        def run():
            out = layer.forward(xs)
            return {"out": out, "dxs": layer.backward(dout)}

        return run

    return make


def _attention(dtype, rng, *, N, Te, Td, H) -> PassMaker:
    hs_enc = _hidden_states(rng, (N, Te, H), dtype)
    hs_dec = _hidden_states(rng, (N, Td, H), dtype)
    dout = rng.standard_normal((N, Td, H)).astype(dtype)

    def make(module) -> Pass:
        layer = module.TimeAttention()

        def run():
            out = layer.forward(hs_enc, hs_dec)
            dhs_enc, dhs_dec = layer.backward(dout)
            return {"out": out, "dhs_enc": dhs_enc, "dhs_dec": dhs_dec}

        return run

    return make


@dataclass
class TimeLayerCase:
    """A non-recurrent time layer at one of the book's shapes.

    ``prepare(dtype, rng, **sizes, **options)`` draws the data (parameters, inputs,
    upstream gradients) and returns a :data:`PassMaker`, so that ``fastrnn`` and
    ``fastrnn.reference`` run on the same arrays.
    """

    layer: str
    sizes: dict[str, int]
    prepare: Callable[..., PassMaker]
    options: dict[str, object] | None = None
    note: str = ""  # appended to the label, e.g. "tied"

    @property
    def label(self) -> str:
        """``"N=20 T=35 D=650 V=10000"``, plus the note."""
        text = " ".join(f"{name}={size}" for name, size in self.sizes.items())
        return f"{text} {self.note}" if self.note else text

    @property
    def id(self) -> str:
        """For test ids (``-k`` takes no ``=``): ``"TimeAffine-N20-T35-D650-M10000-tied"``."""
        return "-".join([self.layer, *self.label.replace("=", "").split()])

    def pass_maker(self, dtype, sizes: dict[str, int] | None = None) -> PassMaker:
        """Seeded data for the case (or for other ``sizes``), as a :data:`PassMaker`."""
        rng = np.random.default_rng(seed_for(self.layer, self.label))
        return self.prepare(np.dtype(dtype), rng, **(sizes or self.sizes), **(self.options or {}))

    def tiny_pass(self, module, dtype) -> Pass:
        """The case's pass at size 3 in every dimension (to compile the kernels)."""
        return self.pass_maker(dtype, dict.fromkeys(self.sizes, 3))(module)


#: The book's shapes: the PTB language models (``Rnnlm`` D=H=100, ``BetterRnnlm``
#: D=H=650 with weight tying; V=10000, N=20, T=35), the chapter 7 addition seq2seq
#: (V=13, decoder T=4, N=128), the chapter 8 dates (N=128, Te=29, Td=10, H=256) and a
#: small attention seq2seq (Te=7, Td=4, H=128).
TIME_LAYER_CASES: tuple[TimeLayerCase, ...] = (
    TimeLayerCase("TimeEmbedding", dict(N=20, T=35, D=650, V=10000), _embedding),
    TimeLayerCase("TimeEmbedding", dict(N=20, T=35, D=100, V=10000), _embedding),
    TimeLayerCase("TimeAffine", dict(N=20, T=35, D=650, M=10000), _affine, dict(tied=True), "tied"),
    TimeLayerCase("TimeAffine", dict(N=20, T=35, D=100, M=10000), _affine),
    TimeLayerCase("TimeSoftmaxWithLoss", dict(N=20, T=35, V=10000), _softmax_with_loss),
    TimeLayerCase("TimeSoftmaxWithLoss", dict(N=128, T=4, V=13), _softmax_with_loss),
    TimeLayerCase("TimeSigmoidWithLoss", dict(N=128, T=29), _sigmoid_with_loss),
    TimeLayerCase("TimeDropout", dict(N=20, T=35, D=650), _dropout, dict(ratio=0.5), "p=0.5"),
    TimeLayerCase("TimeAttention", dict(N=128, Te=29, Td=10, H=256), _attention),
    TimeLayerCase("TimeAttention", dict(N=128, Te=7, Td=4, H=128), _attention),
)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """How far fastrnn is from the reference on one layer and shape."""

    max_abs_error: float
    error_over_tolerance: float  # the largest |diff| / allowed; passes when <= 1
    worst_array: str

    @property
    def passed(self) -> bool:
        return bool(self.error_over_tolerance <= 1.0)


def run_once(layer_obj, xs: np.ndarray, dhs: np.ndarray) -> dict[str, np.ndarray]:
    """One forward and backward pass; returns copies of ``hs``, ``dxs`` and every grad."""
    hs = layer_obj.forward(xs)
    dxs = layer_obj.backward(dhs)
    out = {"hs": np.array(hs), "dxs": np.array(dxs)}
    names = ("dWx", "dWh", "db")
    for i, grad in enumerate(layer_obj.grads):
        suffix = "" if len(layer_obj.grads) == 3 else str(1 + i // 3)
        out[names[i % 3] + suffix] = grad.copy()
    return out


def compare(fast: dict[str, np.ndarray], ref: dict[str, np.ndarray], dtype) -> CheckResult:
    """Compare two :func:`run_once` results with the tolerance of ``dtype``."""
    rtol, atol = TOLERANCE[np.dtype(dtype)]
    max_abs, worst_ratio, worst_name = 0.0, 0.0, ""
    for name, expected in ref.items():
        actual = fast[name]
        if actual.shape != expected.shape:
            return CheckResult(float("inf"), float("inf"), f"{name} (shape)")
        actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
        # NaN against NaN and inf against the same inf count as equal, as in NumPy's tests.
        same = (actual64 == expected64) | (np.isnan(actual64) & np.isnan(expected64))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(actual64 - expected64))
        finite = np.isfinite(expected64)
        scale = max(1.0, float(np.max(np.abs(expected64[finite]), initial=0.0)))
        allowed = atol * scale + rtol * np.abs(expected64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = float(np.max(np.where(diff == 0, 0.0, diff / allowed), initial=0.0))
        abs_err = float(np.max(diff, initial=0.0))
        if not np.all(np.isfinite(diff)):  # NaN or inf where the other has something else
            ratio = abs_err = float("inf")
        if ratio > worst_ratio or not worst_name:
            worst_ratio, worst_name = ratio, name
        max_abs = max(max_abs, abs_err)
    return CheckResult(max_abs, worst_ratio, worst_name)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------

#: How long to warm an implementation up (or wait) before its timed rounds, in seconds:
#: long enough for the other OpenBLAS library's spinning workers to go to sleep.
SETTLE_SECONDS = 0.25


def settle(fn: Callable[[], object], seconds: float = SETTLE_SECONDS) -> float:
    """Warm ``fn`` up for ``seconds``; returns the fastest call seen.

    Calls ``fn`` repeatedly until ``seconds`` have passed, at least once; if the first call
    alone took longer than ``seconds``, sleeps ``seconds`` instead of calling it again, so
    that other thread pools go idle either way.
    """
    start = time.perf_counter()
    fastest = float("inf")
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        fastest = min(fastest, t1 - t0)
        if t1 - start >= seconds:
            break
    if fastest >= seconds:
        time.sleep(seconds)
    return fastest


def time_rounds(fn: Callable[[], object], rounds: int) -> list[float]:
    """Seconds taken by each of ``rounds`` calls of ``fn``."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def call_for(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Call ``fn`` once to warm up, then repeatedly for about ``seconds`` (a loop for
    cProfile and py-spy); returns the timed calls and the seconds they took."""
    fn()
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls, time.perf_counter() - start


def rounds_for(estimate: float, max_rounds: int, budget: float, min_rounds: int = 3) -> int:
    """How many rounds fit in ``budget`` seconds, between ``min_rounds`` and ``max_rounds``.

    Calls slower than one second get a single round: only the reference is that slow, and
    its ratio to fastrnn is then large enough that one round tells it.
    """
    if estimate > 1.0:
        return 1
    fit = int(budget / max(estimate, 1e-9))
    return max(1, min(max_rounds, max(min_rounds, fit)))


def measure(
    fn: Callable[[], object],
    max_rounds: int,
    budget: float,
    settle_seconds: float = SETTLE_SECONDS,
) -> list[float]:
    """Settle ``fn`` (see :func:`settle`), then time as many rounds as ``budget`` allows."""
    estimate = settle(fn, settle_seconds)
    return time_rounds(fn, rounds_for(estimate, max_rounds, budget))


def measure_interleaved(
    fns: Sequence[Callable[[], object]],
    max_rounds: int,
    budget: float,
    settle_seconds: float = SETTLE_SECONDS,
) -> list[list[float]]:
    """:func:`measure` for several functions at once, their rounds interleaved.

    Each function is settled and gets as many rounds as ``budget`` allows it; then round
    ``r`` times one call of each function that has an ``r``-th round, in order. A burst of
    load from elsewhere (this VM's speed drifted by half within minutes) then slows every
    function alike instead of the one whose block it fell on, and the ratios of their
    medians hold. Only for functions that share one thread pool (NumPy's BLAS): another
    library's pool would spin after its call into the next one's.
    """
    estimates = [settle(fn, settle_seconds) for fn in fns]
    rounds = [rounds_for(estimate, max_rounds, budget) for estimate in estimates]
    times: list[list[float]] = [[] for _ in fns]
    for r in range(max(rounds, default=0)):
        for fn, wanted, samples in zip(fns, rounds, times, strict=True):
            if r < wanted:
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
    return times


class ForeignLoad:
    """How many cores other processes kept busy since :meth:`start` (Linux; else None).

    On a machine with few cores, other work matters a lot: a multithreaded BLAS call waits
    for its slowest thread, so one busy core can make small products 10x slower. Timings
    taken while this is well above 0 are not comparable with quiet ones.
    """

    def __init__(self):
        self._start = None

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def start(self) -> ForeignLoad:
        """Start (or restart) measuring; returns self."""
        self._start = (self._busy_seconds(), self._own_seconds(), time.perf_counter())
        return self

    def cores(self) -> float | None:
        """Average number of cores used by other processes since :meth:`start`."""
        busy = self._busy_seconds()
        if self._start is None or busy is None or self._start[0] is None:
            return None
        busy0, own0, wall0 = self._start
        wall = time.perf_counter() - wall0
        if wall <= 0:
            return None
        foreign = (busy - busy0) - (self._own_seconds() - own0)
        return max(0.0, foreign / wall)


#: Foreign load (cores) above which a row is marked as measured on a busy machine.
BUSY_THRESHOLD = 0.25


# --------------------------------------------------------------------------------------
# BLAS peak, thread pools, PyTorch
# --------------------------------------------------------------------------------------


def blas_peak_runner(size: int = 2048, dtype=np.float32) -> tuple[Callable[[], None], int]:
    """A ``size``-cubed ``?gemm`` through NumPy's BLAS (the library fastrnn's kernels call).

    Returns
    -------
    run : callable
        Computes ``C = A @ B`` into a preallocated C-contiguous array, so that no copy or
        allocation is timed.
    flop : int
        ``2 * size**3``.
    """
    rng = np.random.default_rng(seed_for("gemm", size))
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    c = np.zeros((size, size), dtype=dtype)

    def run():
        np.matmul(a, b, out=c)

    return run, 2 * size**3


def blas_threads() -> int | None:
    """Threads of the BLAS library that fastrnn's kernels use, or None if unknown."""
    from threadpoolctl import threadpool_info

    from ._blas import BINDING

    for lib in threadpool_info():
        if lib.get("user_api") != "blas":
            continue
        if BINDING.library is not None and lib.get("filepath") == BINDING.library:
            return lib.get("num_threads")
        if BINDING.library is None and "64_" not in os.path.basename(lib.get("filepath", "")):
            return lib.get("num_threads")  # the fallback: SciPy's library, not NumPy's ILP64
    return None


@contextlib.contextmanager
def limit_blas_threads(threads: int | None) -> Iterator[None]:
    """Limit every BLAS library in the process to ``threads`` (None: leave them alone)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run PyTorch's intra-op pool with ``threads`` threads, restoring the old count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def torch_runner(layer: str, shape: Shape, dtype=np.float32) -> Callable[[], None]:
    """Forward+backward of PyTorch's counterpart of ``layer`` (raises ImportError without it).

    ``nn.RNN(tanh)``, ``nn.LSTM``, ``nn.GRU``, or ``nn.LSTM(bidirectional=True)``,
    ``batch_first``, on seeded ``xs`` (N, T, D) that requires grad, with the upstream
    gradient ``dhs`` passed to ``backward``. Gradients are reset (to None) before each call,
    as an optimizer's ``zero_grad`` does, so they do not accumulate.
    """
    import torch

    N, T, D, H = shape
    torch_dtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
    torch.manual_seed(seed_for("torch", layer, shape.label))
    if layer == "TimeRNN":
        module = torch.nn.RNN(D, H, nonlinearity="tanh", batch_first=True)
    elif layer == "TimeGRU":
        module = torch.nn.GRU(D, H, batch_first=True)
    else:
        module = torch.nn.LSTM(D, H, batch_first=True, bidirectional=layer == "TimeBiLSTM")
    module = module.to(torch_dtype)
    xs_np, dhs_np = make_data(layer, shape, dtype, np.random.default_rng(seed_for(layer, shape)))
    xs = torch.from_numpy(xs_np).requires_grad_(True)
    dhs = torch.from_numpy(dhs_np)

    def run():
        xs.grad = None
        module.zero_grad(set_to_none=True)
        hs, _ = module(xs)
        hs.backward(dhs)

    return run


def torch_available() -> bool:
    """Whether PyTorch can be imported (imports it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU, cores, package versions, BLAS libraries and thread-related environment.

    Returns
    -------
    dict
        JSON-serialisable: ``cpu``, ``logical_cores``, ``usable_cores``, ``python``,
        ``versions`` (numpy, numba, scipy, torch, fastrnn), ``blas`` (one entry per library
        threadpoolctl finds), ``fastrnn_blas`` (what the kernels call) and ``env``.
    """
    from threadpoolctl import threadpool_info

    from ._blas import BINDING

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    blas = [
        {
            "library": os.path.basename(lib.get("filepath", "")),
            "user_api": lib.get("user_api"),
            "api": lib.get("internal_api"),
            "version": lib.get("version"),
            "architecture": lib.get("architecture"),
            "threads": lib.get("num_threads"),
            "threading_layer": lib.get("threading_layer"),
        }
        for lib in threadpool_info()
    ]
    env_names = (
        "OPENBLAS_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMBA_NUM_THREADS",
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "OPENBLAS_THREAD_TIMEOUT",
        "FASTRNN_BLAS",
    )
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "versions": {
            name: _version(name) for name in ("numpy", "numba", "scipy", "torch", "fastrnn")
        },
        "blas": blas,
        "fastrnn_blas": BINDING.describe(),
        "env": {name: os.environ[name] for name in env_names if name in os.environ},
    }


def format_machine_info(info: dict) -> list[str]:
    """Plain-text lines describing :func:`machine_info`'s result."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    lines = [
        f"CPU: {info['cpu']}, {info['logical_cores']} logical cores "
        f"({info['usable_cores']} usable); Python {info['python']}",
        f"Versions: {versions}",
    ]
    for lib in info["blas"]:
        details = ", ".join(
            str(v) for v in (lib["version"], lib["architecture"], lib["threading_layer"]) if v
        )
        lines.append(
            f"{(lib.get('user_api') or 'blas').upper()}: {lib['library']} "
            f"({lib['api']} {details}; {lib['threads']} threads)"
        )
    lines.append(f"fastrnn's kernels call: {info['fastrnn_blas']}")
    if info["env"]:
        lines.append("Env: " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    return lines


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def format_ms(seconds: float | None) -> str:
    """Milliseconds with three significant digits or so; ``-`` for a missing value."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 100:
        return f"{ms:.2f}"
    return f"{ms:.1f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> str:
    """An aligned plain-text table: the first ``left`` columns left-aligned, others right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(
            str(c).ljust(w) if i < left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


class _Medians:
    """The medians of a result's round times, ``reference`` and ``fastrnn`` (seconds)."""

    reference: list[float]
    fastrnn: list[float]

    @property
    def reference_median(self) -> float:
        return statistics.median(self.reference)

    @property
    def fastrnn_median(self) -> float:
        return statistics.median(self.fastrnn)

    def time_cells(self) -> list[str]:
        """The table cells ``reference ms``, ``fastrnn ms`` and ``speedup``."""
        ref, fast = self.reference_median, self.fastrnn_median
        return [format_ms(ref), format_ms(fast), _speedup(ref, fast)]

    def rounds_cell(self) -> str:
        """The ``rounds`` cell: reference/fastrnn rounds timed."""
        return f"{len(self.reference)}/{len(self.fastrnn)}"


@dataclass
class CaseResult(_Medians):
    """Check and times of one layer on one shape."""

    layer: str
    shape: Shape
    check: CheckResult
    reference: list[float]
    fastrnn: list[float]
    torch: dict[int, list[float]]  # threads -> round times
    foreign_load: float | None = None  # cores used by other processes meanwhile
    plan: str = ""  # the planner's routes for the per-step products

    @property
    def best_torch_median(self) -> float | None:
        medians = [statistics.median(t) for t in self.torch.values()]
        return min(medians) if medians else None


def run_case(
    layer: str,
    shape: Shape,
    dtype,
    max_rounds: int,
    budget: float,
    torch_thread_counts: Sequence[int] = (),
) -> CaseResult:
    """Check ``layer`` on ``shape``, then time the reference, fastrnn and optionally torch."""
    import fastrnn
    from fastrnn import reference

    load = ForeignLoad().start()
    rng = np.random.default_rng(seed_for(layer, shape))
    params = make_params(layer, shape, dtype, rng)
    xs, dhs = make_data(layer, shape, dtype, rng)
    ref_layer = build_layer(reference, layer, params)
    fast_layer = build_layer(fastrnn, layer, params)
    check = compare(run_once(fast_layer, xs, dhs), run_once(ref_layer, xs, dhs), dtype)

    ref_times, fast_times = measure_interleaved(
        [forward_backward(ref_layer, xs, dhs), forward_backward(fast_layer, xs, dhs)],
        max_rounds,
        budget,
    )
    torch_times = {}
    if torch_thread_counts:
        run_torch = torch_runner(layer, shape, dtype)
        for threads in torch_thread_counts:
            with torch_threads(threads):
                torch_times[threads] = measure(run_torch, max_rounds, budget)
    recurrence = getattr(fast_layer, "forward_lstm", fast_layer)._engine
    routes = recurrence.saved["routes"]
    plan = f"{routes.forward}/{routes.backward}"
    return CaseResult(layer, shape, check, ref_times, fast_times, torch_times, load.cores(), plan)


@dataclass
class TimeLayerResult(_Medians):
    """Check and times of one non-recurrent time layer on one shape."""

    case: TimeLayerCase
    check: CheckResult
    reference: list[float]
    fastrnn: list[float]
    foreign_load: float | None = None  # cores used by other processes meanwhile


@contextlib.contextmanager
def seeded_global_random(seed: int) -> Iterator[None]:
    """Seed NumPy's global random state (``np.random.seed``) for the block; restore it after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def check_time_layer(case: TimeLayerCase, dtype) -> tuple[CheckResult, Pass, Pass]:
    """Compare one pass of fastrnn with one of the reference on the case's data.

    Every output and gradient is compared. Both passes start from the same seeded global
    random state, so that TimeDropout draws the same mask in both.

    Returns
    -------
    check : CheckResult
    reference_pass, fastrnn_pass : Pass
        The two passes, ready to be timed (fastrnn's kernels are compiled by now).
    """
    import fastrnn
    from fastrnn import reference

    make = case.pass_maker(dtype)
    passes = make(reference), make(fastrnn)
    results = []
    for run in passes:
        with seeded_global_random(seed_for("np.random", case.layer, case.label)):
            results.append({name: np.array(value) for name, value in run().items()})
    return compare(results[1], results[0], dtype), *passes


#: Warm-up of the time-layer table's rounds, in seconds: shorter than
#: :data:`SETTLE_SECONDS`, as no other library's thread pool runs in between (no PyTorch
#: there), and long enough for OpenBLAS's spinning workers to go to sleep.
TIME_LAYER_SETTLE_SECONDS = 0.1


def time_layer_rounds(max_rounds: int, budget: float) -> tuple[int, float]:
    """The (rounds, budget) of the time-layer table for the recurrent table's: a quarter of
    the rounds (at least 3) and half the budget, so that it adds little to a run."""
    return max(3, max_rounds // 4), budget / 2


def run_time_layer_case(
    case: TimeLayerCase, dtype, max_rounds: int, budget: float
) -> TimeLayerResult:
    """Check ``case`` (see :func:`check_time_layer`), then time the reference and fastrnn."""
    load = ForeignLoad().start()
    check, reference_pass, fastrnn_pass = check_time_layer(case, dtype)
    settle_seconds = TIME_LAYER_SETTLE_SECONDS
    ref_times, fast_times = measure_interleaved(
        [reference_pass, fastrnn_pass], max_rounds, budget, settle_seconds
    )
    return TimeLayerResult(case, check, ref_times, fast_times, load.cores())


def measure_blas_peak(dtype, rounds: int = 5) -> float:
    """Median GFLOP/s of a 2048^3 ``?gemm`` through NumPy's BLAS."""
    run, flop = blas_peak_runner(2048, dtype)
    settle(run)
    return flop / statistics.median(time_rounds(run, rounds)) / 1e9


def _check_cells(check: CheckResult) -> list[str]:
    return [
        f"{check.max_abs_error:.1e}",
        f"{check.error_over_tolerance:.2f}",
        "PASS" if check.passed else f"FAIL ({check.worst_array})",
    ]


def _speedup(baseline: float | None, fast: float) -> str:
    return "-" if baseline is None else f"{baseline / fast:.1f}x"


@dataclass
class _Tally:
    """Checks, failed checks and rows measured on a busy machine, over both tables."""

    checks: int = 0
    failures: int = 0
    busy_rows: int = 0

    def add(self, check: CheckResult, load: float | None) -> str:
        """Count one row; returns its ``other load`` cell."""
        busy = load is not None and load > BUSY_THRESHOLD
        self.checks += 1
        self.failures += not check.passed
        self.busy_rows += busy
        return "?" if load is None else f"{load:.2f}" + (" !" if busy else "")


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"  {text}: done", file=sys.stderr, flush=True)


def _recurrent_table(
    args, layers, dtype, bench: bool, peak, torch_thread_counts, tally: _Tally
) -> str:
    headers = ["layer", "shape NxTxDxH", "max abs err", "err/tol", "check"]
    headers += ["reference ms", "fastrnn ms", "speedup"]
    if bench:
        headers += ["GFLOP/s", "% peak", "plan fwd/bwd"]
        headers += [f"torch {t}t ms" for t in torch_thread_counts]
        if torch_thread_counts:
            headers += ["vs torch"]
    headers += ["rounds", "other load"]

    rows = []
    for layer in layers:
        for shape in args.shapes:
            result = run_case(layer, shape, dtype, args.repeat, args.budget, torch_thread_counts)
            fast = result.fastrnn_median
            row = [layer, shape.label, *_check_cells(result.check), *result.time_cells()]
            if bench:
                gflops = gemm_flop(layer, shape) / fast / 1e9
                row += [f"{gflops:.1f}", f"{100 * gflops / peak:.0f}%", result.plan]
                row += [format_ms(statistics.median(t)) for t in result.torch.values()]
                if torch_thread_counts:
                    row += [_speedup(result.best_torch_median, fast)]
            row += [result.rounds_cell(), tally.add(result.check, result.foreign_load)]
            rows.append(row)
            _progress(f"{layer} {shape.label}")
    return format_table(headers, rows)


def _time_layer_table(args, cases, dtype, tally: _Tally) -> str:
    headers = ["layer", "shape", "max abs err", "err/tol", "check"]
    headers += ["reference ms", "fastrnn ms", "speedup", "rounds", "other load"]
    max_rounds, budget = time_layer_rounds(args.repeat, args.budget)
    rows = []
    for case in cases:
        result = run_time_layer_case(case, dtype, max_rounds, budget)
        row = [case.layer, case.label, *_check_cells(result.check), *result.time_cells()]
        row += [result.rounds_cell(), tally.add(result.check, result.foreign_load)]
        rows.append(row)
        _progress(f"{case.layer} {case.label}")
    return format_table(headers, rows)


def _run(args, bench: bool) -> int:
    dtype = np.dtype(args.dtype)
    started = time.perf_counter()
    recurrent = [layer for layer in args.layers if layer in GATES]
    cases = [case for case in TIME_LAYER_CASES if case.layer in args.layers]
    info = machine_info()
    print(
        f"fastrnn {info['versions']['fastrnn'] or ''}: {'bench' if bench else 'check'}, "
        f"{dtype.name}, forward+backward, median of rounds"
    )
    for line in format_machine_info(info):
        print(line)

    torch_thread_counts: tuple[int, ...] = ()
    if bench and args.torch and recurrent:
        if torch_available():
            torch_thread_counts = tuple(args.torch_threads)
        else:
            print("note: PyTorch is not installed; --torch ignored", file=sys.stderr)
    peak = None
    if bench and recurrent:
        load = ForeignLoad().start()
        peak = measure_blas_peak(dtype)
        kind = "sgemm" if dtype == np.float32 else "dgemm"
        other = load.cores()
        other_text = "" if other is None else f" (other load {other:.2f} cores)"
        print(f"BLAS peak: {kind} 2048^3 through NumPy's BLAS: {peak:.1f} GFLOP/s{other_text}")
    print(flush=True)

    tally = _Tally()
    if recurrent:
        print(_recurrent_table(args, recurrent, dtype, bench, peak, torch_thread_counts, tally))
        print(flush=True)
    if cases:
        print(_time_layer_table(args, cases, dtype, tally))
        print()
    elapsed = time.perf_counter() - started
    print(
        "speedup = reference median / fastrnn median; rounds = reference/fastrnn rounds timed"
        + (
            "; plan = the planner's routes for the per-step products (fastrnn._planner, "
            "FASTRNN_PLAN pins them)"
            if bench and recurrent
            else ""
        )
        + ("; vs torch = best torch thread setting / fastrnn" if torch_thread_counts else "")
        + "; other load = cores kept busy by other processes meanwhile"
    )
    if cases:
        notes = ["time layers: forward+backward at the book's shapes (--shapes applies to the "
                 "recurrent layers only)"]  # fmt: skip
        if any(case.note == "tied" for case in cases):
            notes.append("tied: TimeAffine's W is E.T, a transposed view, as weight tying has it")
        if any(case.layer == "TimeDropout" for case in cases):
            notes.append("p: TimeDropout's ratio; its masks are seeded alike for the check")
        print("; ".join(notes))
    if tally.busy_rows:
        print(
            f"note: {tally.busy_rows} row(s) marked ! ran while other processes kept more than "
            f"{BUSY_THRESHOLD} of a core busy; their times can be several times too slow "
            "(multithreaded BLAS waits for its slowest thread). Rerun on a quiet machine, "
            "or compare with --blas-threads 1."
        )
    if tally.failures:
        print(f"FAILED: {tally.failures} of {tally.checks} checks ({elapsed:.1f} s)")
        return 1
    print(f"all {tally.checks} checks passed ({elapsed:.1f} s)")
    return 0


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _shape_arg(text: str) -> Shape:
    try:
        return Shape.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _layer_arg(text: str) -> str:
    for canonical in (layer_name, time_layer_name):
        try:
            return canonical(text)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"unknown layer {text!r}; choose from rnn, lstm, gru, bilstm, "
        "embedding, affine, softmax, sigmoid, dropout, attention "
        "(case-insensitive; the class names such as TimeLSTM or TimeSoftmaxWithLoss too)"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_common_options(parser: argparse.ArgumentParser, default_repeat: int) -> None:
    parser.add_argument(
        "--layers",
        nargs="+",
        type=_layer_arg,
        default=[*LAYERS, *TIME_LAYERS],
        metavar="LAYER",
        help="layers to run: the recurrent rnn, lstm, gru, bilstm (first table) and "
        "embedding, affine, softmax, sigmoid (the ...WithLoss layers), dropout, attention "
        "(second table, at the book's shapes); case-insensitive, class names such as "
        "TimeLSTM too (default: all)",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=_shape_arg,
        default=list(BOOK_SHAPES),
        metavar="NxTxDxH",
        help="shapes of the recurrent layers (default: the book's five)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="compute dtype (default: float32)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=default_repeat,
        metavar="N",
        help=f"at most N timed rounds per implementation (default: {default_repeat}); fewer "
        "when they would exceed --budget, at least 3 unless one call takes over a second. "
        "The time-layer table takes a quarter of N (at least 3) and half the budget",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=0.4,
        metavar="SECONDS",
        help="time to spend on the rounds of one implementation on one shape (default: 0.4)",
    )
    parser.add_argument(
        "--blas-threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="limit every BLAS library (NumPy's, which fastrnn calls too) to N threads",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastrnn`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m fastrnn",
        usage="python -m fastrnn [{check,bench}] [options]",
        description="Check fastrnn against fastrnn.reference on the book's shapes and time "
        "forward+backward of both. Without a command, runs 'check' (options included: "
        "'python -m fastrnn --layers lstm' is 'python -m fastrnn check --layers lstm'). "
        "'python -m fastrnn check --help' and 'python -m fastrnn bench --help' list the "
        "options.",
        epilog="Exit status: 0 when every check passes, 1 when one fails, 2 on a usage error.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{check,bench}")
    check = commands.add_parser(
        "check",
        prog="python -m fastrnn check",
        help="(default) compare outputs, dxs and grads with the reference, and time both",
        description="Compare fastrnn with fastrnn.reference (hs, dxs, grads) and time "
        "forward+backward of both.",
    )
    _add_common_options(check, default_repeat=20)
    bench = commands.add_parser(
        "bench",
        prog="python -m fastrnn bench",
        help="check and time, with GFLOP/s, share of the sgemm peak, and optionally torch",
        description="The check's comparison plus GFLOP/s of fastrnn's matrix products, their "
        "share of a 2048^3 ?gemm peak measured in the same run, and optionally PyTorch.",
    )
    _add_common_options(bench, default_repeat=50)
    bench.add_argument(
        "--torch",
        action="store_true",
        help="also time torch.nn.RNN/LSTM/GRU (float, batch_first) when PyTorch is installed",
    )
    bench.add_argument(
        "--torch-threads",
        nargs="+",
        type=_positive_int,
        default=[1, 2],
        metavar="N",
        help="PyTorch thread counts to time, each a separate column (default: 1 2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m fastrnn``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("check", "bench", "-h", "--help"):
        argv = ["check", *argv]  # `python -m fastrnn [options]` is the check
    parser = build_parser()
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(limit_blas_threads(args.blas_threads))
        except RuntimeError as err:
            parser.error(str(err))
        try:
            return _run(args, bench=args.command == "bench")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
