"""Where does fastrnn's time go? A per-phase breakdown of one forward+backward pass.

Usage
-----
::

    python benchmarks/profile_layer.py lstm 20 35 650 650 [--dtype float32] [--repeat 20]
    python benchmarks/profile_layer.py gru 128 29 16 256 --blas-threads 1
    python -m cProfile -s cumtime benchmarks/profile_layer.py lstm 20 35 650 650 --loop 5
    py-spy record -o lstm.svg -- python benchmarks/profile_layer.py lstm 20 35 650 650 --loop 10

The positional arguments are the layer (``rnn``, ``lstm``, ``gru``; ``bilstm`` with
``--loop`` only: a TimeBiLSTM is two TimeLSTMs) and the shape ``N T D H``: batch, time
steps, input size, hidden size.

How the breakdown is made
-------------------------
A real layer runs one forward and backward pass first, which compiles the kernels and fills
the workspaces; the kernel calls it makes are recorded with their arguments. Each phase is
then timed on its own, on those same arrays (on scratch copies where it would overwrite
saved state), by small Numba functions that call the private helpers of
:mod:`fastrnn._kernels`, :mod:`fastrnn._blas` and :mod:`fastrnn._math` (``gemm``,
``_backprop_to_state``, ``_input_side_grads``, ``_recurrent_weight_grad``, ``fast_tanh``,
``fast_sigmoid``) in a loop, so that no Python
call is timed with them. The kernels are not modified:

* *GEMM* lines make the products the kernels make, with the same operands and flags.
* *kernel total* is the recorded kernel call repeated from compiled code; *cell
  element-wise* is that total minus the kernel's GEMM lines: gates, activations, bias,
  state updates and loop overhead (and any cache misses the GEMMs cause there). The
  total and the parts it subtracts are timed in the same rounds, and the line is the
  median of the rounds' differences (:func:`interleaved_difference`), so that a change in
  the machine's speed between timings does not land in it. Its
  *activations alone* sub-line times just the ``fast_sigmoid``/``fast_tanh`` calls a step
  needs (forward only; the backward pass has none). Computing the element-wise share by
  difference keeps the profiler valid while the kernels' loops change.
* *layout copies* are the copies between the caller's batch-major ``(N, T, .)`` arrays and
  the kernels' time-major ``(T, N, .)`` workspaces: ``xs`` in (made by the forward kernel
  itself, timed as the same copy by NumPy and taken out of its element-wise share),
  ``dxs`` out (made by the layer). (``hs`` and ``dhs`` need none: the kernels write and
  read them batch-major as part of their element-wise work.)
* *Python* lines are the layer's argument checks, the Numba dispatch of each kernel call
  (a compiled function that does nothing, called from Python with the kernel's
  arguments: type checks, unboxing), and the rest of the layer method (its total minus
  everything timed inside it, so it carries the noise of all the other lines).

The backward kernels overwrite some of their inputs (the state gradients the layer zeroes
or fills); those are restored before every repetition and the restore
time, measured in the same rounds, is subtracted.

Every line is the median over ``--repeat`` samples; a sample repeats the phase for about a
millisecond. Shares are of the measured forward+backward total. Lines indented under
another are parts of it and are not counted twice in the category totals.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba.core.dispatcher import Dispatcher

import fastrnn
from fastrnn import _kernels as kernels
from fastrnn import _tiles as tiles
from fastrnn._blas import gemm as _gemm
from fastrnn._cli import (
    GATES,
    ForeignLoad,
    Shape,
    call_for,
    format_machine_info,
    forward_backward,
    layer_name,
    limit_blas_threads,
    machine_info,
    make_data,
    make_params,
    seed_for,
)
from fastrnn._jit import helper
from fastrnn._kernels import (
    _backprop_to_state,
    _bias_grad,
    _gru_backward_panels,
    _gru_forward_panels,
    _input_side_grads,
    _recurrent_product,
    _recurrent_weight_grad,
)
from fastrnn._math import fast_sigmoid, fast_tanh


def fast_routes(layer):
    """The planner's routes that ``layer``'s last forward used (and its backward uses)."""
    return layer._engine.saved["routes"]


def packed_weights(layer_name, packs, Wh, transposed):
    """The panels (``Wh``, or ``Wh.T`` when ``transposed``) and the pool the layer's
    kernels use when its plan packs the per-step products; empty ones otherwise."""
    H, G = Wh.shape
    depth, columns = (G, H) if transposed else (H, G)
    if not packs:
        return np.empty((0, depth, tiles.PANEL), Wh.dtype), tiles.UNUSED_POOL
    gru = layer_name == "TimeGRU"
    count = tiles.panel_count(H) if transposed else kernels.forward_panel_count(G // H, H)
    panels = np.empty((count, depth, tiles.PANEL), Wh.dtype)
    kernels.repeat_pack(1, panels, Wh, transposed, gru)
    return panels, tiles.use_threads(tiles.new_pool(Wh.dtype))


# --------------------------------------------------------------------------------------
# Compiled pieces. Each takes ``reps`` and repeats its work that many times.
# --------------------------------------------------------------------------------------


@helper
def _repeat_gemm(reps, c, a, b, transpose_a, transpose_b, accumulate):
    for _ in range(reps):
        _gemm(c, a, b, transpose_a, transpose_b, accumulate)


@helper
def _repeat_input_side_grads(reps, dxs2d, dWx, db, dA2d, x2d, Wx):
    for _ in range(reps):
        _input_side_grads(dxs2d, dWx, db, dA2d, x2d, Wx)


@helper
def _repeat_bias_grad(reps, db, dA2d):
    # The db reduction of _input_side_grads, on its own.
    for _ in range(reps):
        _bias_grad(db, dA2d)


@helper
def _repeat_recurrent_weight_grad(reps, dWh, h_hist, dA):
    for _ in range(reps):
        _recurrent_weight_grad(dWh, h_hist, dA)


@helper
def _repeat_forward_recurrent_gemms(reps, out, h_hist, Wh, WhT, scratchT, panels, pool):
    # RNN and LSTM: out[t] += h_{t-1} @ Wh for every step, as the kernels do it.
    for _ in range(reps):
        for t in range(out.shape[0]):
            _recurrent_product(out[t], h_hist[t], Wh, WhT, scratchT, panels, pool)


@helper
def _repeat_gru_forward_recurrent_gemms(reps, out, h_hist, rh, Wh, WhT, scratchT, panels, pool):
    H = Wh.shape[0]
    Wh_zr = Wh[:, : 2 * H]
    Wh_h = Wh[:, 2 * H :]
    panels_zr, panels_h = _gru_forward_panels(panels, H)
    for _ in range(reps):
        for t in range(out.shape[0]):
            A = out[t]
            _recurrent_product(
                A[:, : 2 * H], h_hist[t], Wh_zr, WhT[: 2 * H], scratchT[: 2 * H], panels_zr, pool
            )
            _recurrent_product(
                A[:, 2 * H :], rh[t], Wh_h, WhT[2 * H :], scratchT[2 * H :], panels_h, pool
            )


@helper
def _repeat_backward_recurrent_products(reps, dh, dhT, dA, Wh, WhT, route, panels, pool):
    # RNN and LSTM: dh = dA_t @ Wh.T for every step, the way the kernels compute it.
    for _ in range(reps):
        for t in range(dA.shape[0] - 1, -1, -1):
            _backprop_to_state(dh, dhT, dA[t], Wh, WhT, False, route, panels, pool)


@helper
def _repeat_gru_backward_recurrent_products(reps, dh, dhr, dhT, dA, Wh, WhT, route, panels, pool):
    H = Wh.shape[0]
    Wh_zr, Wh_h = Wh[:, : 2 * H], Wh[:, 2 * H :]
    WhT_zr, WhT_h = WhT[: 2 * H], WhT[2 * H :]
    panels_zr, panels_h = _gru_backward_panels(panels, H)
    for _ in range(reps):
        for t in range(dA.shape[0] - 1, -1, -1):
            dA_zr, dA_h = dA[t, :, : 2 * H], dA[t, :, 2 * H :]
            _backprop_to_state(dhr, dhT, dA_h, Wh_h, WhT_h, False, route, panels_h, pool)
            _backprop_to_state(dh, dhT, dA_zr, Wh_zr, WhT_zr, True, route, panels_zr, pool)


@helper
def _repeat_gru_recurrent_weight_grad(reps, dWh, h_hist, rh, dA):
    T, N, G = dA.shape
    H = h_hist.shape[2]
    rows = T * N
    dA2d = dA.reshape((rows, G))
    for _ in range(reps):
        _gemm(dWh[:, : 2 * H], h_hist[:T].reshape((rows, H)), dA2d[:, : 2 * H], True, False, False)
        _gemm(dWh[:, 2 * H :], rh.reshape((rows, H)), dA2d[:, 2 * H :], True, False, False)


@helper
def _repeat_activations(reps, gates2d, b, tanh_blocks, c2d):
    # The activation calls of the forward cells, in place on scratch rows as the kernels do:
    # gate block k of every row gets fast_tanh(a + b) if tanh_blocks[k] else
    # fast_sigmoid(a + b); then fast_tanh on every element of c2d (LSTM's tanh(c); empty
    # for the others). Repeating them keeps the values bounded (no denormals).
    rows = gates2d.shape[0]
    blocks = tanh_blocks.size
    H = gates2d.shape[1] // blocks
    for _ in range(reps):
        for r in range(rows):
            a = gates2d[r]
            for k in range(blocks):
                segment = a[k * H : (k + 1) * H]
                bias = b[k * H : (k + 1) * H]
                if tanh_blocks[k]:
                    for j in range(H):
                        segment[j] = fast_tanh(segment[j] + bias[j])
                else:
                    for j in range(H):
                        segment[j] = fast_sigmoid(segment[j] + bias[j])
        for r in range(c2d.shape[0]):
            c = c2d[r]
            for j in range(c.size):
                c[j] = fast_tanh(c[j])


@helper
def _do_nothing(*args):
    # Called from Python with a kernel's arguments, it costs what dispatching that call does.
    pass


@helper
def _repeat_kernel(reps, kernel, args):
    for _ in range(reps):
        kernel(*args)


@helper
def _repeat_kernel_restored(reps, kernel, args, targets, sources):
    for _ in range(reps):
        for i in range(len(targets)):
            targets[i][:] = sources[i]
        kernel(*args)


@helper
def _repeat_restore(reps, targets, sources):
    for _ in range(reps):
        for i in range(len(targets)):
            targets[i][:] = sources[i]


# --------------------------------------------------------------------------------------
# Recording the kernel calls a layer makes
# --------------------------------------------------------------------------------------


@dataclass
class KernelCall:
    """One kernel call: the dispatcher, its arguments, and copies of them from before."""

    name: str
    kernel: Dispatcher
    args: tuple
    before: tuple  # a copy of every array argument (None for non-arrays) as passed in


@contextlib.contextmanager
def record_kernel_calls(calls: list[KernelCall]):
    """Append every ``fastrnn._kernels`` kernel call made inside the block to ``calls``.

    The layers look kernels up on the module at each call, so replacing the module's
    attributes for the duration of the block is enough; they are restored after.
    """
    originals = {
        name: obj
        for name, obj in vars(kernels).items()
        if isinstance(obj, Dispatcher) and name.endswith(("_forward", "_backward"))
    }

    def recorder(name, kernel):
        def call(*args):
            before = tuple(a.copy() if isinstance(a, np.ndarray) else None for a in args)
            calls.append(KernelCall(name, kernel, args, before))
            return kernel(*args)

        return call

    try:
        for name, kernel in originals.items():
            setattr(kernels, name, recorder(name, kernel))
        yield calls
    finally:
        for name, kernel in originals.items():
            setattr(kernels, name, kernel)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------

#: Target duration of one sample, in seconds.
SAMPLE_SECONDS = 1e-3
#: After this many seconds on one phase, stop at the third sample or later.
MAX_PHASE_SECONDS = 3.0


def _sample_reps(run: Callable[[int], object]) -> int:
    """Repetitions of ``run`` that last about :data:`SAMPLE_SECONDS`, after two untimed
    calls that warm it up (and compile it)."""
    once = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        run(1)
        once = min(once, time.perf_counter() - t0)
    return int(min(1000, max(1, SAMPLE_SECONDS / max(once, 1e-9))))


def median_seconds(run: Callable[[int], object], samples: int) -> float:
    """Median seconds per repetition of ``run(reps)`` over ``samples`` samples.

    ``run(reps)`` does the work ``reps`` times; ``reps`` is chosen so that a sample lasts
    about :data:`SAMPLE_SECONDS`.
    """
    reps = _sample_reps(run)
    times = []
    started = time.perf_counter()
    for _ in range(samples):
        t0 = time.perf_counter()
        run(reps)
        times.append((time.perf_counter() - t0) / reps)
        if len(times) >= 3 and time.perf_counter() - started > MAX_PHASE_SECONDS:
            break  # a machine busy with other work: settle for fewer samples
    return statistics.median(times)


def interleaved_difference(
    plus: list[Callable[[int], object]], minus: list[Callable[[int], object]], samples: int
) -> float:
    """Median over ``samples`` rounds of the seconds per repetition of the ``plus`` runs
    less those of the ``minus`` runs, all timed once in every round.

    A line found by difference (a kernel's total less its products) subtracts timings of
    similar size; timed one after another, a drift in the machine's speed between them (a
    shared VM's, a turbo's) lands whole in the difference, which then came out negative.
    Timed in the same rounds, each round's difference sees one speed.
    """
    runs = [(run, 1.0) for run in plus] + [(run, -1.0) for run in minus]
    reps = [_sample_reps(run) for run, _ in runs]
    differences = []
    started = time.perf_counter()
    for _ in range(samples):
        difference = 0.0
        for (run, sign), r in zip(runs, reps, strict=True):
            t0 = time.perf_counter()
            run(r)
            difference += sign * (time.perf_counter() - t0) / r
        differences.append(difference)
        if len(differences) >= 3 and time.perf_counter() - started > MAX_PHASE_SECONDS:
            break
    return statistics.median(differences)


def python_loop(fn: Callable[[], object]) -> Callable[[int], None]:
    """``fn`` as a ``run(reps)`` callable for :func:`median_seconds`."""

    def run(reps):
        for _ in range(reps):
            fn()

    return run


@dataclass
class Phase:
    """One line of the breakdown."""

    stage: str  # "forward", "backward" or "total"
    name: str
    seconds: float | None  # None: not measurable with this version of fastrnn
    category: str | None = None  # "GEMM", "element-wise", "copies", "Python" or None
    flop: int | None = None  # matrix-product flop, for a GFLOP/s column
    indent: int = 0  # sub-lines are parts of the line above them


# --------------------------------------------------------------------------------------
# The breakdown
# --------------------------------------------------------------------------------------


def _scratch(array: np.ndarray) -> np.ndarray:
    return np.array(array, copy=True)


def _overwritten_inputs(call: KernelCall, refilled: list[np.ndarray]):
    """Arguments of ``call`` the layer refills before each call, and their values then.

    Returns two tuples of flat views, targets and sources, for :func:`_repeat_restore`.
    """
    targets, sources = [], []
    for arg, before in zip(call.args, call.before, strict=True):
        if before is not None and any(np.shares_memory(arg, r) for r in refilled):
            targets.append(arg.reshape(-1))
            sources.append(before.reshape(-1))
    return tuple(targets), tuple(sources)


class Breakdown:
    """Times the phases of one layer on one shape; :meth:`run` returns the lines."""

    def __init__(self, layer: str, shape: Shape, dtype, samples: int):
        self.layer, self.shape, self.samples = layer, shape, samples
        rng = np.random.default_rng(seed_for(layer, shape))
        params = make_params(layer, shape, dtype, rng)
        self.xs, self.dhs = make_data(layer, shape, dtype, rng)
        self.fast = getattr(fastrnn, layer)(*params)
        forward_backward(self.fast, self.xs, self.dhs)()  # compile, allocate
        calls: list[KernelCall] = []
        with record_kernel_calls(calls):
            forward_backward(self.fast, self.xs, self.dhs)()
        self.forward_call = next(c for c in calls if c.name.endswith("_forward"))
        self.backward_call = next(c for c in calls if c.name.endswith("_backward"))
        self.phases: list[Phase] = []

    def time(self, run: Callable[[int], object]) -> float:
        """Median seconds per repetition of ``run(reps)``."""
        return median_seconds(run, self.samples)

    def add(self, stage, name, run, category=None, flop=None, indent=0) -> float:
        """Time ``run(reps)`` and append it as a line; returns seconds per repetition."""
        seconds = self.time(run)
        self.phases.append(Phase(stage, name, seconds, category, flop, indent))
        return seconds

    def _packing(self, stage, panels, Wh, transposed) -> list[Callable[[int], object]]:
        """Time the kernel's packing of ``Wh`` (``Wh.T``) into ``panels`` as a line, if the
        plan packs; returns the timed run in a list (empty if the plan does not pack)."""
        if not panels.shape[0]:
            return []
        gru = self.layer == "TimeGRU"

        def run(reps):
            kernels.repeat_pack(reps, panels, Wh, transposed, gru)

        name = f"pack {'Wh.T' if transposed else 'Wh'} into panels (in the kernel)"
        self.add(stage, name, run, "copies")
        return [run]

    def run(self) -> list[Phase]:
        """Every line: forward phases, backward phases, then totals."""
        call_fwd, checks_f, copies_f = self._forward()
        forward_backward(self.fast, self.xs, self.dhs)()  # workspaces as one pass leaves them
        call_bwd, checks_b, copies_b = self._backward()
        fast, xs, dhs, samples = self.fast, self.xs, self.dhs, self.samples
        layer_fwd = median_seconds(python_loop(lambda: fast.forward(xs)), samples)
        forward_backward(fast, xs, dhs)()
        layer_bwd = median_seconds(python_loop(lambda: fast.backward(dhs)), samples)
        total = median_seconds(python_loop(forward_backward(fast, xs, dhs)), samples)
        self.phases.append(
            Phase(
                "forward",
                "rest of forward() (views, state copies)",
                layer_fwd - checks_f - copies_f - call_fwd,
                "Python",
            )
        )
        self.phases.append(
            Phase(
                "backward",
                "rest of backward() (views, zeroing, grads)",
                layer_bwd - checks_b - copies_b - call_bwd,
                "Python",
            )
        )
        self.phases += [
            Phase("total", "forward(), layer API", layer_fwd),
            Phase("total", "backward(), layer API", layer_bwd),
            Phase("total", "forward+backward, layer API", total),
        ]
        return self.phases

    def _forward(self):
        layer, fast, xs = self.layer, self.fast, self.xs
        N, T, D, H = self.shape
        G = GATES[layer]
        rows = T * N
        saved = fast._engine.saved
        xs_tm, h_hist, Wx, Wh = (saved[k] for k in ("xs", "h_hist", "Wx", "Wh"))
        act = saved["activations"]
        pre = h_hist[1:] if layer == "TimeRNN" else act["gates"]
        f = "forward"

        checks = self.add(
            f, "argument checks", python_loop(lambda: fast._check_forward(xs)), "Python"
        )
        # The kernel itself copies xs into its time-major workspace; timed here as NumPy's
        # copy of the same, and taken out of the kernel's element-wise share below.
        copy_run = python_loop(lambda: np.copyto(xs_tm, xs.transpose(1, 0, 2), casting="same_kind"))
        self.add(f, "xs -> time-major copy (in the kernel)", copy_run, "copies")
        pre_scratch = _scratch(pre)
        pre2d = pre_scratch.reshape((rows, G * H))
        x2d = xs_tm.reshape((rows, D))
        projection_run = lambda r: _repeat_gemm(r, pre2d, x2d, Wx, False, False, False)  # noqa: E731
        self.add(f, "GEMM input projection xs @ Wx", projection_run, "GEMM", 2 * rows * D * G * H)
        # The planner's choice of orientation, as the layer's forward made it.
        N = xs_tm.shape[1]
        routes = fast_routes(fast)
        if routes.forward_transposes:
            WhT, scratchT = np.ascontiguousarray(Wh.T), np.empty((G * H, N), Wh.dtype)
        else:
            WhT, scratchT = np.empty((0, H), Wh.dtype), np.empty((0, N), Wh.dtype)
        panels, pool = packed_weights(layer, routes.forward_packs, Wh, transposed=False)
        packing_runs = self._packing(f, panels, Wh, transposed=False)
        if layer == "TimeGRU":
            rh = act["rh"]
            recurrent_run = lambda r: _repeat_gru_forward_recurrent_gemms(  # noqa: E731
                r, pre_scratch, h_hist, rh, Wh, WhT, scratchT, panels, pool
            )
            recurrent_name = f"GEMM recurrent h @ Wh ({2 * T} calls)"
        else:
            recurrent_run = lambda r: _repeat_forward_recurrent_gemms(  # noqa: E731
                r, pre_scratch, h_hist, Wh, WhT, scratchT, panels, pool
            )
            recurrent_name = (
                f"GEMM recurrent h @ Wh ({T} calls{', packed' if panels.shape[0] else ''})"
            )
        self.add(f, recurrent_name, recurrent_run, "GEMM", 2 * rows * H * G * H)
        call = self.forward_call
        kernel_run = lambda r: _repeat_kernel(r, call.kernel, call.args)  # noqa: E731
        kernel = self.time(kernel_run)
        parts = [projection_run, recurrent_run, copy_run, *packing_runs]
        self.phases.append(
            Phase(
                f,
                "cell element-wise (kernel total - its GEMMs, the copy and the packing)",
                interleaved_difference([kernel_run], parts, self.samples),
                "element-wise",
            )
        )
        # The activation calls of a step, per gate block: RNN tanh; LSTM f, g, i, o and
        # tanh(c); GRU z, r, h~.
        tanh_blocks = np.array(
            {"TimeRNN": [1], "TimeLSTM": [0, 1, 0, 0], "TimeGRU": [0, 0, 1]}[layer], np.int8
        )
        gates_act = _scratch(pre).reshape((rows, G * H))
        if layer == "TimeLSTM":
            c_act = _scratch(saved["c_hist"][1:]).reshape((rows, H))
        else:
            c_act = gates_act[:0]
        b = saved["b"]
        self.add(
            f,
            "of which activations alone (fast_sigmoid, fast_tanh)",
            lambda r: _repeat_activations(r, gates_act, b, tanh_blocks, c_act),
            indent=1,
        )
        self.phases.append(Phase(f, "(kernel total, timed whole)", kernel))
        call_python = kernel + self._dispatch_line(f, call)
        # No copy of hs: the kernel writes it, batch-major, as part of its element-wise work.
        # No copy outside the kernel either: xs is copied inside it.
        return call_python, checks, 0.0

    def _dispatch_line(self, stage: str, call: KernelCall) -> float:
        """Time the Python side of calling ``call``'s kernel: type checks, unboxing."""
        return self.add(
            stage,
            "Numba dispatch of the kernel call",
            python_loop(lambda: _do_nothing(*call.args)),
            "Python",
        )

    def _backward(self):
        layer, fast, dhs = self.layer, self.fast, self.dhs
        N, T, D, H = self.shape
        G = GATES[layer]
        rows = T * N
        engine = fast._engine
        ws, saved = engine.ws, engine.saved
        act = saved["activations"]
        xs_tm, h_hist, Wx, Wh = (saved[k] for k in ("xs", "h_hist", "Wx", "Wh"))
        dtype = Wx.dtype
        dxs_tm = ws.take("dxs", (T, N, D), dtype)
        dh = ws.take("dh", (N, H), dtype)
        refilled = [dh] + ([ws.take("dc", (N, H), dtype)] if layer == "TimeLSTM" else [])
        dA = ws.take("dA", (T, N, G * H), dtype)
        dA2d = dA.reshape((rows, G * H))
        x2d = xs_tm.reshape((rows, D))
        b = "backward"
        flop_projection = 2 * rows * D * G * H
        flop_recurrent = 2 * rows * H * G * H

        checks = self.add(
            b, "argument checks", python_loop(lambda: fast._check_backward(dhs)), "Python"
        )
        # No copy of dhs: the kernel reads the caller's C-contiguous array as it is.
        dh_s, dhr_s, dhT_s = _scratch(dh), _scratch(dh), np.zeros((H, N), dtype)
        # The planner's choice, as the layer's backward makes it.
        routes = fast_routes(fast)
        if routes.backward_transposes:
            WhT = np.ascontiguousarray(Wh.T)
        else:
            WhT = np.empty((0, H), dtype)
        panels, pool = packed_weights(layer, routes.backward_packs, Wh, transposed=True)
        packing_runs = self._packing(b, panels, Wh, transposed=True)
        if layer == "TimeGRU":
            recurrent_run = lambda r: _repeat_gru_backward_recurrent_products(  # noqa: E731
                r, dh_s, dhr_s, dhT_s, dA, Wh, WhT, routes.backward_code, panels, pool
            )
            recurrent_name = f"GEMM recurrent dA @ Wh.T ({2 * T} calls, via _backprop_to_state)"
        else:
            recurrent_run = lambda r: _repeat_backward_recurrent_products(  # noqa: E731
                r, dh_s, dhT_s, dA, Wh, WhT, routes.backward_code, panels, pool
            )
            recurrent_name = (
                f"GEMM recurrent dA @ Wh.T ({T} calls, via _backprop_to_state"
                f"{', packed' if panels.shape[0] else ''})"
            )
        self.add(b, recurrent_name, recurrent_run, "GEMM", flop_recurrent)
        dxs2d = _scratch(dxs_tm).reshape((rows, D))
        dWx_s, dWh_s, db_s = (_scratch(g) for g in fast.grads[:3])
        input_side_run = lambda r: _repeat_input_side_grads(  # noqa: E731
            r, dxs2d, dWx_s, db_s, dA2d, x2d, Wx
        )
        self.add(
            b,
            "input-side grads (_input_side_grads)",
            input_side_run,
            "GEMM",
            2 * flop_projection,
        )
        self.add(
            b,
            "of which GEMM dxs = dA @ Wx.T",
            lambda r: _repeat_gemm(r, dxs2d, dA2d, Wx, False, True, False),
            flop=flop_projection,
            indent=1,
        )
        self.add(
            b,
            "of which GEMM dWx = xs.T @ dA",
            lambda r: _repeat_gemm(r, dWx_s, x2d, dA2d, True, False, False),
            flop=flop_projection,
            indent=1,
        )
        self.add(b, "of which db sum", lambda r: _repeat_bias_grad(r, db_s, dA2d), indent=1)
        if layer == "TimeGRU":
            rh = act["rh"]
            weight_grad = lambda r: _repeat_gru_recurrent_weight_grad(r, dWh_s, h_hist, rh, dA)  # noqa: E731
        else:
            weight_grad = lambda r: _repeat_recurrent_weight_grad(r, dWh_s, h_hist, dA)  # noqa: E731
        self.add(b, "GEMM dWh = h.T @ dA", weight_grad, "GEMM", flop_recurrent)

        call = self.backward_call
        targets, sources = _overwritten_inputs(call, refilled)
        restore_run = lambda r: _repeat_restore(r, targets, sources)  # noqa: E731
        restored_kernel_run = lambda r: _repeat_kernel_restored(  # noqa: E731
            r, call.kernel, call.args, targets, sources
        )
        kernel = interleaved_difference([restored_kernel_run], [restore_run], self.samples)
        parts = [restore_run, recurrent_run, input_side_run, weight_grad, *packing_runs]
        self.phases.append(
            Phase(
                b,
                "cell element-wise (kernel total - its GEMMs and the packing)",
                interleaved_difference([restored_kernel_run], parts, self.samples),
                "element-wise",
            )
        )
        self.phases.append(Phase(b, "(kernel total, timed whole)", kernel))

        call_python = kernel + self._dispatch_line(b, call)
        copy_out = self.add(
            b,
            "dxs -> batch-major copy",
            python_loop(lambda: np.ascontiguousarray(dxs_tm.transpose(1, 0, 2))),
            "copies",
        )
        return call_python, checks, copy_out


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def format_breakdown(phases: list[Phase]) -> str:
    """A plain-text table of the phases, then the totals per category."""
    total = next(p.seconds for p in phases if p.name == "forward+backward, layer API")
    header = f"{'stage':<9} {'phase':<58} {'ms/call':>9} {'share':>6} {'GFLOP/s':>8}"
    lines = [header, "-" * len(header)]
    for p in phases:
        name = "  " * p.indent + p.name
        gflops = f"{p.flop / p.seconds / 1e9:8.1f}" if p.flop and p.seconds > 0 else ""
        share = f"{100 * p.seconds / total:5.1f}%"
        lines.append(f"{p.stage:<9} {name:<58} {p.seconds * 1e3:9.3f} {share:>6} {gflops:>8}")
    categories: dict[str, float] = {}
    for p in phases:
        if p.category and p.indent == 0:
            categories[p.category] = categories.get(p.category, 0.0) + p.seconds
    lines += ["", "by category:"]
    for category, seconds in sorted(categories.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {category:<14} {seconds * 1e3:9.3f} ms {100 * seconds / total:5.1f}%")
    accounted = sum(categories.values())
    lines.append(
        f"  {'sum':<14} {accounted * 1e3:9.3f} ms {100 * accounted / total:5.1f}% of the "
        "measured forward+backward (the parts were timed one by one, so not exactly 100%)"
    )
    return "\n".join(lines)


def loop(layer: str, shape: Shape, dtype, seconds: float) -> None:
    """Run forward+backward of the fastrnn layer repeatedly for ``seconds``."""
    rng = np.random.default_rng(seed_for(layer, shape))
    run = forward_backward(
        getattr(fastrnn, layer)(*make_params(layer, shape, dtype, rng)),
        *make_data(layer, shape, dtype, rng),
    )
    calls, elapsed = call_for(run, seconds)
    print(
        f"{layer} {shape.label} {np.dtype(dtype).name}: {calls} forward+backward calls in "
        f"{elapsed:.2f} s, {1e3 * elapsed / max(calls, 1):.3f} ms per call"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        description="Per-phase time breakdown of a fastrnn layer's forward+backward pass "
        "(see the module docstring), or a plain loop for cProfile and py-spy.",
    )
    parser.add_argument("layer", help="rnn, lstm, gru (and bilstm with --loop)")
    for name, meaning in (
        ("N", "batch size"),
        ("T", "time steps"),
        ("D", "input size"),
        ("H", "hidden size"),
    ):
        parser.add_argument(name, type=int, help=meaning)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--repeat",
        type=int,
        default=20,
        metavar="SAMPLES",
        help="samples per phase; each line is their median (default: 20)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        metavar="N",
        help="limit the BLAS libraries to N threads (needs threadpoolctl)",
    )
    parser.add_argument(
        "--loop",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only run forward+backward repeatedly for SECONDS, for cProfile or py-spy",
    )
    return parser


def main(argv=None) -> int:
    """Run the profiler; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        layer = layer_name(args.layer)
        shape = Shape(args.N, args.T, args.D, args.H)
        if min(shape) < 1:
            raise ValueError(f"N, T, D and H must be positive, got {tuple(shape)}")
        if args.repeat < 1:
            raise ValueError("--repeat must be at least 1")
    except ValueError as err:
        parser.error(str(err))
    if layer == "TimeBiLSTM" and args.loop is None:
        parser.error(
            "the breakdown covers rnn, lstm and gru; a TimeBiLSTM is two TimeLSTMs "
            "(profile lstm), or use --loop"
        )
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(limit_blas_threads(args.blas_threads))
        except RuntimeError as err:
            parser.error(str(err))
        if args.loop is not None:
            loop(layer, shape, args.dtype, args.loop)
            return 0
        for line in format_machine_info(machine_info()):
            print(line)
        print(
            f"\n{layer} N={shape.N} T={shape.T} D={shape.D} H={shape.H} {args.dtype}: "
            f"median of {args.repeat} samples per phase (compiling the profiling helpers "
            "takes a few seconds first)\n",
            flush=True,
        )
        load = ForeignLoad().start()
        phases = Breakdown(layer, shape, np.dtype(args.dtype), args.repeat).run()
        print(format_breakdown(phases))
        other = load.cores()
        if other is not None:
            print(f"\nother processes kept {other:.2f} cores busy meanwhile", end="")
            print(" (a busy machine: rerun, or use --blas-threads 1)" if other > 0.25 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
