"""Every mistake a student makes, as a table: the layer either gives the reference's result or
raises a plain ``ValueError``/``TypeError`` that names the argument and the shapes or dtypes
involved, before any kernel runs, and stays usable afterwards.

Each row of ``CASES`` drives a fast layer and a reference layer built from the same
parameters through a :class:`Pair`:

* ``pair.same(method, *args)`` calls both and compares outputs, states and gradients;
* ``pair.raises(exc, needles, method, *args)`` calls the fast layer only and checks the
  exception's exact type, that its message contains every needle, that no kernel ran (the
  kernels are wrapped by a counting spy) and that the layer's state did not change.

After every row, :meth:`Pair.recover` runs a correct forward and backward on both layers
and compares them: a layer that raised must still give the reference's numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from _support import (
    ALL_KINDS,
    CELL_KINDS,
    DTYPES,
    FAMILY,
    GATES,
    TIME_KINDS,
    TOLERANCE,
    KernelSpy,
    copy_arg,
    make_params,
    other_float,
    same_value,
)

import fastrnn
import fastrnn._kernels as kernels_module
from fastrnn import reference

SINGLE_TIME_KINDS = ("TimeRNN", "TimeLSTM", "TimeGRU")  # the ones with set_state
KERNEL_NAMES = (
    "rnn_forward",
    "rnn_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
)
D, H, N, T = 3, 4, 2, 5


@pytest.fixture
def kernel_spy(monkeypatch):
    return KernelSpy().install(monkeypatch, kernels_module, KERNEL_NAMES)


class Pair:
    """A fast layer and a reference layer of one kind, sharing their parameter arrays."""

    def __init__(self, kind, dtype, spy, stateful=False, seed=20261128):
        self.kind = kind
        self.dtype = np.dtype(dtype)
        self.spy = spy
        self.stateful = stateful
        self.rng = np.random.default_rng(seed)
        self.is_cell = kind in CELL_KINDS
        self.is_bi = kind == "TimeBiLSTM"
        self.gates = GATES[FAMILY[kind]]
        sets = 2 if self.is_bi else 1
        self.params = [
            p for _ in range(sets) for p in make_params(self.rng, FAMILY[kind], D, H, dtype)
        ]
        self.fast = self.build(fastrnn, self.params)
        self.ref = self.build(reference, self.params)
        self.last_forward = None  # (N, T) of the last forward both layers accepted

    def build(self, module, params):
        cls = getattr(module, self.kind)
        return cls(*params) if self.is_cell else cls(*params, stateful=self.stateful)

    # ---- data ------------------------------------------------------------------------

    @property
    def width(self):
        """Width of the output ``hs`` / of ``dhs``."""
        return 2 * H if self.is_bi else H

    def data(self, *shape, dtype=None):
        return self.rng.standard_normal(shape).astype(dtype or self.dtype)

    def forward_args(self, n=N, t=T):
        if not self.is_cell:
            return (self.data(n, t, D),)
        args = (self.data(n, D), self.data(n, H))
        return args + (self.data(n, H),) if FAMILY[self.kind] == "LSTM" else args

    def backward_args(self):
        n, t = self.last_forward
        if not self.is_cell:
            return (self.data(n, t, self.width),)
        args = (self.data(n, H),)
        return args + (self.data(n, H),) if FAMILY[self.kind] == "LSTM" else args

    # ---- access to the parts of either layer -----------------------------------------

    def sublayers(self, layer):
        return [layer.forward_lstm, layer.backward_lstm] if self.is_bi else [layer]

    def set_param(self, index, value, both=False):
        """Replace ``params[index]`` in the list (for BiLSTM: in the LSTM that owns it)."""
        for layer in (self.fast, self.ref) if both else (self.fast,):
            owner = self.sublayers(layer)[index // 3]
            owner.params[index % 3] = value

    def set_grad(self, index, value):
        self.sublayers(self.fast)[index // 3].grads[index % 3] = value

    def restore_params(self):
        for i, p in enumerate(self.params):
            self.set_param(i, p, both=True)

    def state(self, layer):
        """Everything a call may change, as (label, value) pairs."""
        items = []
        for k, sub in enumerate(self.sublayers(layer)):
            for attr in ("h", "c", "dh"):
                if hasattr(sub, attr) and not (self.is_cell and attr == "dh"):
                    items.append((f"{k}.{attr}", getattr(sub, attr)))
            items += [(f"{k}.grads[{i}]", g) for i, g in enumerate(sub.grads)]
        return items

    def snapshot(self):
        params = [list(sub.params) for sub in self.sublayers(self.fast)]
        return params, [(label, copy_arg(v)) for label, v in self.state(self.fast)]

    # ---- the two kinds of step -------------------------------------------------------

    @property
    def compute_dtype(self):
        """The dtype of the parameters the fast layer currently holds."""
        return self.sublayers(self.fast)[0].params[0].dtype

    def compare(self, actual, expected, what):
        if isinstance(expected, tuple):
            assert isinstance(actual, tuple) and len(actual) == len(expected), what
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                self.compare(a, e, f"{what}[{i}]")
            return
        if expected is None:
            assert actual is None, what
            return
        assert isinstance(actual, np.ndarray), what
        assert actual.shape == np.shape(expected), what
        # Anything computed or stored in float32 gets float32's tolerance. (The reference
        # promotes where fastrnn computes in the parameters' dtype.)
        dtypes = {actual.dtype, np.asarray(expected).dtype, self.compute_dtype}
        single = np.dtype(np.float32)
        tolerance = TOLERANCE[single if single in dtypes else np.dtype(np.float64)]
        # NaN and inf must sit at exactly the reference's positions (assert_allclose checks).
        np.testing.assert_allclose(actual, expected, err_msg=what, **tolerance)

    def compare_state(self):
        for (label, a), (_, e) in zip(self.state(self.fast), self.state(self.ref), strict=True):
            self.compare(a, e, label)

    def same(self, method, *args):
        """Call ``method`` on both layers; outputs, states and grads must agree."""
        kept = [copy_arg(a) for a in args]
        calls = self.spy.calls
        with np.errstate(all="ignore"):  # the reference's NumPy warns about NaN and inf
            expected = getattr(self.ref, method)(*args)
        actual = getattr(self.fast, method)(*args)
        for before, after in zip(kept, args, strict=True):
            assert same_value(before, after), f"{method} modified its argument"
        self.compare(actual, expected, method)
        self.compare_state()
        if method == "forward":
            x = args[0]
            self.last_forward = (x.shape[0], x.shape[1] if not self.is_cell else 1)
            if isinstance(actual, np.ndarray):  # computed in the parameters' dtype
                assert actual.dtype == self.compute_dtype
        if method in ("forward", "backward"):
            n, t = self.last_forward
            if n * t:  # nothing to compute for an empty batch or sequence
                assert self.spy.calls > calls, "the kernel spy saw no kernel call"
        return actual

    def raises(self, exc_type, needles, method, *args):
        """``method`` must raise exactly ``exc_type`` naming ``needles``, changing nothing."""
        params_before, state_before = self.snapshot()
        calls = self.spy.calls
        target = self.fast if method != "construct" else None
        with pytest.raises(exc_type) as info:
            if target is None:
                self.build(fastrnn, args)
            else:
                getattr(target, method)(*args)
        error = info.value
        # A plain ValueError/TypeError, not a Numba error deriving from one.
        assert type(error) is exc_type, f"{type(error).__module__}.{type(error).__name__}"
        message = str(error)
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"
        assert self.spy.calls == calls, "a kernel ran before the error was raised"
        params_after, state_after = self.snapshot()
        for before, after in zip(params_before, params_after, strict=True):
            assert all(a is b for a, b in zip(before, after, strict=True)), "params changed"
        for (label, before), (_, after) in zip(state_before, state_after, strict=True):
            assert same_value(before, after), f"{label} changed by a call that raised"
        return error

    def recover(self):
        """A correct forward and backward after whatever happened: the reference's numbers."""
        n = N
        if self.stateful:
            h = self.sublayers(self.fast)[0].h
            n = h.shape[0] if h is not None else N
        calls = self.spy.calls
        if self.last_forward is not None:
            # Whatever raised since, the last accepted forward can still be backpropagated.
            self.same("backward", *self.backward_args())
        self.same("forward", *self.forward_args(n))
        self.same("backward", *self.backward_args())
        assert self.spy.calls > calls, "the kernel spy saw no kernel call"


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    kinds: tuple[str, ...]
    run: Callable[[Pair], None]
    stateful: bool = False


CASES: dict[str, Case] = {}


def case(*kinds, stateful=False):
    def register(run):
        name = run.__name__
        assert name not in CASES
        CASES[name] = Case(name, kinds, run, stateful)
        return run

    return register


def out_shape(n, t, width):
    return str((n, t, width))


# ---- xs of the wrong rank, size or type -----------------------------------------------


@case(*TIME_KINDS)
def xs_rank2(p):
    p.raises(ValueError, ["xs", "(2, 3)", "D=3"], "forward", p.data(2, D))


@case(*TIME_KINDS)
def xs_rank4(p):
    p.raises(ValueError, ["xs", "(2, 5, 3, 1)", "D=3"], "forward", p.data(N, T, D, 1))


@case(*TIME_KINDS)
def xs_wrong_input_size(p):
    p.raises(ValueError, ["xs", "(2, 5, 4)", "D=3"], "forward", p.data(N, T, D + 1))


@case(*TIME_KINDS)
def xs_transposed(p):
    # (T, N, D) handed over as (N, T, D): only catchable when the sizes differ.
    p.raises(ValueError, ["xs", "(5, 3, 2)", "D=3"], "forward", p.data(T, D, N))


@case(*TIME_KINDS)
def failed_forward_keeps_the_last_forward(p):
    p.same("forward", *p.forward_args(n=N + 1))
    p.raises(ValueError, ["xs", "(2, 5, 4)"], "forward", p.data(N, T, D + 1))
    p.same("backward", *p.backward_args())  # backpropagates the (3, 5) forward


@case(*TIME_KINDS)
def xs_complex(p):
    p.raises(TypeError, ["xs", "complex"], "forward", p.data(N, T, D) + 1j)


@case(*TIME_KINDS)
def xs_strings(p):
    p.raises(TypeError, ["xs", "<U1"], "forward", np.full((N, T, D), "a"))


@case(*TIME_KINDS)
def xs_object(p):
    p.raises(TypeError, ["xs", "object"], "forward", p.data(N, T, D).astype(object))


@case(*TIME_KINDS)
def xs_none(p):
    p.raises(TypeError, ["xs", "NoneType"], "forward", None)


@case(*TIME_KINDS)
def xs_nested_list(p):
    p.raises(TypeError, ["xs", "list"], "forward", p.data(N, T, D).tolist())


@case(*TIME_KINDS)
def xs_int(p):
    p.raises(TypeError, ["xs", "int64"], "forward", p.rng.integers(-3, 3, (N, T, D)))


@case(*TIME_KINDS)
def xs_bool(p):
    p.raises(TypeError, ["xs", "bool"], "forward", p.data(N, T, D) > 0)


@case(*TIME_KINDS)
def xs_scalar(p):
    p.raises(ValueError, ["xs", "()", "D=3"], "forward", np.array(1.0, dtype=p.dtype))


# ---- xs that are fine: other float dtypes, odd strides, NaN/inf, empty ------------------


@case(*TIME_KINDS)
def xs_other_float_dtype(p):
    p.same("forward", p.data(N, T, D, dtype=other_float(p.dtype)))
    p.same("backward", *p.backward_args())
    p.same("forward", p.data(N, T, D, dtype=np.float16))


@case(*TIME_KINDS)
def xs_strided_views(p):
    p.same("forward", p.data(N, 2 * T, 2 * D)[:, ::2, ::2])
    p.same("backward", *p.backward_args())
    p.same("forward", np.asfortranarray(p.data(N, T, D))[::-1])
    p.same("forward", p.data(T, N, D).transpose(1, 0, 2))


@case(*TIME_KINDS)
def xs_nan(p):
    xs = p.data(N, T, D)
    xs[0, 1, 2] = np.nan
    p.same("forward", xs)
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def xs_inf(p):
    xs = p.data(N, T, D)
    xs[1, 0, 0] = np.inf
    xs[0, 3, 1] = -np.inf
    p.same("forward", xs)
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def weights_nan_inf(p):
    p.params[1][0, 0] = np.nan  # in place: both layers share the arrays
    p.params[0][1, 1] = np.inf
    p.params[2][-1] = -np.inf
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def huge_inputs(p):
    p.same("forward", 1e30 * p.data(N, T, D))
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def zero_time_steps(p):
    p.same("forward", p.data(N, 0, D))
    p.same("backward", p.data(N, 0, p.width))


@case(*TIME_KINDS)
def zero_batch(p):
    p.same("forward", p.data(0, T, D))
    p.same("backward", p.data(0, T, p.width))


@case(*TIME_KINDS, stateful=True)
def zero_time_steps_keeps_state(p):
    p.same("forward", *p.forward_args())
    p.same("forward", p.data(N, 0, D))
    p.same("forward", *p.forward_args())


# ---- backward misuse ------------------------------------------------------------------


@case(*TIME_KINDS)
def backward_before_forward(p):
    p.raises(ValueError, ["backward", "forward"], "backward", p.data(N, T, p.width))


@case(*TIME_KINDS)
def backward_twice(p):
    p.same("forward", *p.forward_args())
    dhs = p.backward_args()
    p.same("backward", *dhs)
    p.same("backward", *dhs)
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def dhs_wrong_width(p):
    p.same("forward", *p.forward_args())
    w = p.width
    needles = ["dhs", out_shape(N, T, w + 1), out_shape(N, T, w)]
    p.raises(ValueError, needles, "backward", p.data(N, T, w + 1))
    p.same("backward", *p.backward_args())  # the saved forward survived the error


@case(*TIME_KINDS)
def dhs_wrong_length(p):
    p.same("forward", *p.forward_args())
    w = p.width
    needles = ["dhs", out_shape(N, T - 1, w), out_shape(N, T, w)]
    p.raises(ValueError, needles, "backward", p.data(N, T - 1, w))
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def dhs_rank2(p):
    p.same("forward", *p.forward_args())
    p.raises(ValueError, ["dhs", "(2, 5)", out_shape(N, T, p.width)], "backward", p.data(N, T))


@case(*TIME_KINDS)
def dhs_of_an_older_forward(p):
    p.same("forward", *p.forward_args(n=N))
    p.same("forward", *p.forward_args(n=N + 1))
    w = p.width
    needles = ["dhs", out_shape(N, T, w), out_shape(N + 1, T, w)]
    p.raises(ValueError, needles, "backward", p.data(N, T, w))
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def dhs_int(p):
    p.same("forward", *p.forward_args())
    p.raises(TypeError, ["dhs", "int64"], "backward", np.ones((N, T, p.width), dtype=np.int64))
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def dhs_list_or_none(p):
    p.same("forward", *p.forward_args())
    p.raises(TypeError, ["dhs", "list"], "backward", p.data(N, T, p.width).tolist())
    p.raises(TypeError, ["dhs", "NoneType"], "backward", None)


@case(*TIME_KINDS)
def dhs_other_float_dtype_and_strides(p):
    p.same("forward", *p.forward_args())
    p.same("backward", p.data(N, T, p.width, dtype=other_float(p.dtype)))
    p.same("backward", np.asfortranarray(p.data(N, T, 2 * p.width)[:, ::-1, ::2]))


@case(*TIME_KINDS)
def dhs_nan_inf(p):
    p.same("forward", *p.forward_args())
    dhs = p.data(N, T, p.width)
    dhs[0, 2, 1] = np.nan
    dhs[1, 4, 0] = np.inf
    dhs[1, 1, 3] = -np.inf
    p.same("backward", dhs)


# ---- parameters replaced in the list --------------------------------------------------


@case(*TIME_KINDS)
def param_wrong_gate_size(p):
    i = 3 if p.is_bi else 0  # BiLSTM: the backward LSTM's Wx
    bad = p.data(D, p.gates * H + 1)
    p.set_param(i, bad)
    needles = ["Wx", str(bad.shape), str(p.params[i + 1].shape)]
    p.raises(ValueError, needles, "forward", p.data(N, T, D))
    p.restore_params()


@case(*TIME_KINDS)
def param_new_hidden_size(p):
    i = 1
    bad = p.data(H + 1, p.gates * (H + 1))
    p.set_param(i, bad)
    needles = ["Wx", str(p.params[0].shape), str(bad.shape)]
    p.raises(ValueError, needles, "forward", p.data(N, T, D))
    p.restore_params()


@case(*TIME_KINDS)
def param_bias_2d(p):
    bad = p.params[2][None, :].copy()
    p.set_param(2, bad)
    p.raises(ValueError, ["b", str(bad.shape), f"({p.gates * H},)"], "forward", p.data(N, T, D))
    p.restore_params()


@case(*TIME_KINDS)
def param_int(p):
    p.set_param(1, np.ones((H, p.gates * H), dtype=np.int64))
    p.raises(TypeError, ["Wh", "int64", "float32 or float64"], "forward", p.data(N, T, D))
    p.restore_params()


@case(*TIME_KINDS)
def param_mixed_float_dtypes(p):
    other = other_float(p.dtype)
    p.set_param(2, p.params[2].astype(other))
    p.raises(TypeError, ["b", str(p.dtype), str(other)], "forward", p.data(N, T, D))
    p.restore_params()


@case(*TIME_KINDS)
def param_list(p):
    p.set_param(0, p.params[0].tolist())
    p.raises(TypeError, ["Wx", "list"], "forward", p.data(N, T, D))
    p.restore_params()


@case(*TIME_KINDS)
def param_fortran_order(p):
    p.set_param(0, np.asfortranarray(p.params[0]), both=True)
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def param_replaced_by_new_array(p):
    p.same("forward", *p.forward_args())
    p.set_param(1, p.params[1] * 0.5, both=True)  # not in place: a new array in the list
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def param_all_switched_to_other_dtype(p):
    other = other_float(p.dtype)
    for i in range(len(p.params)):
        p.set_param(i, p.params[i].astype(other), both=True)
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())  # grads keep their dtype, like the reference's


@case(*TIME_KINDS)
def params_updated_in_place(p):
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())
    for param, grad in zip(p.params, p.fast.grads, strict=True):
        param -= 0.1 * grad  # what the book's SGD does
    p.same("forward", *p.forward_args())
    p.same("backward", *p.backward_args())


# ---- grads replaced in the list -------------------------------------------------------


@case(*TIME_KINDS)
def grads_wrong_shape(p):
    p.same("forward", *p.forward_args())
    good = p.fast.grads[0]
    p.set_grad(0, np.zeros((D + 1, p.gates * H), dtype=p.dtype))
    needles = ["grads[0]", str((D + 1, p.gates * H)), str(good.shape)]
    p.raises(ValueError, needles, "backward", p.data(N, T, p.width))
    p.set_grad(0, good)
    p.same("backward", *p.backward_args())


@case(*TIME_KINDS)
def grads_int(p):
    p.same("forward", *p.forward_args())
    good = p.fast.grads[1]
    p.set_grad(1, np.zeros(good.shape, dtype=np.int64))
    p.raises(TypeError, ["grads[1]", "int64"], "backward", p.data(N, T, p.width))
    p.set_grad(1, good)


@case(*TIME_KINDS)
def grads_read_only(p):
    p.same("forward", *p.forward_args())
    good = p.fast.grads[2]
    frozen = np.zeros_like(good)
    frozen.flags.writeable = False
    p.set_grad(2, frozen)
    p.raises(ValueError, ["grads[2]", "read-only"], "backward", p.data(N, T, p.width))
    p.set_grad(2, good)


@case(*TIME_KINDS)
def grads_fortran_and_other_dtype(p):
    p.same("forward", *p.forward_args())
    p.set_grad(0, np.asfortranarray(np.zeros(p.params[0].shape, dtype=other_float(p.dtype))))
    p.set_grad(1, np.zeros((2 * H, p.gates * H), dtype=p.dtype)[::2])
    p.same("backward", *p.backward_args())  # written into the caller's arrays


# ---- stateful misuse ------------------------------------------------------------------


@case(*TIME_KINDS, stateful=True)
def batch_size_change_while_stateful(p):
    p.same("forward", *p.forward_args(n=N))
    p.raises(ValueError, ["h", "(2, 4)", "(3, 4)", "reset_state"], "forward", p.data(N + 1, T, D))
    p.same("forward", *p.forward_args(n=N))  # the state is intact
    p.fast.reset_state()
    p.ref.reset_state()
    p.same("forward", *p.forward_args(n=N + 1))


@case(*SINGLE_TIME_KINDS, stateful=True)
def set_state_wrong_hidden_size(p):
    p.raises(ValueError, ["h", "(2, 5)", "(N, 4)"], "set_state", p.data(N, H + 1))


@case(*SINGLE_TIME_KINDS, stateful=True)
def set_state_rank1(p):
    p.raises(ValueError, ["h", "(4,)", "(N, 4)"], "set_state", p.data(H))


@case(*SINGLE_TIME_KINDS, stateful=True)
def set_state_int(p):
    p.raises(TypeError, ["h", "int64"], "set_state", np.zeros((N, H), dtype=np.int64))


@case(*SINGLE_TIME_KINDS, stateful=True)
def set_state_none_forgets_the_state(p):
    p.same("forward", *p.forward_args())
    p.same("set_state", None)  # the book's set_state(None) is a reset
    p.same("forward", *p.forward_args())


@case(*SINGLE_TIME_KINDS, stateful=True)
def set_state_then_other_batch(p):
    p.same("set_state", p.data(N + 1, H))
    p.raises(ValueError, ["h", "(3, 4)", "(2, 4)", "reset_state"], "forward", p.data(N, T, D))
    p.same("forward", *p.forward_args(n=N + 1))


@case(*SINGLE_TIME_KINDS, stateful=True)
def set_state_other_float_dtype_and_strides(p):
    p.same("set_state", p.data(N, H, dtype=other_float(p.dtype)))
    p.same("forward", *p.forward_args())
    p.same("set_state", np.asfortranarray(p.data(N, 2 * H)[:, ::-2]))
    p.same("forward", *p.forward_args())


@case(*SINGLE_TIME_KINDS, stateful=True)
def state_attribute_clobbered(p):
    p.same("forward", *p.forward_args())
    good = p.fast.h
    p.fast.h = good.astype(np.int64)
    p.raises(TypeError, ["h", "int64"], "forward", p.data(N, T, D))
    p.fast.h = good


@case("TimeLSTM", stateful=True)
def set_state_cell_mismatch(p):
    h = p.data(N, H)
    p.raises(ValueError, ["c", "(3, 4)", "(2, 4)"], "set_state", h, p.data(N + 1, H))
    p.raises(TypeError, ["c", "int64"], "set_state", h, np.zeros((N, H), dtype=np.int64))
    p.same("set_state", h)  # c=None: zeros, as in the reference
    p.same("forward", *p.forward_args())


@case(*SINGLE_TIME_KINDS)
def set_state_ignored_when_not_stateful(p):
    p.same("set_state", p.data(N, H))
    p.same("forward", *p.forward_args())


# ---- single-step cells ----------------------------------------------------------------


_FRESH = object()


def cell_args(p, x=_FRESH, h=_FRESH, c=_FRESH, n=N):
    """Arguments of a cell's forward: fresh data for every one not given."""
    x = p.data(n, D) if x is _FRESH else x
    h = p.data(n, H) if h is _FRESH else h
    if FAMILY[p.kind] != "LSTM":
        return x, h
    return x, h, (p.data(n, H) if c is _FRESH else c)


@case(*CELL_KINDS)
def cell_x_rank1(p):
    p.raises(ValueError, ["x", "(3,)", "D=3"], "forward", *cell_args(p, x=p.data(D)))


@case(*CELL_KINDS)
def cell_x_wrong_input_size(p):
    p.raises(ValueError, ["x", "(2, 4)", "D=3"], "forward", *cell_args(p, x=p.data(N, D + 1)))


@case(*CELL_KINDS)
def cell_x_bad_types(p):
    for bad, needle in [
        (p.data(N, D) + 1j, "complex"),
        (np.ones((N, D), dtype=np.int64), "int64"),
        (p.data(N, D).tolist(), "list"),
        (None, "NoneType"),
        (np.full((N, D), "x"), "<U1"),
        (p.data(N, D).astype(object), "object"),
    ]:
        p.raises(TypeError, ["x", needle], "forward", *cell_args(p, x=bad))


@case(*CELL_KINDS)
def cell_h_wrong_batch(p):
    args = cell_args(p, h=p.data(N + 1, H))
    p.raises(ValueError, ["h_prev", "(3, 4)", "(2, 4)"], "forward", *args)


@case(*CELL_KINDS)
def cell_h_wrong_hidden_size(p):
    args = cell_args(p, h=p.data(N, H + 1))
    p.raises(ValueError, ["h_prev", "(2, 5)", "(2, 4)"], "forward", *args)


@case(*CELL_KINDS)
def cell_h_int_or_none(p):
    p.raises(TypeError, ["h_prev", "int64"], "forward", *cell_args(p, h=np.zeros((N, H), int)))
    p.raises(TypeError, ["h_prev", "NoneType"], "forward", *cell_args(p, h=None))


@case("LSTM")
def cell_c_missing_or_wrong(p):
    x, h = p.data(N, D), p.data(N, H)
    p.raises(TypeError, ["c_prev", "NoneType"], "forward", *cell_args(p, c=None))
    p.raises(ValueError, ["c_prev", "(2, 5)", "(2, 4)"], "forward", x, h, p.data(N, H + 1))
    p.raises(TypeError, ["c_prev", "int64"], "forward", x, h, np.zeros((N, H), np.int64))


@case(*CELL_KINDS)
def cell_other_float_dtype_and_strides(p):
    other = other_float(p.dtype)
    p.same("forward", *cell_args(p, x=p.data(N, D, dtype=other), h=p.data(N, H, dtype=other)))
    p.same("backward", *p.backward_args())
    strided = (p.data(N, 2 * D)[:, ::2], np.asfortranarray(p.data(N, H)))
    p.same("forward", *cell_args(p, *strided))
    p.same("backward", *p.backward_args())


@case(*CELL_KINDS)
def cell_nan_inf(p):
    x, h = p.data(N, D), p.data(N, H)
    x[0, 1] = np.nan
    h[1, 2] = np.inf
    h[0, 0] = -np.inf
    p.same("forward", *cell_args(p, x=x, h=h))
    p.same("backward", *p.backward_args())


@case(*CELL_KINDS)
def cell_zero_batch(p):
    p.same("forward", *cell_args(p, n=0))
    p.same("backward", *p.backward_args())


@case(*CELL_KINDS)
def cell_backward_before_forward(p):
    args = (p.data(N, H),) * (2 if FAMILY[p.kind] == "LSTM" else 1)
    p.raises(ValueError, ["backward", "forward"], "backward", *args)


@case(*CELL_KINDS)
def cell_failed_forward_keeps_the_last_forward(p):
    p.same("forward", *cell_args(p, n=N + 1))
    p.raises(
        ValueError,
        ["h_prev", "(2, 4)", "(3, 4)"],
        "forward",
        *cell_args(p, h=p.data(N, H), n=N + 1),
    )
    p.same("backward", *p.backward_args())


@case(*CELL_KINDS)
def cell_backward_twice(p):
    p.same("forward", *cell_args(p))
    args = p.backward_args()
    p.same("backward", *args)
    p.same("backward", *args)


@case(*CELL_KINDS)
def cell_dh_wrong_shape_or_type(p):
    p.same("forward", *cell_args(p))
    extra = (p.data(N, H),) if FAMILY[p.kind] == "LSTM" else ()
    p.raises(ValueError, ["dh_next", "(3, 4)", "(2, 4)"], "backward", p.data(N + 1, H), *extra)
    p.raises(TypeError, ["dh_next", "int64"], "backward", np.ones((N, H), np.int64), *extra)
    p.same("backward", *p.backward_args())


@case("LSTM")
def cell_dc_missing_or_wrong(p):
    p.same("forward", *cell_args(p))
    dh = p.data(N, H)
    p.raises(TypeError, ["dc_next", "NoneType"], "backward", dh, None)
    p.raises(ValueError, ["dc_next", "(2, 5)", "(2, 4)"], "backward", dh, p.data(N, H + 1))


@case(*CELL_KINDS)
def cell_param_wrong_shape_or_dtype(p):
    p.set_param(0, p.data(D, p.gates * H + 2))
    p.raises(ValueError, ["Wx", str((D, p.gates * H + 2))], "forward", *cell_args(p))
    p.set_param(0, np.ones((D, p.gates * H), np.int32))
    p.raises(TypeError, ["Wx", "int32"], "forward", *cell_args(p))
    p.restore_params()


# ---- constructors ---------------------------------------------------------------------


def _bad_constructor_params(p, index, value):
    params = list(p.params)
    params[index] = value
    return params


@case(*ALL_KINDS)
def ctor_wrong_shapes(p):
    G = p.gates
    for index, bad, needles in [
        (0, p.data(D, G * H + 1), ["Wx", str((D, G * H + 1)), str((H, G * H))]),
        (0, p.data(G * H), ["Wx", str((G * H,))]),
        (0, p.data(0, G * H), ["Wx", str((0, G * H))]),
        (1, p.data(H, G * H + 1), ["Wh", str((H, G * H + 1))]),
        (1, p.data(H + 1, G * H), ["Wh", str((H + 1, G * H))]),
        (2, p.data(G * H - 1), ["b", str((G * H - 1,)), f"({G * H},)"]),
        (2, p.data(1, G * H), ["b", str((1, G * H)), f"({G * H},)"]),
    ]:
        p.raises(ValueError, needles, "construct", *_bad_constructor_params(p, index, bad))


@case(*ALL_KINDS)
def ctor_wrong_types(p):
    other = other_float(p.dtype)
    for index, bad, needles in [
        (0, p.params[0].astype(np.int64), ["Wx", "int64"]),
        (1, p.params[1].astype(np.float16), ["Wh", "float16"]),
        (1, p.params[1].astype(p.params[1].dtype.newbyteorder()), ["Wh", ">f"]),
        (2, p.params[2].astype(other), ["b", str(p.dtype), str(other)]),
        (0, None, ["Wx", "NoneType"]),
        (1, p.params[1].tolist(), ["Wh", "list"]),
        (2, p.params[2] + 0j, ["b", "complex"]),
    ]:
        p.raises(TypeError, needles, "construct", *_bad_constructor_params(p, index, bad))


@case("TimeBiLSTM")
def ctor_bilstm_directions_disagree(p):
    other_hidden = make_params(p.rng, "LSTM", D, H + 1, p.dtype)
    other_input = make_params(p.rng, "LSTM", D + 1, H, p.dtype)
    needles = ["Wh2", str((H + 1, 4 * (H + 1))), "Wh1", str((H, 4 * H))]
    p.raises(ValueError, needles, "construct", *p.params[:3], *other_hidden)
    needles = ["Wx2", str((D + 1, 4 * H)), "Wx1", str((D, 4 * H))]
    p.raises(ValueError, needles, "construct", *p.params[:3], *other_input)


# --------------------------------------------------------------------------------------


def _table():
    rows = []
    for c in CASES.values():
        for kind in c.kinds:
            rows.append(pytest.param(c.name, kind, id=f"{c.name}-{kind}"))
    return rows


def test_table_is_large_enough():
    """The issue asks for at least 25 misuse cases; every layer kind must be covered."""
    assert len(CASES) >= 25
    covered = {kind for c in CASES.values() for kind in c.kinds}
    assert covered == set(ALL_KINDS)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("name", "kind"), _table())
def test_misuse(name, kind, dtype, kernel_spy):
    c = CASES[name]
    pair = Pair(kind, dtype, kernel_spy, stateful=c.stateful)
    c.run(pair)
    pair.recover()
