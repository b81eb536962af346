"""fastrnn: Numba-compiled, drop-in recurrent layers for *Deep Learning from Scratch 2*.

Swap ``from common.time_layers import TimeRNN`` for ``from fastrnn import TimeRNN``: the same
constructor, ``params``/``grads``, ``forward``/``backward`` and stateful API, the same numbers,
with the time loops of the forward pass and of BPTT fused into compiled kernels.

The plain-NumPy layers that define "the same numbers" are in :mod:`fastrnn.reference`.
"""

from .layers import GRU, LSTM, RNN, TimeBiLSTM, TimeGRU, TimeLSTM, TimeRNN

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "TimeRNN",
    "TimeLSTM",
    "TimeGRU",
    "TimeBiLSTM",
    "__version__",
]
