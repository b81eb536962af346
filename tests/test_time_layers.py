"""``fastrnn.time_layers``: the one-line swap of the book's time layers."""

from __future__ import annotations

import fastrnn
from fastrnn import reference, time_layers

#: The time layers of the book's common/time_layers.py and ch08/attention_layer.py, less
#: the slow expository variants Simple_TimeAffine and Simple_TimeSoftmaxWithLoss.
BOOK_TIME_LAYERS = {
    "RNN", "TimeRNN", "LSTM", "TimeLSTM", "GRU", "TimeGRU", "TimeBiLSTM",
    "TimeEmbedding", "TimeAffine", "TimeSoftmaxWithLoss", "TimeSigmoidWithLoss", "TimeDropout",
    "WeightSum", "AttentionWeight", "Attention", "TimeAttention",
}  # fmt: skip


def test_star_import_swaps_every_book_time_layer():
    namespace = {}
    exec("from fastrnn.time_layers import *", namespace)  # what a user's script does
    swapped = {name for name in namespace if not name.startswith("__")}
    assert swapped == BOOK_TIME_LAYERS


def test_every_layer_is_exported_top_level_and_has_a_reference():
    for name in BOOK_TIME_LAYERS:
        assert getattr(fastrnn, name) is getattr(time_layers, name)
        assert callable(getattr(reference, name)), name
        assert getattr(reference, name) is not getattr(fastrnn, name)
