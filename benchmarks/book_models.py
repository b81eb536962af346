"""The book's models, written once and run on any set of layers.

*Deep Learning from Scratch 2* builds its language models (chapter 6) and its seq2seq
models (chapters 7 and 8) from time layers: ``TimeEmbedding``, ``TimeLSTM``, ``TimeAffine``,
``TimeDropout``, ``TimeAttention`` and the loss ``TimeSoftmaxWithLoss``. The models here
follow the book's code (``ch06/rnnlm.py``, ``ch06/better_rnnlm.py``, ``ch07/seq2seq.py``,
``ch07/peeky_seq2seq.py``, ``ch08/attention_seq2seq.py``, the generators of
``ch07/rnnlm_gen.py``) with one change: each takes a *layer set*, an object with the book's
class names as attributes, instead of importing ``common.time_layers``. That is also how a
user swaps layers in the book's code::

    from fastrnn import reference     # the book's NumPy layers: the baseline
    import fastrnn.time_layers as L   # every layer from fastrnn

    model = Rnnlm(L)                  # the same model, fastrnn's layers

:func:`layer_set` returns the three sets the benchmarks compare:

``reference``
    every layer from :mod:`fastrnn.reference`, the book's NumPy code;
``recurrent``
    the same, with the recurrent layers (``TimeLSTM`` and the rest) from :mod:`fastrnn`:
    the drop-in swap of the README;
``fastrnn``
    every layer from :mod:`fastrnn.time_layers`.

The models initialise their weights as the book does, with ``np.random.randn`` in the
book's order, so models built after the same ``np.random.seed`` start from identical
parameters whatever their layer set (:func:`build_model`). :class:`Trainer` takes one
training step as the book's trainers do (forward, backward, ``remove_duplicate``,
``clip_grads``, optimizer update), and :func:`profile_steps` times each layer's forward and
backward within such steps: where a step's time goes.

:data:`MODELS` holds the book's sizes and training settings for each model;
:func:`make_batch` makes random token ids of the right shapes (no data download: the
time per step does not depend on which ids they are).
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from fastrnn._cli import seed_for

#: The layer sets, in the order tables show them.
VARIANTS = ("reference", "recurrent", "fastrnn")

#: The classes the models take from a layer set, by the book's names.
MODEL_LAYERS = (
    "TimeEmbedding",
    "TimeLSTM",
    "TimeAffine",
    "TimeSoftmaxWithLoss",
    "TimeDropout",
    "TimeAttention",
)

#: What fastrnn replaces in the ``recurrent`` set.
RECURRENT_LAYERS = ("RNN", "LSTM", "GRU", "TimeRNN", "TimeLSTM", "TimeGRU", "TimeBiLSTM")


# --------------------------------------------------------------------------------------
# Layer sets
# --------------------------------------------------------------------------------------


class LayerSetUnavailable(ImportError):
    """A layer set cannot be built here (its module or some of its classes are missing)."""


def _take(module, names, variant: str) -> dict:
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        raise LayerSetUnavailable(
            f"layer set {variant!r} not available: {module.__name__} has no "
            f"{', '.join(missing)} (yet)"
        )
    return {name: getattr(module, name) for name in names}


def layer_set(variant: str) -> types.SimpleNamespace:
    """The classes the models need, from ``variant`` (one of :data:`VARIANTS`).

    Returns
    -------
    types.SimpleNamespace
        The book's class names (:data:`MODEL_LAYERS`, plus the recurrent layers) as
        attributes, and ``name``: the variant.

    Raises
    ------
    LayerSetUnavailable
        When the module the variant needs, or one of its classes, does not exist.
    """
    import fastrnn
    from fastrnn import reference

    if variant == "reference":
        classes = _take(reference, MODEL_LAYERS, variant)
    elif variant == "recurrent":
        classes = _take(reference, MODEL_LAYERS, variant)
        classes.update(_take(fastrnn, RECURRENT_LAYERS, variant))
    elif variant == "fastrnn":
        try:
            module = importlib.import_module("fastrnn.time_layers")
        except ModuleNotFoundError as err:
            # fastrnn.time_layers, or a module of fastrnn it imports, is not written yet;
            # anything else missing (a third-party package) is a real error
            if not (err.name or "").startswith("fastrnn."):
                raise
            what = "does not exist" if err.name == "fastrnn.time_layers" else f"needs {err.name}"
            raise LayerSetUnavailable(
                f"layer set 'fastrnn' not available: fastrnn.time_layers {what} (yet)"
            ) from None
        classes = _take(module, MODEL_LAYERS, variant)
    else:
        raise ValueError(f"unknown layer set {variant!r}; choose from {', '.join(VARIANTS)}")
    return types.SimpleNamespace(name=variant, **classes)


# --------------------------------------------------------------------------------------
# The book's helpers: softmax, remove_duplicate, clip_grads, SGD, Adam
# --------------------------------------------------------------------------------------


def softmax(x: np.ndarray) -> np.ndarray:
    """The book's softmax over the last axis of a 1-D or 2-D array, max-shifted."""
    if x.ndim == 2:
        x = x - x.max(axis=1, keepdims=True)
        x = np.exp(x)
        x /= x.sum(axis=1, keepdims=True)
    else:
        x = x - np.max(x)
        x = np.exp(x) / np.sum(np.exp(x))
    return x


def _shared_pair(params: list[np.ndarray]) -> tuple[int, int, bool] | None:
    # The book's test, in its order: the same array, or a 2-D weight equal to another's
    # transpose (weight tying keeps embed_W and a transposed view of it). The values are
    # compared, as in the book, so this costs a pass over every same-shaped pair.
    for i in range(len(params) - 1):
        for j in range(i + 1, len(params)):
            a, b = params[i], params[j]
            if a is b:
                return i, j, False
            if a.ndim == 2 and b.ndim == 2 and a.T.shape == b.shape and np.all(a.T == b):
                return i, j, True
    return None


def remove_duplicate(
    params: list[np.ndarray], grads: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Merge shared weights, adding up their gradients (``common/trainer.py``).

    Parameters
    ----------
    params, grads : lists of arrays
        A model's ``params`` and ``grads``; not modified (new lists are returned), but
        the gradient arrays of the weights kept receive the others' gradients in place.

    Returns
    -------
    params, grads : lists of arrays
        Each shared weight once: its first occurrence, with the gradient of every later
        occurrence added (transposed for a weight tied by transposition).
    """
    params, grads = list(params), list(grads)
    while (pair := _shared_pair(params)) is not None:
        i, j, transposed = pair
        grads[i] += grads[j].T if transposed else grads[j]
        del params[j], grads[j]
    return params, grads


def clip_grads(grads: list[np.ndarray], max_norm: float) -> None:
    """Scale all gradients in place so that their joint L2 norm is at most ``max_norm``."""
    total_norm = np.sqrt(sum(np.sum(grad**2) for grad in grads))
    rate = max_norm / (total_norm + 1e-6)
    if rate < 1:
        for grad in grads:
            grad *= rate


class SGD:
    """Plain stochastic gradient descent: ``param -= lr * grad``, in place."""

    def __init__(self, lr: float = 0.01):
        self.lr = lr

    def update(self, params, grads):
        for param, grad in zip(params, grads, strict=True):
            param -= self.lr * grad


class Adam:
    """Adam with the book's defaults and bias correction folded into the step size."""

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999):
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.iter = 0
        self.m = self.v = None

    def update(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for param, grad, m, v in zip(params, grads, self.m, self.v, strict=True):
            m += (1 - self.beta1) * (grad - m)
            v += (1 - self.beta2) * (grad**2 - v)
            param -= lr_t * m / (np.sqrt(v) + 1e-7)


# --------------------------------------------------------------------------------------
# Weights, initialised as the book does (np.random.randn, float32)
# --------------------------------------------------------------------------------------


def _embedding_weight(V: int, D: int) -> np.ndarray:
    return (np.random.randn(V, D) / 100).astype("f")


def _lstm_weights(D: int, H: int) -> list[np.ndarray]:
    rn = np.random.randn
    Wx = (rn(D, 4 * H) / np.sqrt(D)).astype("f")
    Wh = (rn(H, 4 * H) / np.sqrt(H)).astype("f")
    return [Wx, Wh, np.zeros(4 * H).astype("f")]


def _affine_weights(fan_in: int, V: int) -> list[np.ndarray]:
    W = (np.random.randn(fan_in, V) / np.sqrt(fan_in)).astype("f")
    return [W, np.zeros(V).astype("f")]


def _collect(layers) -> tuple[list[np.ndarray], list[np.ndarray]]:
    params, grads = [], []
    for layer in layers:
        params += layer.params
        grads += layer.grads
    return params, grads


# --------------------------------------------------------------------------------------
# Chapter 6: language models (with chapter 7's text generation)
# --------------------------------------------------------------------------------------


class Rnnlm:
    """Embedding, one stateful LSTM, affine; softmax cross-entropy (``ch06/rnnlm.py``).

    Parameters
    ----------
    L : layer set
        Provides ``TimeEmbedding``, ``TimeLSTM``, ``TimeAffine``, ``TimeSoftmaxWithLoss``.
    vocab_size, wordvec_size, hidden_size : int
        ``V``, ``D``, ``H``.
    """

    def __init__(self, L, vocab_size=10000, wordvec_size=100, hidden_size=100):
        V, D, H = vocab_size, wordvec_size, hidden_size
        embed_W = _embedding_weight(V, D)
        lstm_Wx, lstm_Wh, lstm_b = _lstm_weights(D, H)
        affine_W, affine_b = _affine_weights(H, V)

        self.embed = L.TimeEmbedding(embed_W)
        self.lstm = L.TimeLSTM(lstm_Wx, lstm_Wh, lstm_b, stateful=True)
        self.affine = L.TimeAffine(affine_W, affine_b)
        self.layers = [self.embed, self.lstm, self.affine]
        self.loss_layer = L.TimeSoftmaxWithLoss()
        self.params, self.grads = _collect(self.layers)

    def named_layers(self) -> list[tuple[str, object]]:
        """Every layer with a name, loss included: what :func:`profile_steps` times."""
        return [
            ("embed", self.embed),
            ("lstm", self.lstm),
            ("affine", self.affine),
            ("loss", self.loss_layer),
        ]

    def predict(self, xs):
        """Token ids ``xs`` (N, T) -> scores (N, T, V)."""
        for layer in self.layers:
            xs = layer.forward(xs)
        return xs

    def forward(self, xs, ts):
        """Mean cross-entropy of the next-token scores for ``xs`` against ``ts`` (N, T)."""
        return self.loss_layer.forward(self.predict(xs), ts)

    def backward(self, dout=1):
        """Backpropagate the last loss; fills ``grads``."""
        dout = self.loss_layer.backward(dout)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def reset_state(self):
        """Forget the LSTM state (the LSTM carries it across batches: truncated BPTT)."""
        self.lstm.reset_state()

    def generate(self, start_id: int, skip_ids=None, sample_size: int = 100) -> list[int]:
        """Sample a text of ``sample_size`` ids from ``start_id`` (``RnnlmGen.generate``).

        One id per call of ``predict`` on a (1, 1) batch: softmax, then a draw from
        ``np.random.choice``. Continues from the LSTM's state; call :meth:`reset_state`
        first when the last forward had another batch size.
        """
        word_ids = [start_id]
        x = start_id
        while len(word_ids) < sample_size:
            x = np.array(x).reshape(1, 1)
            p = softmax(self.predict(x).flatten())
            sampled = np.random.choice(len(p), size=1, p=p)
            if skip_ids is None or sampled not in skip_ids:
                x = sampled
                word_ids.append(int(sampled[0]))
        return word_ids


class BetterRnnlm(Rnnlm):
    """Two LSTMs with dropout around each, and weight tying (``ch06/better_rnnlm.py``).

    The output layer is ``TimeAffine(embed_W.T, b)``: it holds a transposed view of the
    embedding matrix, and :func:`remove_duplicate` merges the two gradients.

    Parameters
    ----------
    L : layer set
        Provides ``TimeEmbedding``, ``TimeDropout``, ``TimeLSTM``, ``TimeAffine``,
        ``TimeSoftmaxWithLoss``.
    vocab_size, wordvec_size, hidden_size : int
        ``V``, ``D``, ``H``; weight tying needs ``D == H``.
    dropout_ratio : float
    """

    def __init__(self, L, vocab_size=10000, wordvec_size=650, hidden_size=650, dropout_ratio=0.5):
        V, D, H = vocab_size, wordvec_size, hidden_size
        embed_W = _embedding_weight(V, D)
        lstm1 = _lstm_weights(D, H)
        lstm2 = _lstm_weights(H, H)
        affine_b = np.zeros(V).astype("f")

        self.embed = L.TimeEmbedding(embed_W)
        self.dropouts = [L.TimeDropout(dropout_ratio) for _ in range(3)]
        self.lstms = [L.TimeLSTM(*lstm1, stateful=True), L.TimeLSTM(*lstm2, stateful=True)]
        self.affine = L.TimeAffine(embed_W.T, affine_b)  # weight tying
        self.layers = [
            self.embed,
            self.dropouts[0],
            self.lstms[0],
            self.dropouts[1],
            self.lstms[1],
            self.dropouts[2],
            self.affine,
        ]
        self.loss_layer = L.TimeSoftmaxWithLoss()
        self.params, self.grads = _collect(self.layers)

    def named_layers(self) -> list[tuple[str, object]]:
        names = ["embed", "dropout1", "lstm1", "dropout2", "lstm2", "dropout3", "affine"]
        return [*zip(names, self.layers, strict=True), ("loss", self.loss_layer)]

    def predict(self, xs, train_flg=False):
        """Scores for ``xs``; dropout only when ``train_flg``."""
        for layer in self.dropouts:
            layer.train_flg = train_flg
        return super().predict(xs)

    def forward(self, xs, ts, train_flg=True):
        """Mean cross-entropy loss, with dropout (training) by default."""
        return self.loss_layer.forward(self.predict(xs, train_flg), ts)

    def reset_state(self):
        for lstm in self.lstms:
            lstm.reset_state()

    # generate: Rnnlm's loop, whose predict() here runs without dropout
    # (BetterRnnlmGen.generate)


# --------------------------------------------------------------------------------------
# Chapter 7: seq2seq, peeky seq2seq
# --------------------------------------------------------------------------------------


class Encoder:
    """Embedding and a non-stateful LSTM; its output is the last hidden state."""

    def __init__(self, L, vocab_size, wordvec_size, hidden_size):
        V, D, H = vocab_size, wordvec_size, hidden_size
        self.embed = L.TimeEmbedding(_embedding_weight(V, D))
        self.lstm = L.TimeLSTM(*_lstm_weights(D, H), stateful=False)
        self.params, self.grads = _collect([self.embed, self.lstm])
        self.hs = None

    def named_layers(self):
        return [("encoder.embed", self.embed), ("encoder.lstm", self.lstm)]

    def forward(self, xs):
        """``xs`` (N, T) -> ``h`` (N, H), the state after the last step."""
        self.hs = self.lstm.forward(self.embed.forward(xs))
        return self.hs[:, -1, :]

    def backward(self, dh):
        dhs = np.zeros_like(self.hs)
        dhs[:, -1, :] = dh
        return self.embed.backward(self.lstm.backward(dhs))


class Decoder:
    """Embedding, a stateful LSTM started from the encoder's state, affine."""

    def __init__(self, L, vocab_size, wordvec_size, hidden_size):
        V, D, H = vocab_size, wordvec_size, hidden_size
        self.embed = L.TimeEmbedding(_embedding_weight(V, D))
        self.lstm = L.TimeLSTM(*_lstm_weights(D, H), stateful=True)
        self.affine = L.TimeAffine(*_affine_weights(H, V))
        self.params, self.grads = _collect([self.embed, self.lstm, self.affine])

    def named_layers(self):
        return [
            ("decoder.embed", self.embed),
            ("decoder.lstm", self.lstm),
            ("decoder.affine", self.affine),
        ]

    def forward(self, xs, h):
        """Teacher-forced ``xs`` (N, T) from the state ``h`` (N, H) -> scores (N, T, V)."""
        self.lstm.set_state(h)
        out = self.embed.forward(xs)
        out = self.lstm.forward(out)
        return self.affine.forward(out)

    def backward(self, dscore):
        """-> ``dh`` (N, H), the gradient of the encoder's state."""
        dout = self.affine.backward(dscore)
        dout = self.lstm.backward(dout)
        self.embed.backward(dout)
        return self.lstm.dh

    def generate(self, h, start_id: int, sample_size: int) -> list[int]:
        """Greedy decoding of ``sample_size`` ids from the state ``h`` (1, H)."""
        sampled = []
        sample_id = start_id
        self.lstm.set_state(h)
        for _ in range(sample_size):
            x = np.array(sample_id).reshape((1, 1))
            out = self.embed.forward(x)
            out = self.lstm.forward(out)
            score = self.affine.forward(out)
            sample_id = int(np.argmax(score.flatten()))
            sampled.append(sample_id)
        return sampled


class Seq2seq:
    """Encoder-decoder for the addition task (``ch07/seq2seq.py``).

    Parameters
    ----------
    L : layer set
        Provides ``TimeEmbedding``, ``TimeLSTM``, ``TimeAffine``, ``TimeSoftmaxWithLoss``
        (and ``TimeAttention`` for :class:`AttentionSeq2seq`).
    vocab_size, wordvec_size, hidden_size : int
        ``V``, ``D``, ``H``.
    """

    encoder_class = Encoder
    decoder_class = Decoder

    def __init__(self, L, vocab_size, wordvec_size, hidden_size):
        args = (L, vocab_size, wordvec_size, hidden_size)
        self.encoder = self.encoder_class(*args)
        self.decoder = self.decoder_class(*args)
        self.softmax = L.TimeSoftmaxWithLoss()
        self.params = self.encoder.params + self.decoder.params
        self.grads = self.encoder.grads + self.decoder.grads

    def named_layers(self) -> list[tuple[str, object]]:
        layers = self.encoder.named_layers() + self.decoder.named_layers()
        return [*layers, ("loss", self.softmax)]

    def forward(self, xs, ts):
        """Loss of ``ts[:, 1:]`` given ``xs`` and the teacher-forced ``ts[:, :-1]``."""
        decoder_xs, decoder_ts = ts[:, :-1], ts[:, 1:]
        h = self.encoder.forward(xs)
        score = self.decoder.forward(decoder_xs, h)
        return self.softmax.forward(score, decoder_ts)

    def backward(self, dout=1):
        dout = self.softmax.backward(dout)
        dh = self.decoder.backward(dout)
        return self.encoder.backward(dh)

    def generate(self, xs, start_id: int, sample_size: int) -> list[int]:
        """Encode ``xs`` (1, T), then decode ``sample_size`` ids greedily."""
        h = self.encoder.forward(xs)
        return self.decoder.generate(h, start_id, sample_size)


class PeekyDecoder(Decoder):
    """A decoder that also feeds the encoder's state ``h`` to the LSTM and to the affine
    layer at every step (``ch07/peeky_seq2seq.py``)."""

    def __init__(self, L, vocab_size, wordvec_size, hidden_size):
        V, D, H = vocab_size, wordvec_size, hidden_size
        self.embed = L.TimeEmbedding(_embedding_weight(V, D))
        self.lstm = L.TimeLSTM(*_lstm_weights(H + D, H), stateful=True)
        self.affine = L.TimeAffine(*_affine_weights(H + H, V))
        self.params, self.grads = _collect([self.embed, self.lstm, self.affine])
        self.H = None

    def forward(self, xs, h):
        N, T = xs.shape
        N, H = h.shape
        self.lstm.set_state(h)
        hs = np.repeat(h, T, axis=0).reshape(N, T, H)
        out = self.embed.forward(xs)
        out = np.concatenate((hs, out), axis=2)
        out = self.lstm.forward(out)
        out = np.concatenate((hs, out), axis=2)
        self.H = H
        return self.affine.forward(out)

    def backward(self, dscore):
        H = self.H
        dout = self.affine.backward(dscore)
        dout, dhs0 = dout[:, :, H:], dout[:, :, :H]
        dout = self.lstm.backward(dout)
        dembed, dhs1 = dout[:, :, H:], dout[:, :, :H]
        self.embed.backward(dembed)
        return self.lstm.dh + np.sum(dhs0 + dhs1, axis=1)

    def generate(self, h, start_id: int, sample_size: int) -> list[int]:
        sampled = []
        char_id = start_id
        self.lstm.set_state(h)
        peeky_h = h.reshape(1, 1, h.shape[1])
        for _ in range(sample_size):
            x = np.array([char_id]).reshape((1, 1))
            out = self.embed.forward(x)
            out = np.concatenate((peeky_h, out), axis=2)
            out = self.lstm.forward(out)
            out = np.concatenate((peeky_h, out), axis=2)
            score = self.affine.forward(out)
            char_id = int(np.argmax(score.flatten()))
            sampled.append(char_id)
        return sampled


class PeekySeq2seq(Seq2seq):
    """Seq2seq with the peeky decoder."""

    decoder_class = PeekyDecoder


# --------------------------------------------------------------------------------------
# Chapter 8: seq2seq with attention
# --------------------------------------------------------------------------------------


class AttentionEncoder(Encoder):
    """The encoder, returning every hidden state (N, T, H) for the attention."""

    def forward(self, xs):
        xs = self.embed.forward(xs)
        return self.lstm.forward(xs)

    def backward(self, dhs):
        dout = self.lstm.backward(dhs)
        return self.embed.backward(dout)


class AttentionDecoder:
    """Embedding, LSTM, attention over the encoder's states, affine on ``[context, h]``
    (``ch08/attention_seq2seq.py``)."""

    def __init__(self, L, vocab_size, wordvec_size, hidden_size):
        V, D, H = vocab_size, wordvec_size, hidden_size
        self.embed = L.TimeEmbedding(_embedding_weight(V, D))
        self.lstm = L.TimeLSTM(*_lstm_weights(D, H), stateful=True)
        self.attention = L.TimeAttention()
        self.affine = L.TimeAffine(*_affine_weights(2 * H, V))
        layers = [self.embed, self.lstm, self.attention, self.affine]
        self.params, self.grads = _collect(layers)

    def named_layers(self):
        names = ("embed", "lstm", "attention", "affine")
        return [(f"decoder.{name}", getattr(self, name)) for name in names]

    def forward(self, xs, enc_hs):
        """Teacher-forced ``xs`` (N, T) attending to ``enc_hs`` (N, T_enc, H)."""
        self.lstm.set_state(enc_hs[:, -1])
        out = self.embed.forward(xs)
        dec_hs = self.lstm.forward(out)
        c = self.attention.forward(enc_hs, dec_hs)
        out = np.concatenate((c, dec_hs), axis=2)
        return self.affine.forward(out)

    def backward(self, dscore):
        """-> the gradient of the encoder's states (N, T_enc, H)."""
        dout = self.affine.backward(dscore)
        H = dout.shape[2] // 2
        dc, ddec_hs0 = dout[:, :, :H], dout[:, :, H:]
        denc_hs, ddec_hs1 = self.attention.backward(dc)
        dout = self.lstm.backward(ddec_hs0 + ddec_hs1)
        denc_hs[:, -1] += self.lstm.dh
        self.embed.backward(dout)
        return denc_hs

    def generate(self, enc_hs, start_id: int, sample_size: int) -> list[int]:
        """Greedy decoding of ``sample_size`` ids attending to ``enc_hs`` (1, T_enc, H)."""
        sampled = []
        sample_id = start_id
        self.lstm.set_state(enc_hs[:, -1])
        for _ in range(sample_size):
            x = np.array([sample_id]).reshape((1, 1))
            out = self.embed.forward(x)
            dec_hs = self.lstm.forward(out)
            c = self.attention.forward(enc_hs, dec_hs)
            out = np.concatenate((c, dec_hs), axis=2)
            score = self.affine.forward(out)
            sample_id = int(np.argmax(score.flatten()))
            sampled.append(sample_id)
        return sampled


class AttentionSeq2seq(Seq2seq):
    """Seq2seq with attention, for the date-format task."""

    encoder_class = AttentionEncoder
    decoder_class = AttentionDecoder


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


class Trainer:
    """One training iteration as the book's ``Trainer.fit`` and ``RnnlmTrainer.fit`` take it.

    Parameters
    ----------
    model
        A model of this module.
    optimizer
        :class:`SGD` or :class:`Adam`.
    max_grad : float or None
        Clip the gradients' joint norm to this, as ``fit(max_grad=...)`` does.
    """

    def __init__(self, model, optimizer, max_grad: float | None):
        self.model, self.optimizer, self.max_grad = model, optimizer, max_grad

    def step(self, xs: np.ndarray, ts: np.ndarray) -> float:
        """Forward, backward and update on one batch; returns the loss."""
        loss = self.model.forward(xs, ts)
        self.model.backward()
        params, grads = remove_duplicate(self.model.params, self.model.grads)
        if self.max_grad is not None:
            clip_grads(grads, self.max_grad)
        self.optimizer.update(params, grads)
        return float(loss)


# --------------------------------------------------------------------------------------
# The book's models and settings
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A model as the book trains it: sizes, batch shapes, optimizer, clipping."""

    name: str
    build: Callable[[object], object]  # layer set -> model, at the book's sizes
    vocab_size: int
    xs_shape: tuple[int, int]
    ts_shape: tuple[int, int]
    optimizer: Callable[[], object]
    max_grad: float
    #: Ids one ``generate`` call produces in the book (Rnnlm: its ``sample_size - 1``).
    sample_size: int
    seq2seq: bool
    #: Sizes, for labels: "V=10000 D=H=100 N=20 T=35".
    sizes: str
    torch: bool = False  # a PyTorch counterpart exists (benchmarks/torch_models.py)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.sizes})"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "Rnnlm",
            lambda L: Rnnlm(L, 10000, 100, 100),
            vocab_size=10000,
            xs_shape=(20, 35),
            ts_shape=(20, 35),
            optimizer=lambda: SGD(lr=20.0),
            max_grad=0.25,
            sample_size=100,
            seq2seq=False,
            sizes="V=10000 D=H=100 N=20 T=35",
            torch=True,
        ),
        ModelSpec(
            "BetterRnnlm",
            lambda L: BetterRnnlm(L, 10000, 650, 650, dropout_ratio=0.5),
            vocab_size=10000,
            xs_shape=(20, 35),
            ts_shape=(20, 35),
            optimizer=lambda: SGD(lr=20.0),
            max_grad=0.25,
            sample_size=100,
            seq2seq=False,
            sizes="V=10000 D=H=650 N=20 T=35",
            torch=True,
        ),
        ModelSpec(
            "Seq2seq",
            lambda L: Seq2seq(L, 13, 16, 128),
            vocab_size=13,
            xs_shape=(128, 7),
            ts_shape=(128, 5),
            optimizer=Adam,
            max_grad=5.0,
            sample_size=4,
            seq2seq=True,
            sizes="V=13 D=16 H=128 N=128 T=7/4",
        ),
        ModelSpec(
            "PeekySeq2seq",
            lambda L: PeekySeq2seq(L, 13, 16, 128),
            vocab_size=13,
            xs_shape=(128, 7),
            ts_shape=(128, 5),
            optimizer=Adam,
            max_grad=5.0,
            sample_size=4,
            seq2seq=True,
            sizes="V=13 D=16 H=128 N=128 T=7/4",
        ),
        ModelSpec(
            "AttentionSeq2seq",
            lambda L: AttentionSeq2seq(L, 59, 16, 256),
            vocab_size=59,
            xs_shape=(128, 29),
            ts_shape=(128, 11),
            optimizer=Adam,
            max_grad=5.0,
            sample_size=10,
            seq2seq=True,
            sizes="V=59 D=16 H=256 N=128 T=29/10",
        ),
    )
}

_MODEL_ALIASES = {name.lower(): name for name in MODELS} | {
    "peeky": "PeekySeq2seq",
    "attention": "AttentionSeq2seq",
}


def model_name(text: str) -> str:
    """The canonical model name: ``betterrnnlm``, ``BetterRnnlm`` -> ``"BetterRnnlm"``."""
    try:
        return _MODEL_ALIASES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown model {text!r}; choose from {', '.join(MODELS)}") from None


def build_model(name: str, layers, seed: int | None = None):
    """The model ``name`` at the book's sizes on the layer set ``layers``.

    ``np.random.seed(seed)`` first (default: a fixed seed per model), so that models built
    with the same seed start from identical weights on every layer set.
    """
    np.random.seed(seed_for("model", name) if seed is None else seed)
    return MODELS[name].build(layers)


def make_trainer(name: str, layers, seed: int | None = None) -> Trainer:
    """A :class:`Trainer` for a fresh model ``name``, with the book's optimizer and clip."""
    spec = MODELS[name]
    return Trainer(build_model(name, layers, seed), spec.optimizer(), spec.max_grad)


def make_batch(name: str, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random int32 token ids ``xs``, ``ts`` of the shapes ``name`` trains on; batch
    ``index`` of a fixed sequence of batches."""
    spec = MODELS[name]
    rng = np.random.default_rng(seed_for("batch", name, index))
    xs = rng.integers(0, spec.vocab_size, spec.xs_shape).astype(np.int32)
    ts = rng.integers(0, spec.vocab_size, spec.ts_shape).astype(np.int32)
    return xs, ts


def generation_runner(name: str, model, tokens: int | None = None) -> Callable[[], list[int]]:
    """A callable returning ``tokens`` new ids (default: the book's) from ``model.generate``.

    Language models sample (softmax and ``np.random.choice``) continuing their state; their
    state is reset first, since generation runs at batch size 1. Seq2seq models encode one
    question of the training shape, then decode greedily; each call includes the encoder
    pass, as the book's ``eval_seq2seq`` does.
    """
    spec = MODELS[name]
    tokens = spec.sample_size if tokens is None else tokens
    xs, ts = make_batch(name)
    start_id = int(ts[0, 0])
    if spec.seq2seq:
        question = xs[:1]
        return lambda: model.generate(question, start_id, tokens)
    model.reset_state()
    # generate() counts the start id among its sample_size ids; it is left out here
    return lambda: model.generate(start_id, sample_size=tokens + 1)[1:]


# --------------------------------------------------------------------------------------
# Where a step's time goes
# --------------------------------------------------------------------------------------

#: Trainer parts of the breakdown (besides the layers), in step order.
TRAINER_PARTS = ("remove_duplicate", "clip_grads", "optimizer.update")
#: The breakdown's name for the model's own code between layers (concatenations, slicing,
#: zero-filled gradients, Python): the step's time minus every timed part.
MODEL_GLUE = "model (between layers)"


@dataclass
class Part:
    """A line of the breakdown: a layer (or trainer part) and its median times."""

    name: str  # "decoder.lstm", "remove_duplicate", ...
    kind: str  # the layer class ("TimeLSTM") or the trainer part's name
    forward: float | None = None  # seconds per step, median
    backward: float | None = None
    other: float | None = None  # trainer parts and the model glue

    @property
    def seconds(self) -> float:
        return sum(v for v in (self.forward, self.backward, self.other) if v is not None)


@dataclass
class StepBreakdown:
    """Median time of a training step and of each of its parts."""

    model: str
    variant: str
    steps: int
    total: float  # seconds per step, median
    parts: list[Part]

    def by_kind(self) -> dict[str, float]:
        """Seconds per step of each layer class / trainer part, in step order."""
        kinds: dict[str, float] = {}
        for part in self.parts:
            kinds[part.kind] = kinds.get(part.kind, 0.0) + part.seconds
        return kinds


@contextlib.contextmanager
def timing_hooks(trainer: Trainer, record: dict[tuple[str, str], float]) -> Iterator[None]:
    """Add, to ``record[(name, phase)]``, the time spent in every layer's ``forward`` and
    ``backward`` and in the trainer's parts, for the duration of the block.

    Each method is replaced on its instance (the module functions on this module) by a
    timing wrapper, and restored afterwards; the layers' classes are not touched.
    """
    patched: list[tuple[object, str, object, bool]] = []

    def wrap(owner, attr: str, key: tuple[str, str]):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                record[key] += time.perf_counter() - t0

        patched.append((owner, attr, original, attr in vars(owner)))
        setattr(owner, attr, timed)

    module = sys.modules[__name__]  # Trainer.step looks its helpers up here
    try:
        for name, layer in trainer.model.named_layers():
            wrap(layer, "forward", (name, "forward"))
            wrap(layer, "backward", (name, "backward"))
        wrap(module, "remove_duplicate", ("remove_duplicate", "other"))
        wrap(module, "clip_grads", ("clip_grads", "other"))
        wrap(trainer.optimizer, "update", ("optimizer.update", "other"))
        yield
    finally:
        for owner, attr, original, own in reversed(patched):
            if own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)  # the class's method shows through again


def profile_steps(name: str, variant: str, trainer: Trainer, steps: int) -> StepBreakdown:
    """Run ``steps`` training steps of ``trainer`` with every part timed.

    Each step runs on batch ``k`` of :func:`make_batch`; the lines are medians over the
    steps, the model glue is each step's total minus its timed parts. The timing wrappers
    cost about a microsecond per call, negligible against the layers.
    """
    layers = dict(trainer.model.named_layers())
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    totals, glue = [], []
    for k in range(steps):
        xs, ts = make_batch(name, k)
        record: dict[tuple[str, str], float] = defaultdict(float)
        with timing_hooks(trainer, record):
            t0 = time.perf_counter()
            trainer.step(xs, ts)
            total = time.perf_counter() - t0
        totals.append(total)
        glue.append(total - sum(record.values()))
        for key, seconds in record.items():
            samples[key].append(seconds)
    parts = []
    for layer_name, layer in layers.items():
        parts.append(
            Part(
                layer_name,
                type(layer).__name__,
                forward=statistics.median(samples[(layer_name, "forward")]),
                backward=statistics.median(samples[(layer_name, "backward")]),
            )
        )
    for part in TRAINER_PARTS:
        parts.append(Part(part, part, other=statistics.median(samples[(part, "other")])))
    parts.append(Part(MODEL_GLUE, MODEL_GLUE, other=statistics.median(glue)))
    return StepBreakdown(name, variant, steps, statistics.median(totals), parts)
