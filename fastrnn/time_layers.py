"""The book's time layers, every one compiled: a drop-in for ``common/time_layers.py``.

One line after the book's own imports swaps all of them::

    from common.time_layers import *
    from fastrnn.time_layers import *  # the same classes, fused into Numba kernels

Chapter 8's ``TimeAttention`` (and ``Attention``, ``AttentionWeight``, ``WeightSum``) come
from ``ch08/attention_layer.py`` in the book; import them from here after that import too.

The classes keep the book's names, constructors, ``params``/``grads`` lists, methods and
attributes; :mod:`fastrnn.reference` holds the plain-NumPy versions they are tested
against. Names of the book's modules that are not time layers (``Affine``, ``Softmax``,
``Embedding``, the functions) are not replaced.
"""

from __future__ import annotations

from .attention_layers import Attention, AttentionWeight, TimeAttention, WeightSum
from .layers import GRU, LSTM, RNN, TimeBiLSTM, TimeGRU, TimeLSTM, TimeRNN
from .sequence_layers import (
    TimeAffine,
    TimeDropout,
    TimeEmbedding,
    TimeSigmoidWithLoss,
    TimeSoftmaxWithLoss,
)

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "TimeRNN",
    "TimeLSTM",
    "TimeGRU",
    "TimeBiLSTM",
    "TimeEmbedding",
    "TimeAffine",
    "TimeSoftmaxWithLoss",
    "TimeSigmoidWithLoss",
    "TimeDropout",
    "WeightSum",
    "AttentionWeight",
    "Attention",
    "TimeAttention",
]
