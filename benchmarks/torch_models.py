"""The book's language models in PyTorch, for the end-to-end comparison.

:class:`TorchRnnlm` is ``Rnnlm`` (one LSTM) or ``BetterRnnlm`` (two LSTMs, dropout before
and after each, the output layer's weight tied to the embedding) built from
``nn.Embedding``, ``nn.LSTM``, ``nn.Dropout`` and ``nn.Linear``; its LSTMs carry their state
across batches (detached, i.e. truncated BPTT) as the book's stateful ``TimeLSTM`` does.
:class:`TorchTrainer` takes the book's training step: cross-entropy averaged over the
batch, backward, gradient-norm clipping (``clip_grad_norm_`` computes the book's
``clip_grads``), plain SGD. Tied weights are one parameter here, so PyTorch sums their
gradients itself, where the book calls ``remove_duplicate``.

:func:`from_book` copies a NumPy model's weights (gates reordered from the book's
``f, g, i, o`` to PyTorch's ``i, f, g, o``; the book's single LSTM bias goes to ``bias_ih``,
and ``bias_hh`` stays zero and frozen),
so that both start from the same parameters and, without dropout, compute the same losses.
Importing this module imports torch.
"""

from __future__ import annotations

import numpy as np
import torch
from book_models import MODELS, BetterRnnlm, Rnnlm, softmax
from torch import nn
from torch.nn import functional as F


class TorchRnnlm(nn.Module):
    """Embedding, ``lstm_layers`` stateful LSTMs with dropout around each, linear.

    Parameters
    ----------
    vocab_size, wordvec_size, hidden_size : int
        ``V``, ``D``, ``H``.
    lstm_layers : int
        1 for Rnnlm, 2 for BetterRnnlm.
    dropout_ratio : float
        0 for none (Rnnlm).
    tie_weights : bool
        Share the embedding matrix with the output layer (needs ``D == H``).
    """

    def __init__(
        self,
        vocab_size: int,
        wordvec_size: int,
        hidden_size: int,
        lstm_layers: int = 1,
        dropout_ratio: float = 0.0,
        tie_weights: bool = False,
    ):
        super().__init__()
        V, D, H = vocab_size, wordvec_size, hidden_size
        self.embed = nn.Embedding(V, D)
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio else nn.Identity()
        self.lstms = nn.ModuleList(
            nn.LSTM(D if k == 0 else H, H, batch_first=True) for k in range(lstm_layers)
        )
        for lstm in self.lstms:
            # The book's LSTM has one bias; a trained second one would double its update
            # and its share of the clipped norm.
            lstm.bias_hh_l0.requires_grad_(False)
            nn.init.zeros_(lstm.bias_hh_l0)
        self.affine = nn.Linear(H, V)
        if tie_weights:
            self.affine.weight = self.embed.weight
        self.states: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * lstm_layers

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """Token ids (N, T) -> scores (N, T, V); the LSTM states carry over to the next call."""
        out = self.embed(xs)
        for k, lstm in enumerate(self.lstms):
            out, (h, c) = lstm(self.dropout(out), self.states[k])
            self.states[k] = (h.detach(), c.detach())  # truncated BPTT, as the book's
        return self.affine(self.dropout(out))

    def reset_state(self) -> None:
        """Forget the LSTM states."""
        self.states = [None] * len(self.lstms)


def _torch_gates(W: np.ndarray) -> np.ndarray:
    # The book packs the gates f, g, i, o along the last axis; PyTorch i, f, g, o.
    f, g, i, o = np.split(W, 4, axis=-1)
    return np.concatenate((i, f, g, o), axis=-1)


def from_book(model) -> TorchRnnlm:
    """A :class:`TorchRnnlm` with the weights of the book's ``Rnnlm`` or ``BetterRnnlm``."""
    embed_W = model.embed.params[0]
    V, D = embed_W.shape
    lstms = model.lstms if isinstance(model, BetterRnnlm) else [model.lstm]
    H = lstms[0].params[1].shape[0]
    tie = isinstance(model, BetterRnnlm)
    dropout = model.dropouts[0].dropout_ratio if tie else 0.0
    net = TorchRnnlm(V, D, H, len(lstms), dropout, tie_weights=tie)
    with torch.no_grad():
        net.embed.weight.copy_(torch.from_numpy(embed_W))
        for lstm, book_lstm in zip(net.lstms, lstms, strict=True):
            Wx, Wh, b = book_lstm.params
            lstm.weight_ih_l0.copy_(torch.from_numpy(_torch_gates(Wx).T.copy()))
            lstm.weight_hh_l0.copy_(torch.from_numpy(_torch_gates(Wh).T.copy()))
            lstm.bias_ih_l0.copy_(torch.from_numpy(_torch_gates(b)))
        affine_W, affine_b = model.affine.params
        if not tie:
            net.affine.weight.copy_(torch.from_numpy(affine_W.T.copy()))
        net.affine.bias.copy_(torch.from_numpy(affine_b))
    return net


class TorchTrainer:
    """The book's training step and text generation for a :class:`TorchRnnlm`.

    Parameters
    ----------
    model : TorchRnnlm
    lr : float
        SGD's learning rate.
    max_grad : float
        Gradient-norm clipping threshold.
    """

    def __init__(self, model: TorchRnnlm, lr: float, max_grad: float):
        self.model, self.max_grad = model, max_grad
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, xs: torch.Tensor, ts: torch.Tensor) -> float:
        """One training step on int64 ids ``xs``, ``ts`` (N, T); returns the loss."""
        self.model.train()
        scores = self.model(xs)
        loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), ts.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad)
        self.optimizer.step()
        return loss.item()

    def generate(self, start_id: int, sample_size: int = 100) -> list[int]:
        """``RnnlmGen.generate``: one id per (1, 1) forward pass, no dropout, sampled with
        the book's softmax and ``np.random.choice``, as the NumPy models do."""
        self.model.eval()
        word_ids = [start_id]
        x = torch.tensor([[start_id]])
        with torch.no_grad():
            while len(word_ids) < sample_size:
                score = self.model(x).numpy().flatten()
                p = softmax(score)
                sampled = int(np.random.choice(len(p), size=1, p=p)[0])
                word_ids.append(sampled)
                x = torch.tensor([[sampled]])
        return word_ids


def make_torch_trainer(name: str, book_model) -> TorchTrainer:
    """A :class:`TorchTrainer` on a copy of ``book_model`` (``Rnnlm`` or ``BetterRnnlm``)
    with the book's learning rate and clipping for the model ``name``."""
    spec = MODELS[name]
    if not spec.torch or not isinstance(book_model, Rnnlm):
        raise ValueError(f"{name} has no PyTorch counterpart here")
    return TorchTrainer(from_book(book_model), spec.optimizer().lr, spec.max_grad)


def torch_batch(xs: np.ndarray, ts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64 tensors ``nn.Embedding`` and ``cross_entropy`` take."""
    return torch.from_numpy(xs.astype(np.int64)), torch.from_numpy(ts.astype(np.int64))
