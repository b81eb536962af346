"""fastrnn: Numba-compiled, drop-in time layers for *Deep Learning from Scratch 2*.

Swap the book's layers with one line after its own imports::

    from common.time_layers import *
    from fastrnn.time_layers import *

or import single classes (``from fastrnn import TimeLSTM``): the same constructors,
``params``/``grads``, ``forward``/``backward`` and stateful API, the same numbers, with the
time loops fused into compiled kernels.

The plain-NumPy layers that define "the same numbers" are in :mod:`fastrnn.reference`.
"""

from .time_layers import (
    GRU,
    LSTM,
    RNN,
    Attention,
    AttentionWeight,
    TimeAffine,
    TimeAttention,
    TimeBiLSTM,
    TimeDropout,
    TimeEmbedding,
    TimeGRU,
    TimeLSTM,
    TimeRNN,
    TimeSigmoidWithLoss,
    TimeSoftmaxWithLoss,
    WeightSum,
)

__version__ = "0.1.0"

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
    "__version__",
]
