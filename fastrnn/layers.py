"""Drop-in replacements for the recurrent layers of *Deep Learning from Scratch 2*.

Each class has the book's constructor, ``params``/``grads`` lists and methods, and gives the
same numbers as :mod:`fastrnn.reference`, but runs the whole time loop of the forward pass
and of BPTT in one compiled kernel (:mod:`fastrnn._kernels`).

What the classes guarantee, so that the book's trainers and optimizers keep working:

* ``params`` holds the caller's arrays, never copies: an optimizer may update them in place
  between calls, and the next call uses the new values.
* ``grads`` are allocated once, with the parameters' shapes, and written in place.
* ``forward`` returns a fresh array every call; ``h`` (and ``c``) are fresh arrays too.
* Inputs may be any strided view and any real float dtype; the work is done in the
  parameters' dtype (float32 or float64).
* Every argument is checked before any kernel runs; a layer that raised stays usable.

Shapes: ``N`` batch, ``T`` time steps, ``D`` input size, ``H`` hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels as kernels
from . import _tiles as tiles
from ._planner import generation as plan_generation
from ._planner import plan
from ._validation import (
    RepeatedCall,
    check_grads,
    check_params,
    check_sequence,
    check_state,
    check_step,
    require_array,
    require_float,
)
from ._workspace import Workspace, fits_kernels, kernel_ready

__all__ = ["RNN", "LSTM", "GRU", "TimeRNN", "TimeLSTM", "TimeGRU", "TimeBiLSTM"]

#: Gate values of one step per thread, above which an LSTM or GRU step's element-wise work
#: (about a nanosecond per gate value) is split by batch rows between the BLAS library's
#: threads: from twice this many, a thread's share outweighs handing it over.
CELL_VALUES_PER_THREAD = 1 << 11


# --------------------------------------------------------------------------------------
# Recurrences: one per cell type. They own the workspaces and the saved activations, and
# are the only code that calls the kernels. Arguments arrive already validated.
# --------------------------------------------------------------------------------------


class _Recurrence:
    """Runs one cell type over a time-major sequence, keeping what BPTT needs."""

    gates = 1
    has_cell_state = False
    #: What the forward kernel keeps per step for BPTT besides the states and the gates.
    step_activations: tuple[str, ...] = ()

    def __init__(self):
        self.ws = Workspace()
        self.saved = None  # what the last forward left for backward
        self._forward_views = None  # (shape key, _ForwardViews) of the last forward

    def forward(self, xs, Wx, Wh, b, h0, c0):
        """Run the sequence ``xs`` (N, T, D), starting from ``h0`` (and ``c0``).

        ``xs``, ``h0`` and ``c0`` may have any float dtype and strides; ``h0``/``c0`` may be
        None for zeros. Returns the states ``hs`` (N, T, H), a fresh array, and the final
        ``h`` and ``c`` (None without a cell state), workspace views.
        """
        dtype, ws = Wx.dtype, self.ws
        return self.forward_ready(
            kernel_ready(xs, dtype, ws, "xs_in"),
            Wx,
            Wh,
            b,
            None if h0 is None else kernel_ready(h0, dtype, ws, "h0"),
            None if c0 is None else kernel_ready(c0, dtype, ws, "c0"),
        )

    def forward_ready(self, xs, Wx, Wh, b, h0, c0):
        """:meth:`forward` for arguments that already :func:`fits_kernels` in ``Wx``'s
        dtype (the states None or so): the kernel copies them into its workspaces."""
        N, T, D = xs.shape
        views = self._views_for(N, T, D, Wh.shape[0], Wx.dtype)
        if views.routes.forward_transposes:
            _copy_transposed(views.WhT, Wh)
        pool = tiles.thread_pool(Wx.dtype) if views.panels.shape[0] else tiles.UNUSED_POOL
        hs = np.empty(views.hs_shape, Wx.dtype)  # fresh on every call; the kernel fills it
        no_state = views.no_state
        self._run_forward(
            hs,
            views,
            pool,
            xs,
            no_state if h0 is None else h0,
            no_state if c0 is None else c0,
            Wx,
            Wh,
            b,
        )
        saved = self.saved
        if saved is None or saved["views"] is not views:
            saved = self.saved = dict(
                xs=views.xs_tm,
                h_hist=views.h_hist,
                c_hist=views.c_hist,
                activations=views.activations,
                routes=views.routes,
                views=views,
            )
        saved["Wx"], saved["Wh"], saved["b"] = Wx, Wh, b
        return hs, views.h_last, views.c_last

    def _views_for(self, N, T, D, H, dtype):
        """The forward's workspace views and plan for this shape.

        Remembered for the next call at the same shape, so that a loop of calls (a decoder
        runs thousands at N = T = 1) costs one comparison here instead of a dozen lookups.
        """
        key = (N, T, D, H, dtype, plan_generation())
        last = self._forward_views
        if last is not None and last[0] == key:
            return last[1]
        ws = self.ws
        # The planner decides whether the per-step products run against a copy of Wh.T.
        routes = plan(self.gates, N, T, H, dtype)
        WhT = self._WhT_buffer(H, dtype, routes.forward_transposes)
        panel_count = kernels.forward_panel_count(self.gates, H) if routes.forward_packs else 0
        h_hist = ws.take("h_hist", (T + 1, N, H), dtype)
        c_hist = ws.take("c_hist", (T + 1, N, H), dtype) if self.has_cell_state else None
        views = _ForwardViews(
            xs_tm=ws.take("xs", (T, N, D), dtype),
            h_hist=h_hist,
            c_hist=c_hist,
            WhT=WhT,
            scratchT=ws.take("scratchT", (WhT.shape[0], N), dtype),
            panels=ws.take("panels", (panel_count, H, tiles.PANEL), dtype),
            routes=routes,
            activations=self._activation_views(T, N, H, dtype),
            hs_shape=(N, T, H),
            h_last=h_hist[T],
            c_last=None if c_hist is None else c_hist[T],
            no_state=ws.take("no_state", (0, H), dtype),
        )
        self._forward_views = (key, views)
        return views

    def backward(self, dhs, grads, dh_last, dc_last):
        """Backpropagate ``dhs`` (N, T, H) through the last forward.

        ``grads`` receive the parameter gradients in place. ``dh_last``/``dc_last`` are
        gradients arriving at the final state (None for zeros). Returns ``dxs`` time-major
        (T, N, D) and the gradients of the initial ``h`` and ``c``, as workspace views.
        """
        saved = self.saved
        xs_tm, Wx, Wh = saved["xs"], saved["Wx"], saved["Wh"]
        T, N, D = xs_tm.shape
        H = Wh.shape[0]
        dtype = Wx.dtype
        ws = self.ws
        dhs = kernel_ready(dhs, dtype, ws, "dhs")
        dxs_tm = ws.take("dxs", (T, N, D), dtype)
        dh = ws.take("dh", (N, H), dtype)
        _set_initial(dh, dh_last)
        dc = None
        if self.has_cell_state:
            dc = ws.take("dc", (N, H), dtype)
            _set_initial(dc, dc_last)
        # Kernels write straight into grads[i] when it has the right layout and dtype
        # (always, unless a caller replaced it); otherwise into scratch, copied after.
        targets = [
            g if fits_kernels(g, dtype) else ws.take(f"grad{i}", g.shape, dtype)
            for i, g in enumerate(grads)
        ]
        dhT = ws.take("dhT", (H, N), dtype)
        routes = saved["routes"]
        WhT = self._WhT_buffer(H, dtype, routes.backward_transposes)
        if routes.backward_transposes:
            _copy_transposed(WhT, Wh)
        packed = routes.backward_packs
        G = self.gates * H
        panels = ws.take("panelsT", (tiles.panel_count(H) if packed else 0, G, tiles.PANEL), dtype)
        pool = tiles.thread_pool(dtype) if packed else tiles.UNUSED_POOL
        self._run_backward(
            dxs_tm, targets, dh, dc, dhT, WhT, routes.backward_code, panels, pool, dhs, saved
        )
        for g, target in zip(grads, targets, strict=True):
            if target is not g:
                g[...] = target
        return dxs_tm, dh, dc

    def _WhT_buffer(self, H, dtype, wanted):
        """The workspace for a contiguous ``Wh.T``, (G*H, H) when ``wanted``, else an empty
        (0, H) array, which tells the kernels to use ``Wh`` itself. Forward and backward
        share it; each fills it with :func:`_copy_transposed` on every call that uses it."""
        return self.ws.take("WhT", (self.gates * H if wanted else 0, H), dtype)

    def saved_params(self):
        """The parameter arrays the last forward used, which backward will use too."""
        return [self.saved[name] for name in ("Wx", "Wh", "b")]

    def _activation_views(self, T, N, H, dtype) -> dict:
        """Workspace views for what the forward kernel saves besides the states: the
        activated gates (T, N, G*H) and the cell's :attr:`step_activations`, (T, N, H) each."""
        if not self.step_activations:
            return {}
        views = {"gates": self.ws.take("gates", (T, N, self.gates * H), dtype)}
        for name in self.step_activations:
            views[name] = self.ws.take(name, (T, N, H), dtype)
        return views

    def _run_forward(self, hs, views, pool, xs, h0, c0, Wx, Wh, b):
        raise NotImplementedError

    def _run_backward(self, dxs_tm, grads, dh, dc, dhT, WhT, route, panels, pool, dhs, saved):
        raise NotImplementedError


@dataclass(frozen=True)
class _ForwardViews:
    """What a forward at one shape runs on: workspace views and the planner's routes."""

    xs_tm: np.ndarray  # (T, N, D)
    h_hist: np.ndarray  # (T + 1, N, H)
    c_hist: np.ndarray | None  # (T + 1, N, H), LSTM only
    WhT: np.ndarray  # (G*H, H), or (0, H) when the forward products use Wh itself
    scratchT: np.ndarray  # (G*H or 0, N)
    # (forward_panel_count(gates, H), H, 16) for packed products, else (0, H, 16)
    panels: np.ndarray
    routes: object  # the planner's Plan
    activations: dict  # the cell's saved activations, by name
    hs_shape: tuple  # (N, T, H)
    h_last: np.ndarray  # h_hist[T], the final state
    c_last: np.ndarray | None  # c_hist[T]
    no_state: np.ndarray  # (0, H): tells the kernel to start from zeros


def _copy_transposed(WhT, Wh):
    """``WhT[...] = Wh.T``, on every call that uses it: ``Wh`` may have changed in place
    since the last one (an optimizer step)."""
    np.copyto(WhT, Wh.T)


def _set_initial(buffer, value):
    if value is None:
        buffer.fill(0)
    else:
        np.copyto(buffer, value, casting="same_kind")


class _RNNRecurrence(_Recurrence):
    gates = 1

    def _run_forward(self, hs, views, pool, xs, h0, c0, Wx, Wh, b):
        kernels.rnn_forward(
            hs, views.h_hist, views.scratchT, views.xs_tm, xs, h0, Wx, Wh, b, views.WhT,
            views.panels, pool,
        )  # fmt: skip

    def _run_backward(self, dxs_tm, grads, dh, dc, dhT, WhT, route, panels, pool, dhs, saved):
        dA = self.ws.take("dA", (dhs.shape[1], dhs.shape[0], dhs.shape[2]), dh.dtype)
        kernels.rnn_backward(
            dxs_tm,
            *grads,
            dh,
            dhT,
            dA,
            dhs,
            saved["h_hist"],
            saved["xs"],
            saved["Wx"],
            saved["Wh"],
            WhT,
            route,
            panels,
            pool,
        )


def _cell_pool(gates, worker=kernels.lstm_cell_worker):
    """The threads to split the batch rows of a step of ``gates`` (T, N, G*H) between: the
    calling thread's pool for ``worker`` (:func:`fastrnn._kernels.lstm_cell_worker` or
    :func:`~fastrnn._kernels.gru_cell_worker`), set to as many threads as the BLAS uses and
    the step's gate values fill, or ``UNUSED_POOL`` to stay on the calling thread."""
    rows, gate_values = gates.shape[1], gates.shape[1] * gates.shape[2]
    return tiles.row_pool(gates.dtype, worker, rows, gate_values, CELL_VALUES_PER_THREAD)


class _LSTMRecurrence(_Recurrence):
    gates = 4
    has_cell_state = True
    step_activations = ("tanh_c",)

    def _run_forward(self, hs, views, pool, xs, h0, c0, Wx, Wh, b):
        act = views.activations
        gates = act["gates"]
        kernels.lstm_forward(
            hs,
            gates,
            views.c_hist,
            act["tanh_c"],
            views.h_hist,
            views.scratchT,
            views.xs_tm,
            xs,
            h0,
            c0,
            Wx,
            Wh,
            b,
            views.WhT,
            views.panels,
            pool,
            _cell_pool(gates),
        )

    def _run_backward(self, dxs_tm, grads, dh, dc, dhT, WhT, route, panels, pool, dhs, saved):
        act = saved["activations"]
        gates = act["gates"]
        dA = self.ws.take("dA", gates.shape, dh.dtype)
        kernels.lstm_backward(
            dxs_tm,
            *grads,
            dh,
            dc,
            dhT,
            dA,
            dhs,
            gates,
            saved["c_hist"],
            act["tanh_c"],
            saved["h_hist"],
            saved["xs"],
            saved["Wx"],
            saved["Wh"],
            WhT,
            route,
            panels,
            pool,
            _cell_pool(gates),
        )


class _GRURecurrence(_Recurrence):
    gates = 3
    step_activations = ("rh",)

    def _run_forward(self, hs, views, pool, xs, h0, c0, Wx, Wh, b):
        act = views.activations
        gates = act["gates"]
        kernels.gru_forward(
            hs, gates, act["rh"], views.h_hist, views.scratchT, views.xs_tm, xs, h0,
            Wx, Wh, b, views.WhT, views.panels, pool, _cell_pool(gates, kernels.gru_cell_worker),
        )  # fmt: skip

    def _run_backward(self, dxs_tm, grads, dh, dc, dhT, WhT, route, panels, pool, dhs, saved):
        act = saved["activations"]
        dA = self.ws.take("dA", act["gates"].shape, dh.dtype)
        dhr = self.ws.take("dhr", dh.shape, dh.dtype)
        kernels.gru_backward(
            dxs_tm,
            *grads,
            dh,
            dhr,
            dhT,
            dA,
            dhs,
            act["gates"],
            act["rh"],
            saved["h_hist"],
            saved["xs"],
            saved["Wx"],
            saved["Wh"],
            WhT,
            route,
            panels,
            pool,
            _cell_pool(act["gates"], kernels.gru_cell_worker),
        )


def _to_batch_major(tm):
    """A fresh C-contiguous (N, T, .) copy of a time-major (T, N, .) buffer."""
    # Not np.ascontiguousarray: with N == 1 or T == 1 the transpose is already contiguous
    # and that would return a view of the workspace.
    return tm.transpose(1, 0, 2).copy()


# --------------------------------------------------------------------------------------
# Time layers
# --------------------------------------------------------------------------------------


class _TimeLayer:
    """``forward``/``backward`` over whole sequences, with the book's stateful semantics."""

    _recurrence = _Recurrence

    def __init__(self, Wx, Wh, b, stateful=False):
        check_params([Wx, Wh, b], self._recurrence.gates, type(self).__name__)
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros(p.shape, dtype=p.dtype) for p in self.params]
        self.h = None
        self.dh = None
        self.stateful = stateful
        self._engine = self._recurrence()
        self._last_shape = None  # (N, T, H) of the last forward, which backward must match
        self._last_call = None  # what the last forward validated (see _repeated_call)
        if self._engine.has_cell_state:
            self.c = None

    def set_state(self, h):
        """Set the hidden state used by the next stateful ``forward``: ``h`` (N, H).

        ``None`` forgets the state, as in the book.
        """
        if h is not None:
            H = check_params(self.params, self._recurrence.gates, type(self).__name__)[1]
            check_state("h", h, None, H.shape[0])
        self.h = h

    def reset_state(self):
        """Forget the hidden state: the next ``forward`` starts from zeros."""
        self.h = None
        if self._engine.has_cell_state:
            self.c = None

    def _check_forward(self, xs):
        """Validate a forward call; return what it needs. Changes nothing."""
        Wx, Wh, b = check_params(self.params, self._recurrence.gates, type(self).__name__)
        D, H = Wx.shape[0], Wh.shape[0]
        N, T = check_sequence("xs", xs, D, "D")
        h0 = c0 = None
        if self.stateful:
            hint = "; call reset_state() when the batch size changes"
            if self.h is not None:
                check_state("h", self.h, N, H, hint)
                h0 = self.h
            if self._engine.has_cell_state and self.c is not None:
                check_state("c", self.c, N, H, hint)
                c0 = self.c
        return xs, Wx, Wh, b, h0, c0

    def _repeated_call(self, xs):
        """The checked arguments of ``forward(xs)`` if the call repeats the last one, else
        None (check afresh).

        A repeat has the same parameter objects, with the shapes, strides and dtypes they
        had; an ``xs`` of the shape and dtype that was checked; and, when stateful, the very
        state arrays the last call left, unchanged in shape and dtype. The checks of
        :meth:`_check_forward` hold for it, and it skips them: a decoding loop calls with
        N = T = 1 thousands of times, where they cost as much as the kernel.
        """
        last = self._last_call
        if last is None or not last.repeats(self.params, xs):
            return None
        Wx, Wh, b = last.params
        h0 = c0 = None
        if self.stateful:
            h0, c0 = self.h, getattr(self, "c", None)
            left_h, left_c = last.ready  # the states the last call left
            if h0 is not left_h or c0 is not left_c:
                return None
            state_shape = (xs.shape[0], Wh.shape[0])  # (N, H), as the last call left them
            for state in (h0, c0):
                if state is not None and (state.shape != state_shape or state.dtype != Wx.dtype):
                    return None
        return xs, Wx, Wh, b, h0, c0

    def _run_forward(self, xs, Wx, Wh, b, h0, c0, ready=False):
        """Run the engine and keep the states it left; ``ready`` when every array already
        :func:`fits_kernels` (a repeated call's own states)."""
        run = self._engine.forward_ready if ready else self._engine.forward
        hs, h_last, c_last = run(xs, Wx, Wh, b, h0, c0)
        self.h = h_last.copy()
        if c_last is not None:
            self.c = c_last.copy()
        self._last_shape = hs.shape
        return hs

    def _remember_call(self, xs, Wx, Wh, b):
        """Record a checked forward, for :meth:`_repeated_call`."""
        params = self.params
        if (
            type(params) is list
            and len(params) == 3
            and params[0] is Wx
            and params[1] is Wh
            and params[2] is b
        ):
            # The parameters ran as they are (not as contiguous copies): a repeat of this
            # call may skip the checks. ready: the states it left.
            self._last_call = RepeatedCall(params, xs, (self.h, getattr(self, "c", None)))
        else:
            self._last_call = None

    def forward(self, xs):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        xs : (N, T, D) array
            Any real float dtype and any strides; computed in the parameters' dtype.

        Returns
        -------
        hs : (N, T, H) array
            The hidden state after every step, a fresh array in the parameters' dtype.
        """
        args = self._repeated_call(xs)
        if args is None:
            args = self._check_forward(xs)
            hs = self._run_forward(*args)
            self._remember_call(*args[:4])
        else:
            # The states are the layer's own copies from the last call, checked in shape
            # and dtype: only xs may need converting.
            xs, Wx, Wh, b, h0, c0 = args
            xs = kernel_ready(xs, Wx.dtype, self._engine.ws, "xs_in")
            hs = self._run_forward(xs, Wx, Wh, b, h0, c0, ready=True)
            # the same call, but for the states it leaves
            self._last_call.ready = (self.h, getattr(self, "c", None))
        return hs

    def _check_backward(self, dhs, width_factor=1):
        """Validate a backward call against the last forward. Changes nothing."""
        if self._last_shape is None:
            raise ValueError(f"{type(self).__name__}.backward() called before forward()")
        N, T, H = self._last_shape
        check_grads(self.grads, self._engine.saved_params())
        require_array("dhs", dhs)
        require_float("dhs", dhs)
        expected = (N, T, H * width_factor)
        if dhs.shape != expected:
            raise ValueError(
                f"dhs must have the shape of the last forward's output {expected}, got {dhs.shape}"
            )
        return dhs

    def _run_backward(self, dhs):
        dxs_tm, dh, _ = self._engine.backward(dhs, self.grads, None, None)
        self.dh = dh.copy()
        return _to_batch_major(dxs_tm)

    def backward(self, dhs):
        """Backpropagate through the last ``forward``.

        Parameters
        ----------
        dhs : (N, T, H) array
            Gradient of the loss with respect to ``hs``.

        Returns
        -------
        dxs : (N, T, D) array
            Gradient with respect to ``xs``. ``grads`` are overwritten in place with the
            parameter gradients, and ``dh`` (N, H) is the gradient of the initial state.
        """
        return self._run_backward(self._check_backward(dhs))


class TimeRNN(_TimeLayer):
    """A plain RNN over ``T`` steps: ``h_t = tanh(h_{t-1} @ Wh + x_t @ Wx + b)``.

    Parameters
    ----------
    Wx : (D, H) array
    Wh : (H, H) array
    b : (H,) array
        float32 or float64, one dtype. Kept by reference in ``params``.
    stateful : bool
        Carry ``h`` from one ``forward`` call to the next.
    """

    _recurrence = _RNNRecurrence


class TimeGRU(_TimeLayer):
    """A GRU over ``T`` steps, gates ``z, r, h~`` as in the book.

    ``z = σ(x@Wxz + h@Whz + bz)``, ``r = σ(x@Wxr + h@Whr + br)``,
    ``h~ = tanh(x@Wxh + (r*h)@Whh + bh)``, ``h_next = (1 - z) * h + z * h~``.

    Parameters
    ----------
    Wx : (D, 3H) array
    Wh : (H, 3H) array
    b : (3H,) array
        float32 or float64, one dtype. Kept by reference in ``params``.
    stateful : bool
        Carry ``h`` from one ``forward`` call to the next.
    """

    _recurrence = _GRURecurrence


class TimeLSTM(_TimeLayer):
    """An LSTM over ``T`` steps, gates packed ``f, g, i, o`` as in the book.

    Parameters
    ----------
    Wx : (D, 4H) array
    Wh : (H, 4H) array
    b : (4H,) array
        float32 or float64, one dtype. Kept by reference in ``params``.
    stateful : bool
        Carry ``h`` and ``c`` from one ``forward`` call to the next.

    Attributes
    ----------
    h, c : (N, H) arrays or None
        The hidden and cell state after the last ``forward``.
    dh : (N, H) array or None
        Gradient of the initial hidden state, after ``backward``.
    """

    _recurrence = _LSTMRecurrence

    def set_state(self, h, c=None):
        """Set the states used by the next stateful ``forward``: ``h``, ``c`` (N, H).

        A missing ``c`` means zeros; ``None`` for ``h`` means zeros too, as in the book.
        """
        H = check_params(self.params, 4, type(self).__name__)[1].shape[0]
        if h is not None:
            check_state("h", h, None, H)
        if c is not None:
            check_state("c", c, None if h is None else h.shape[0], H)
        self.h, self.c = h, c


class TimeBiLSTM:
    """Two LSTMs over the same sequence, one forwards and one backwards in time.

    Parameters
    ----------
    Wx1, Wh1, b1 : arrays
        Parameters of the forward LSTM: (D, 4H), (H, 4H), (4H,).
    Wx2, Wh2, b2 : arrays
        Parameters of the backward LSTM, same shapes.
    stateful : bool
        Passed to both LSTMs.

    Notes
    -----
    ``forward`` returns ``hs`` (N, T, 2H): ``hs[..., :H]`` from the forward LSTM and
    ``hs[..., H:]`` from the backward one, re-aligned so that ``hs[:, t]`` belongs to step
    ``t``. ``params`` and ``grads`` are the two LSTMs' lists joined.
    """

    def __init__(self, Wx1, Wh1, b1, Wx2, Wh2, b2, stateful=False):
        self.forward_lstm = TimeLSTM(Wx1, Wh1, b1, stateful)
        self.backward_lstm = TimeLSTM(Wx2, Wh2, b2, stateful)
        # Both directions read the same xs and fill halves of one output: same sizes.
        for name, p1, p2 in (("Wh", Wh1, Wh2), ("Wx", Wx1, Wx2)):
            if p1.shape != p2.shape:
                raise ValueError(
                    f"{name}2 must have the shape of {name}1 {p1.shape}, got {p2.shape}"
                )
        self.params = self.forward_lstm.params + self.backward_lstm.params
        self.grads = self.forward_lstm.grads + self.backward_lstm.grads

    def forward(self, xs):
        """``xs`` (N, T, D) -> ``hs`` (N, T, 2H), a fresh array."""
        # Validate both directions before running either, so an error changes nothing.
        forward_args = self.forward_lstm._check_forward(xs)
        backward_args = self.backward_lstm._check_forward(xs[:, ::-1])
        if forward_args[2].shape != backward_args[2].shape:
            raise ValueError(
                f"Wh1 {forward_args[2].shape} and Wh2 {backward_args[2].shape} must have "
                "the same shape"
            )
        o1 = self.forward_lstm._run_forward(*forward_args)
        o2 = self.backward_lstm._run_forward(*backward_args)
        return np.concatenate((o1, o2[:, ::-1]), axis=2)

    def backward(self, dhs):
        """``dhs`` (N, T, 2H) -> ``dxs`` (N, T, D); sets ``grads``."""
        if self.forward_lstm._last_shape is None:
            raise ValueError("TimeBiLSTM.backward() called before forward()")
        dhs = self.forward_lstm._check_backward(dhs, width_factor=2)
        self.backward_lstm._check_backward(dhs[:, :, : dhs.shape[2] // 2])
        H = dhs.shape[2] // 2
        dxs1 = self.forward_lstm._run_backward(dhs[:, :, :H])
        dxs2 = self.backward_lstm._run_backward(dhs[:, ::-1, H:])
        dxs1 += dxs2[:, ::-1]
        return dxs1

    def reset_state(self):
        """Forget both LSTMs' states."""
        self.forward_lstm.reset_state()
        self.backward_lstm.reset_state()


# --------------------------------------------------------------------------------------
# Single-step cells
# --------------------------------------------------------------------------------------


class _StepLayer:
    """One time step with the book's cell API, on the same kernels with ``T = 1``."""

    _recurrence = _Recurrence

    def __init__(self, Wx, Wh, b):
        check_params([Wx, Wh, b], self._recurrence.gates, type(self).__name__)
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros(p.shape, dtype=p.dtype) for p in self.params]
        self._engine = self._recurrence()
        self._last_n = None

    def _step_forward(self, x, h_prev, c_prev=None):
        Wx, Wh, b = check_params(self.params, self._recurrence.gates, type(self).__name__)
        D, H = Wx.shape[0], Wh.shape[0]
        N = check_step("x", x, D, "D")
        check_state("h_prev", h_prev, N, H)
        if self._engine.has_cell_state:
            check_state("c_prev", c_prev, N, H)
        _, h_next, c_next = self._engine.forward(x[:, None, :], Wx, Wh, b, h_prev, c_prev)
        self._last_n = N
        return h_next.copy(), (None if c_next is None else c_next.copy())

    def _step_backward(self, dh_next, dc_next=None):
        if self._last_n is None:
            raise ValueError(f"{type(self).__name__}.backward() called before forward()")
        check_grads(self.grads, self._engine.saved_params())
        H = self._engine.saved["Wh"].shape[0]
        check_state("dh_next", dh_next, self._last_n, H)
        if self._engine.has_cell_state:
            check_state("dc_next", dc_next, self._last_n, H)
        # The step's output gradient arrives as dhs; nothing flows in from a later step.
        dxs_tm, dh_prev, dc_prev = self._engine.backward(
            dh_next[:, None, :], self.grads, None, dc_next
        )
        return dxs_tm[0].copy(), dh_prev.copy(), (None if dc_prev is None else dc_prev.copy())


class RNN(_StepLayer):
    """One plain RNN step: ``h_next = tanh(h_prev @ Wh + x @ Wx + b)``.

    Parameters
    ----------
    Wx : (D, H) array
    Wh : (H, H) array
    b : (H,) array
    """

    _recurrence = _RNNRecurrence

    def forward(self, x, h_prev):
        """``x`` (N, D), ``h_prev`` (N, H) -> ``h_next`` (N, H)."""
        return self._step_forward(x, h_prev)[0]

    def backward(self, dh_next):
        """``dh_next`` (N, H) -> ``(dx (N, D), dh_prev (N, H))``; sets ``grads``."""
        dx, dh_prev, _ = self._step_backward(dh_next)
        return dx, dh_prev


class GRU(RNN):
    """One GRU step (gates ``z, r, h~``): ``Wx`` (D, 3H), ``Wh`` (H, 3H), ``b`` (3H,)."""

    _recurrence = _GRURecurrence


class LSTM(_StepLayer):
    """One LSTM step (gates ``f, g, i, o``): ``Wx`` (D, 4H), ``Wh`` (H, 4H), ``b`` (4H,)."""

    _recurrence = _LSTMRecurrence

    def forward(self, x, h_prev, c_prev):
        """``x`` (N, D), ``h_prev``, ``c_prev`` (N, H) -> ``(h_next, c_next)``, each (N, H)."""
        return self._step_forward(x, h_prev, c_prev)

    def backward(self, dh_next, dc_next):
        """``dh_next``, ``dc_next`` (N, H) -> ``(dx, dh_prev, dc_prev)``; sets ``grads``."""
        return self._step_backward(dh_next, dc_next)
