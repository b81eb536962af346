"""Reliability under the conditions researchers run fastrnn in: threads, days-long loops,
read-only installs, upgrades, and inputs full of NaN and inf.

* Threads: separate layers in separate threads give bit-for-bit the serial results.
* Pickling: a pickled layer runs in a new process as it did where it was made.
* Memory: repeated calls at one shape allocate nothing that stays; a new shape grows the
  workspaces once.
* Cache: with no writable cache directory everything compiles in memory with exactly one
  warning; ``FASTRNN_DISABLE_CACHE`` turns the disk cache off; ``NUMBA_BOUNDSCHECK`` never
  meets a cached kernel; a changed kernel source is never served from a stale cache, and
  every compiled helper a kernel calls lives in the kernel's own module.
* Long runs: hundreds of stateful calls stay on the reference's trajectory.
* fastmath: only flags that keep NaN and inf, checked on the options and on the LLVM IR,
  and NaN/inf land at exactly the reference's positions.

The cache tests run Python in subprocesses on a copy of the package.
"""

from __future__ import annotations

import ast
import gc
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from pathlib import Path
from unittest import mock

import numba
import numpy as np
import pytest
from _support import (
    ALL_KINDS,
    CELL_KINDS,
    DTYPES,
    FAMILY,
    TIME_KINDS,
    TOLERANCE,
    assert_close,
    assert_threads_give_serial_results,
    make_params,
)
from numba import types
from numba.core.dispatcher import Dispatcher
from numba.core.registry import cpu_target

import fastrnn
from fastrnn import _jit, reference

PACKAGE_DIR = Path(fastrnn.__file__).resolve().parent
FORBIDDEN_FASTMATH = {"nnan", "ninf", "fast"}


def all_params(rng, kind, D, H, dtype, scale=0.5):
    sets = 2 if kind == "TimeBiLSTM" else 1
    return [
        p for _ in range(sets) for p in make_params(rng, FAMILY[kind], D, H, dtype, scale=scale)
    ]


def build(module, kind, params, stateful=False):
    cls = getattr(module, kind)
    return cls(*params) if kind in CELL_KINDS else cls(*params, stateful=stateful)


def engines(layer):
    if isinstance(layer, fastrnn.TimeBiLSTM):
        return [layer.forward_lstm._engine, layer.backward_lstm._engine]
    return [layer._engine]


class Driver:
    """Forward and backward calls with fixed, pre-generated arguments for any layer kind."""

    def __init__(self, kind, layer, rng, N, T, D, H, dtype):
        self.kind, self.layer = kind, layer
        width = 2 * H if kind == "TimeBiLSTM" else H
        if kind in CELL_KINDS:
            n_states = 2 if kind == "LSTM" else 1
            self.fwd = [rng.standard_normal((N, D))] + [
                rng.standard_normal((N, H)) for _ in range(n_states)
            ]
            self.bwd = [rng.standard_normal((N, H)) for _ in range(n_states)]
        else:
            self.fwd = [rng.standard_normal((N, T, D))]
            self.bwd = [rng.standard_normal((N, T, width))]
        self.fwd = [a.astype(dtype) for a in self.fwd]
        self.bwd = [a.astype(dtype) for a in self.bwd]

    def step(self):
        out = self.layer.forward(*self.fwd)
        grads_in = self.layer.backward(*self.bwd)
        return out, grads_in


def _flatten(result):
    if isinstance(result, tuple):
        return [a for r in result for a in _flatten(r)]
    return [result]


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def _training_run(kind, dtype, seed, params=None, steps=12):
    """A stateful run of forward/backward calls; returns copies of everything produced."""
    rng = np.random.default_rng(seed)
    D, H, N, T = 12, 24, 6, 15
    params = params if params is not None else all_params(rng, kind, D, H, dtype)
    layer = build(fastrnn, kind, params, stateful=True)
    record = []
    for _ in range(steps):
        driver = Driver(kind, layer, rng, N, T, D, H, dtype)  # fresh data every step
        record += [a.copy() for a in _flatten(driver.step())]
        record += [g.copy() for g in layer.grads]
        if kind == "TimeBiLSTM":
            subs = [layer.forward_lstm, layer.backward_lstm]
        else:
            subs = [] if kind in CELL_KINDS else [layer]
        for sub in subs:
            record += [sub.h.copy(), sub.dh.copy()]
    return record


@pytest.mark.slow
def test_threads_with_their_own_layers_give_the_serial_results(monkeypatch):
    # every LSTM and GRU step is split between the BLAS library's threads, from all threads
    # at once
    monkeypatch.setattr(fastrnn.layers, "CELL_VALUES_PER_THREAD", 1)
    jobs = [(kind, dtype, seed) for kind in ALL_KINDS for dtype in DTYPES for seed in (1,)]
    assert_threads_give_serial_results(lambda job: _training_run(*job), jobs)


@pytest.mark.slow
def test_threads_may_share_parameter_arrays():
    """Layers in different threads may hold the very same Wx, Wh, b (kernels only read
    them); each layer writes only its own grads."""
    for kind, dtype in [("TimeLSTM", np.float32), ("TimeGRU", np.float64), ("GRU", np.float64)]:
        shared = all_params(np.random.default_rng(7), kind, 12, 24, dtype)
        assert_threads_give_serial_results(
            lambda s, k=kind, d=dtype, p=shared: _training_run(k, d, s, params=p), range(6)
        )


# --------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_thousands_of_calls_at_one_shape_do_not_grow_memory(kind):
    rng = np.random.default_rng(3)
    dtype = np.float32
    layer = build(fastrnn, kind, all_params(rng, kind, 8, 16, dtype), stateful=True)
    driver = Driver(kind, layer, rng, N=4, T=10, D=8, H=16, dtype=dtype)
    for _ in range(20):
        driver.step()
    workspace = [e.ws.nbytes for e in engines(layer)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            driver.step()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # One leaked output array per call would be 2000 * 256 bytes or more (a cell's h).
    assert grown < 64 * 1024, f"{grown} bytes still allocated after 2000 calls"
    assert [e.ws.nbytes for e in engines(layer)] == workspace


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_resident_memory_stays_flat():
    """The process's resident size, which also sees Numba's own allocations."""
    rng = np.random.default_rng(4)
    dtype = np.float64
    layer = build(fastrnn, "TimeLSTM", all_params(rng, "TimeLSTM", 16, 32, dtype), True)
    driver = Driver("TimeLSTM", layer, rng, N=8, T=16, D=16, H=32, dtype=dtype)
    for _ in range(50):
        driver.step()
    gc.collect()
    before = _rss_bytes()
    for _ in range(1500):
        driver.step()
    gc.collect()
    grown = _rss_bytes() - before
    # Every call returns ~50 KB of fresh arrays: keeping them would add ~75 MB.
    assert grown < 16 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"


def _buffer_addresses(layer):
    return {
        (k, name): buffer.ctypes.data
        for k, engine in enumerate(engines(layer))
        for name, buffer in engine.ws._buffers.items()
    }


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_shape_change_reallocates_workspaces_once(kind):
    rng = np.random.default_rng(5)
    dtype = np.float64
    params = all_params(rng, kind, 5, 6, dtype)
    layer = build(fastrnn, kind, params)
    small = Driver(kind, layer, rng, N=2, T=3, D=5, H=6, dtype=dtype)
    large = Driver(kind, layer, rng, N=7, T=9, D=5, H=6, dtype=dtype)

    small.step()
    addresses, nbytes = _buffer_addresses(layer), [e.ws.nbytes for e in engines(layer)]
    for _ in range(3):
        small.step()
        assert _buffer_addresses(layer) == addresses
    large.step()  # grows once...
    grown = [e.ws.nbytes for e in engines(layer)]
    assert all(g > n for g, n in zip(grown, nbytes, strict=True))
    addresses = _buffer_addresses(layer)
    for driver in (large, large, small, large, small, small):  # ...and never again
        driver.step()
        assert _buffer_addresses(layer) == addresses
        assert [e.ws.nbytes for e in engines(layer)] == grown

    # Results from the shrunken views of the grown buffers are still the reference's.
    ref = build(reference, kind, params)
    tol = TOLERANCE[np.dtype(dtype)]
    expected = _flatten(_with_layer(small, ref).step())
    for got, exp in zip(_flatten(small.step()), expected, strict=True):
        np.testing.assert_allclose(got, exp, **tol)


def _with_layer(driver, layer):
    clone = object.__new__(Driver)
    clone.__dict__.update(driver.__dict__, layer=layer)
    return clone


def test_layers_are_freed():
    for kind in ALL_KINDS:
        rng = np.random.default_rng(6)
        layer = build(fastrnn, kind, all_params(rng, kind, 3, 4, np.float64), stateful=False)
        Driver(kind, layer, rng, 2, 3, 3, 4, np.float64).step()
        ref = weakref.ref(layer)
        workspace = weakref.ref(engines(layer)[0].ws)
        del layer
        gc.collect()
        assert ref() is None and workspace() is None, kind


_PICKLE_SCRIPT = """
import pickle, sys
import numpy as np
import fastrnn.time_layers as F

path, mode = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
xs = rng.standard_normal((4, 6, 8)).astype(np.float32)
scores = rng.standard_normal((4, 6, 20000)).astype(np.float32)
ts = rng.integers(0, 20000, size=(4, 6))
if mode == "save":
    H = 40
    lstm = F.TimeLSTM(
        *(rng.standard_normal(shape).astype(np.float32) * 0.3
          for shape in [(8, 4 * H), (H, 4 * H), (4 * H,)]),
        stateful=True,
    )
    loss = F.TimeSoftmaxWithLoss()
    lstm.backward(lstm.forward(xs))  # every workspace, plan and pool made
    loss.forward(scores, ts)
    loss.backward()
    with open(path + ".pkl", "wb") as f:
        pickle.dump((lstm, loss), f)
else:
    with open(path + ".pkl", "rb") as f:
        lstm, loss = pickle.load(f)
hs = lstm.forward(xs)
dxs = lstm.backward(hs)
value = loss.forward(scores, ts)
np.savez(path + "." + mode + ".npz", hs=hs, dxs=dxs, dWh=lstm.grads[1], loss=value,
         dscores=loss.backward())
"""


@pytest.mark.slow
def test_pickled_layers_run_in_a_new_process(tmp_path):
    """A model pickled after training steps (or sent to a worker process) runs in the
    process that loads it, with the numbers it gives where it was made: no layer keeps the
    addresses of compiled functions, valid in one process only. Packed products and the
    softmax's rows on the BLAS threads, where this BLAS has them, are the layers' state
    most at risk; the plan is pinned to packed products for that."""
    env = dict(os.environ, FASTRNN_PLAN="forward=packed,backward=packed")
    path = str(tmp_path / "layers")
    for mode in ("save", "load"):
        done = subprocess.run(
            [sys.executable, "-c", _PICKLE_SCRIPT, path, mode],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, f"{mode}: exit {done.returncode}\n{done.stderr}"
    with np.load(path + ".save.npz") as here, np.load(path + ".load.npz") as there:
        for name in here.files:
            np.testing.assert_array_equal(there[name], here[name], err_msg=name)


# --------------------------------------------------------------------------------------
# Long runs
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", TIME_KINDS)
def test_hundreds_of_stateful_calls_track_the_reference(kind):
    rng = np.random.default_rng(8)
    D, H, N, T = 4, 6, 3, 5
    # Weights large enough that the recurrence is not strongly contracting.
    params = all_params(rng, kind, D, H, np.float64, scale=0.9)
    fast = build(fastrnn, kind, params, stateful=True)
    ref = build(reference, kind, params, stateful=True)
    width = 2 * H if kind == "TimeBiLSTM" else H
    tol = TOLERANCE[np.dtype(np.float64)]
    subs = (
        [(fast.forward_lstm, ref.forward_lstm), (fast.backward_lstm, ref.backward_lstm)]
        if kind == "TimeBiLSTM"
        else [(fast, ref)]
    )
    worst = []
    for call in range(400):
        xs = rng.standard_normal((N, T, D))
        hs, hs_ref = fast.forward(xs), ref.forward(xs)
        np.testing.assert_allclose(hs, hs_ref, err_msg=f"call {call}", **tol)
        dhs = rng.standard_normal((N, T, width))
        np.testing.assert_allclose(fast.backward(dhs), ref.backward(dhs), **tol)
        for g, g_ref in zip(fast.grads, ref.grads, strict=True):
            np.testing.assert_allclose(g, g_ref, err_msg=f"call {call}", **tol)
        for f, r in subs:
            np.testing.assert_allclose(f.h, r.h, err_msg=f"call {call}", **tol)
            if hasattr(r, "c"):
                np.testing.assert_allclose(f.c, r.c, err_msg=f"call {call}", **tol)
        worst.append(np.max(np.abs(hs - hs_ref)))
    # No drift: the last calls are as close to the reference as the first ones.
    assert max(worst[-50:]) <= max(10 * max(worst[:50]), 1e-14)


# --------------------------------------------------------------------------------------
# fastmath and NaN/inf
# --------------------------------------------------------------------------------------


def _dispatchers(module):
    return {name: value for name, value in vars(module).items() if isinstance(value, Dispatcher)}


def _kernel_modules():
    """The modules of :data:`fastrnn._jit.KERNEL_MODULES` that define kernels."""
    import importlib

    names = [
        n.removesuffix(".py")
        for n in _jit.KERNEL_MODULES
        if n.startswith("_kernels") and (PACKAGE_DIR / n).exists()
    ]
    return [importlib.import_module(f"fastrnn.{name}") for name in names]


def _kernels():
    """The compiled entry points the layers call (public dispatchers of the kernel modules)."""
    found = {
        f"{module.__name__}.{n}": d
        for module in _kernel_modules()
        for n, d in _dispatchers(module).items()
        if not n.startswith("_") and d.py_func.__module__ == module.__name__
    }
    assert len(found) >= 6, sorted(found)
    return found


def _code_names(code):
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _code_names(const)
    return names


def _overload_templates(func):
    """Numba's overload templates registered for the plain Python function ``func``."""
    context = cpu_target.typing_context
    context.refresh()
    try:
        function_type = context.resolve_value_type(func)
    except Exception:
        return []
    return [t for t in getattr(function_type, "templates", ()) if hasattr(t, "_overload_func")]


def _implementations(overload_func):
    """What ``overload_func`` returns for float32 and float64 arguments: scalars for the
    activations, 2-D arrays for the BLAS wrappers."""
    count = len(inspect.signature(overload_func).parameters)
    found = []
    for dtype in (types.float32, types.float64):
        for argument in (dtype, types.Array(dtype, 2, "C")):
            try:
                implementation = overload_func(*[argument] * count)
            except AttributeError:  # a scalar where the overload wants an array
                continue
            if implementation is not None:
                found.append(implementation)
                break
    return found


def compiled_dependencies(entry):
    """Every Python function whose code ends up compiled into ``entry``: the kernel itself,
    the dispatchers it calls, overloaded functions with their typing functions and their
    implementations, transitively. Returns (functions, overload templates)."""
    pending, seen, functions, templates = [entry], set(), [], []
    while pending:
        item = pending.pop()
        func = item.py_func if isinstance(item, Dispatcher) else item
        if func in seen:
            continue
        seen.add(func)
        functions.append(func)
        followers = [func.__globals__.get(name) for name in _code_names(func.__code__)]
        followers += [cell.cell_contents for cell in func.__closure__ or ()]
        for value in followers:
            if isinstance(value, Dispatcher):
                pending.append(value)
            elif inspect.isfunction(value):
                pending.append(value)
                for template in _overload_templates(value):
                    templates.append(template)
                    pending.append(template._overload_func)
                    for implementation in _implementations(template._overload_func):
                        pending.append(implementation)
    return functions, templates


def test_kernels_are_compiled_with_nan_preserving_options():
    assert not FORBIDDEN_FASTMATH & _jit.SAFE_FASTMATH
    overloads = 0
    for name, kernel in _kernels().items():
        _, templates = compiled_dependencies(kernel)
        for template in templates:  # fast_tanh, fast_sigmoid, ...
            overloads += 1
            fastmath = set(template._jit_options.get("fastmath", ()))
            assert fastmath <= _jit.SAFE_FASTMATH, (name, template)
    assert overloads, "no overloaded activation found: is the walk still right?"
    every_dispatcher = {n: d for m in _kernel_modules() for n, d in _dispatchers(m).items()}
    for name, dispatcher in every_dispatcher.items():
        options = dispatcher.targetoptions
        assert set(options["fastmath"]) <= _jit.SAFE_FASTMATH, name
        assert options["nogil"] is True, name  # so separate layers can run in parallel
        assert options.get("boundscheck") is None, name  # follows NUMBA_BOUNDSCHECK


_FLAGGED = re.compile(
    r"= (?:fadd|fsub|fmul|fdiv|frem|fneg|fcmp|call|select|phi)\s+"
    r"((?:(?:fast|nnan|ninf|nsz|arcp|contract|afn|reassoc)\s+)+)"
)


def _run_every_layer(dtype):
    rng = np.random.default_rng(9)
    for kind in ALL_KINDS:
        layer = build(fastrnn, kind, all_params(rng, kind, 3, 4, dtype))
        Driver(kind, layer, rng, 2, 3, 3, 4, dtype).step()
    _run_attention_layers(rng, dtype)
    _run_sequence_layers(rng, dtype)


def _run_attention_layers(rng, dtype):
    """One forward and backward of every attention layer, so that all their kernels are
    compiled for ``dtype``."""
    from fastrnn import attention_layers

    N, T, H = 2, 3, 4
    hs, h, a = (rng.standard_normal(s).astype(dtype) for s in ((N, T, H), (N, H), (N, T)))
    for layer, args, grad in [
        (attention_layers.TimeAttention(), (hs, hs[:, :2]), hs[:, :2]),
        (attention_layers.Attention(), (hs, h), h),
        (attention_layers.AttentionWeight(), (hs, h), a),
        (attention_layers.WeightSum(), (hs, a), h),
    ]:
        layer.forward(*args)
        layer.backward(grad)


def _run_sequence_layers(rng, dtype):
    """One forward and backward of every layer of :mod:`fastrnn.sequence_layers`, so that
    all their kernels are compiled for ``dtype``."""
    from fastrnn import sequence_layers as seq

    N, T, D, V = 2, 3, 4, 5
    x, scores, W = (rng.standard_normal(s).astype(dtype) for s in ((N, T, D), (N, T, V), (V, D)))
    ids = rng.integers(0, V, size=(N, T))
    for layer, args, grad in [
        (seq.TimeEmbedding(W), (ids,), x),
        (seq.TimeAffine(W.T, W[:, 0]), (x,), scores),
        (seq.TimeSoftmaxWithLoss(), (scores, ids), 1),
        (seq.TimeSigmoidWithLoss(), (x[..., 0], ids % 2), 1),
        (seq.TimeDropout(), (x,), x),
    ]:
        layer.forward(*args)
        layer.backward(grad)
    # The dropout kernel for a global bit generator other than MT19937, too.
    with mock.patch.object(seq, "global_mt19937", lambda: None):
        seq.TimeDropout().forward(x)


#: Float arithmetic in LLVM IR, flagged or not.
_FLOAT_ARITHMETIC = re.compile(r"= (?:fadd|fsub|fmul|fdiv|frem|fneg) ")


@pytest.mark.slow
def test_compiled_code_makes_no_nan_or_inf_assumptions():
    """Recompile every kernel (float32, where the tanh approximation lives) with its own
    options and read the optimised LLVM IR: no instruction may carry nnan, ninf or fast."""
    _run_every_layer(np.float32)
    flagged = 0
    for name, kernel in _kernels().items():
        # The float32 signatures (some also take float64 arrays, e.g. dropout's draws).
        signatures = [
            s
            for s in kernel.signatures
            if any(getattr(a, "dtype", None) == types.float32 for a in s)
        ]
        assert signatures, name
        options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
        fresh = numba.njit(**options)(kernel.py_func)  # in memory: cached code has no IR
        fresh.compile(signatures[0])
        ir = fresh.inspect_llvm(signatures[0])
        flag_sets = {frozenset(m.split()) for m in _FLAGGED.findall(ir)}
        if _FLOAT_ARITHMETIC.search(ir):  # a gather or BLAS-only kernel has nothing to flag
            assert flag_sets, f"{name}: no fast-math instructions found; is the IR right?"
        flagged += bool(flag_sets)
        for flags in flag_sets:
            assert not flags & FORBIDDEN_FASTMATH, (name, sorted(flags))
    assert flagged, "no fast-math instructions in any kernel; is the IR right?"


def _assert_same_specials(actual, expected, what):
    """Identical NaN and ±inf positions, and close finite values."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(actual), test(expected), err_msg=f"{what}: {test}")
    finite = np.isfinite(expected)
    tol = TOLERANCE[np.dtype(np.float32 if actual.dtype == np.float32 else np.float64)]
    np.testing.assert_allclose(actual[finite], expected[finite], err_msg=what, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("where", ["inputs", "weights", "gradients"])
def test_nan_and_inf_propagate_exactly_as_in_the_reference(kind, dtype, where):
    rng = np.random.default_rng(10)
    D, H, N, T = 3, 4, 4, 5
    params = all_params(rng, kind, D, H, dtype)
    driver = Driver(kind, build(fastrnn, kind, params), rng, N, T, D, H, dtype)
    if where == "inputs":  # sample 0 gets a NaN, 1 +inf, 2 -inf, 3 stays finite
        x = driver.fwd[0]
        x[(slice(None), 2) if kind in CELL_KINDS else (slice(None), 2, 1)] = [
            np.nan,
            np.inf,
            -np.inf,
            0.5,
        ]
    elif where == "weights":
        params[1][0, 1] = np.nan  # one column of Wh
        params[0][1, 0] = np.inf
        params[2][-1] = -np.inf
    else:
        flat = driver.bwd[0].reshape(-1)  # a view: the array is C-contiguous
        flat[[0, 7, -1]] = [np.nan, np.inf, -np.inf]
    ref_driver = _with_layer(driver, build(reference, kind, params))
    with np.errstate(all="ignore"):  # NumPy (the reference) warns about inf - inf
        expected = _flatten(ref_driver.step()) + list(ref_driver.layer.grads)
    got = _flatten(driver.step()) + list(driver.layer.grads)
    specials = 0
    for i, (a, e) in enumerate(zip(got, expected, strict=True)):
        _assert_same_specials(a, e, f"output {i}")
        specials += np.count_nonzero(~np.isfinite(e))
    assert specials, "the test put no NaN or inf anywhere"
    if where == "inputs":  # the untouched sample's outputs stay finite
        assert np.isfinite(got[0][3]).all()


# --------------------------------------------------------------------------------------
# Cache: one module per kernel family, and what happens on disk
# --------------------------------------------------------------------------------------


def test_every_compiled_helper_is_covered_by_the_cache_key():
    """Numba keys a cached kernel on its own source file only; fastrnn adds a fingerprint of
    the files in ``_jit.KERNEL_MODULES``. A helper defined anywhere else could change in an
    upgrade while the cached kernels that inlined it keep running."""
    covered = {(PACKAGE_DIR / name).resolve() for name in _jit.KERNEL_MODULES}
    helper_modules = set()
    for name, kernel in _kernels().items():
        functions, _ = compiled_dependencies(kernel)
        for func in functions:
            assert Path(inspect.getfile(func)).resolve() in covered, (name, func)
            helper_modules.add(func.__module__)
    # The walk does reach helpers in other modules than the kernels'.
    assert {"fastrnn._blas", "fastrnn._math"} <= helper_modules


def test_cache_key_holds_the_source_fingerprint_and_the_blas_route():
    """Every cached kernel's key ends with the fingerprint of the kernel sources and the
    BLAS route (library kind and integer width), which no source file records."""
    import hashlib

    from fastrnn._blas import BINDING

    _run_every_layer(np.float64)
    checked = 0
    for name, kernel in _kernels().items():
        cache = kernel._cache
        if not _jit.disk_cache_requested():
            assert type(cache).__name__ == "NullCache", name
            continue
        assert isinstance(cache, _jit.KernelCache), name
        if not kernel.signatures:
            continue  # not compiled in this process
        checked += 1
        key = cache._index_key(kernel.signatures[0], kernel.targetctx.codegen())
        assert key[-2:] == (
            _jit.SOURCE_FINGERPRINT,
            f"blas:{BINDING.route}:{BINDING.int_bits}",
        ), name
    assert checked or not _jit.disk_cache_requested()
    digest = hashlib.sha256()
    for module in _jit.KERNEL_MODULES:
        path = PACKAGE_DIR / module
        digest.update(module.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    assert digest.hexdigest() == _jit.SOURCE_FINGERPRINT


_COMPILING_CALLEES = {
    "jit",
    "njit",
    "generated_jit",
    "vectorize",
    "guvectorize",
    "cfunc",
    "overload",
    "overload_method",
    "overload_attribute",
    "register_jitable",
    "intrinsic",
    "kernel",
    "helper",
}


def _callee_name(node):
    node = node.func if isinstance(node, ast.Call) else node
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def test_no_other_module_compiles_code():
    """Nothing outside ``_jit.KERNEL_MODULES`` compiles code or registers an overload: that
    would also change what the cached kernels run, unnoticed by the cache."""
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.name in _jit.KERNEL_MODULES:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Call):
                found.append(_callee_name(node))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found += [_callee_name(d) for d in node.decorator_list]
            if isinstance(node, ast.ImportFrom) and node.module:
                found += [a.name for a in node.names if "numba" in node.module]
            for name in found:
                assert name not in _COMPILING_CALLEES, (path.name, getattr(node, "lineno", 0), name)


def _copy_package(root: Path) -> Path:
    site = root / "site"
    shutil.copytree(
        PACKAGE_DIR,
        site / "fastrnn",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"),
    )
    return site


def _child_env(site: Path, home: Path, **extra) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NUMBA_", "FASTRNN_", "XDG_", "PYTHON"))
    }
    env.update(PYTHONPATH=str(site), HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


_CHILD_TEMPLATE = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import numpy as np
    import fastrnn
    from fastrnn import _kernels, reference
    from numba.core.dispatcher import Dispatcher
    result = {{"file": fastrnn.__file__}}
{body}
result["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
result["caches"] = sorted(
    {{type(v._cache).__name__ for v in vars(_kernels).values() if isinstance(v, Dispatcher)}}
)
print(json.dumps(result))
"""

# Runs a layer kind against the reference in the child; raises on any mismatch.
_CHILD_LAYER_CHECK = """
def check(kind, dtype, rtol, atol):
    rng = np.random.default_rng(0)
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[kind.replace("Time", "").replace("Bi", "")]
    sets = 2 if kind == "TimeBiLSTM" else 1
    params = [
        (0.5 * rng.standard_normal(s)).astype(dtype)
        for _ in range(sets) for s in ((3, 4 * G), (4, 4 * G), (4 * G,))
    ]
    fast, ref = getattr(fastrnn, kind)(*params), getattr(reference, kind)(*params)
    width = 8 if kind == "TimeBiLSTM" else 4
    if kind.startswith("Time"):
        args, grads_in = [rng.standard_normal((2, 5, 3))], [rng.standard_normal((2, 5, width))]
    else:
        n = 2 if kind == "LSTM" else 1
        args = [rng.standard_normal((2, 3))] + [rng.standard_normal((2, 4)) for _ in range(n)]
        grads_in = [rng.standard_normal((2, 4)) for _ in range(n)]
    args = [a.astype(dtype) for a in args]
    grads_in = [a.astype(dtype) for a in grads_in]
    for method, a in (("forward", args), ("backward", grads_in)):
        got, expected = getattr(fast, method)(*a), getattr(ref, method)(*a)
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        assert len(got) == len(expected), kind
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=kind)
"""


def _run_child(body: str, env: dict, cwd: Path, setup: str = "") -> dict:
    code = setup + _CHILD_TEMPLATE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(cwd.resolve()), result["file"]
    return result


def _make_read_only(*paths: Path) -> None:
    for top in paths:
        for path in sorted(top.rglob("*"), reverse=True) + [top]:
            path.chmod(0o555 if path.is_dir() else 0o444)


def _make_writable(*paths: Path) -> None:
    for top in paths:
        for path in [top, *top.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".nbi", ".nbc"))


@pytest.fixture
def read_only_install(tmp_path):
    """A copy of fastrnn nobody can cache next to, and a home nobody can cache in.

    Tests run as root in CI, and root ignores file modes, so the permission bits alone
    would not stop Numba: ``__pycache__`` is made a regular *file* (no directory can be
    created there) and so is ``~/.cache``. The modes are set read-only as well.
    """
    site = _copy_package(tmp_path)
    (site / "fastrnn" / "__pycache__").write_text("not a directory\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("not a directory\n")
    (tmp_path / "blocked").write_text("not a directory\n")
    _make_read_only(site, home)
    yield tmp_path, site, home
    _make_writable(site, home)


@pytest.mark.slow
def test_read_only_install_compiles_in_memory_with_one_warning(read_only_install):
    root, site, home = read_only_install
    body = (
        _CHILD_LAYER_CHECK
        + f"""
for kind in {list(ALL_KINDS)!r}:
    check(kind, np.float32, {TOLERANCE[np.dtype(np.float32)]["rtol"]},
          {TOLERANCE[np.dtype(np.float32)]["atol"]})
"""
    )
    result = _run_child(body, _child_env(site, home), cwd=root)
    assert len(result["warnings"]) == 1, result["warnings"]
    category, message = result["warnings"][0]
    assert category == "RuntimeWarning" and "compiled in memory" in message
    assert result["caches"] == ["NullCache"]  # nothing tries the disk any more
    assert _cache_files(root) == []


@pytest.mark.slow
def test_unusable_numba_cache_dir_on_a_read_only_install(read_only_install):
    root, site, home = read_only_install
    env = _child_env(site, home, NUMBA_CACHE_DIR=str(root / "blocked" / "numba"))
    body = _CHILD_LAYER_CHECK + "check('TimeRNN', np.float64, 1e-9, 1e-11)\n"
    result = _run_child(body, env, cwd=root)
    assert [w[0] for w in result["warnings"]] == ["RuntimeWarning"], result["warnings"]
    assert _cache_files(root) == []


_STATS_BODY = (
    _CHILD_LAYER_CHECK
    + """
check("TimeRNN", np.float64, 1e-9, 1e-11)
stats = _kernels.rnn_forward.stats
result["hits"] = sum(stats.cache_hits.values())
result["misses"] = sum(stats.cache_misses.values())
"""
)


@pytest.mark.slow
def test_disk_cache_switch_and_stale_sources(tmp_path):
    site = _copy_package(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    cache = tmp_path / "numba-cache"
    env = _child_env(site, home, NUMBA_CACHE_DIR=str(cache))

    first = _run_child(_STATS_BODY, env, cwd=tmp_path)
    assert (first["hits"], first["warnings"]) == (0, [])
    assert first["misses"] >= 1 and "KernelCache" in first["caches"]
    files = {p: p.stat().st_mtime_ns for p in _cache_files(cache)}
    assert files, "nothing was cached"

    second = _run_child(_STATS_BODY, env, cwd=tmp_path)
    assert (second["hits"], second["misses"]) == (1, 0)  # served from the disk cache

    # The switch: no cache at all (Numba's NullCache), nothing read or written, no warning.
    off = _run_child(_STATS_BODY, dict(env, FASTRNN_DISABLE_CACHE="1"), cwd=tmp_path)
    assert (off["hits"], off["warnings"], off["caches"]) == (0, [], ["NullCache"])
    assert {p: p.stat().st_mtime_ns for p in _cache_files(cache)} == files

    # Another BLAS route: kernels compiled against NumPy's library are not loaded.
    scipy_route = _run_child(_STATS_BODY, dict(env, FASTRNN_BLAS="scipy"), cwd=tmp_path)
    assert (scipy_route["hits"], scipy_route["misses"]) == (0, 1)
    assert [w[0] for w in scipy_route["warnings"]] == ["RuntimeWarning"]

    # An upgrade that changes a helper in another module than the kernel's (_math.py): the
    # cached rnn_forward is not used, the new code runs. (The helper changed: the float64
    # tanh that rnn_forward calls; Numba alone would not notice, its key is _kernels.py.)
    math_file = site / "fastrnn" / "_math.py"
    source = math_file.read_text()
    old = "return math.tanh(x)"
    assert source.count(old) == 1, "update this test: it negates the float64 tanh helper"
    math_file.write_text(source.replace(old, "return -math.tanh(x)"))
    changed = _run_child(
        """
        layer = fastrnn.TimeRNN(np.ones((1, 1)), np.zeros((1, 1)), np.zeros(1))
        result["h"] = float(layer.forward(np.ones((1, 1, 1)))[0, 0, 0])
        result["hits"] = sum(_kernels.rnn_forward.stats.cache_hits.values())
        """,
        env,
        cwd=tmp_path,
    )
    assert (changed["hits"], changed["warnings"]) == (0, [])
    assert changed["h"] == pytest.approx(-np.tanh(1.0), rel=1e-12)


@pytest.mark.slow
def test_bounds_checked_runs_never_use_the_disk_cache(tmp_path):
    """Numba's cache ignores NUMBA_BOUNDSCHECK: a checked run would load unchecked code."""
    site = _copy_package(tmp_path)
    (site / "probe.py").write_text(
        "from fastrnn._jit import kernel\n\n\n@kernel\ndef read(a, i):\n    return a[i]\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = _child_env(site, home, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    body = """
import probe
try:
    result["value"] = float(probe.read(np.arange(3.0), INDEX))
except IndexError as error:
    result["value"] = "IndexError"
result["hits"] = sum(probe.read.stats.cache_hits.values())
result["probe_cache"] = type(probe.read._cache).__name__
"""
    plain = _run_child(body.replace("INDEX", "2"), env, cwd=tmp_path)
    assert (plain["value"], plain["probe_cache"]) == (2.0, "KernelCache")
    checked = _run_child(body.replace("INDEX", "3"), dict(env, NUMBA_BOUNDSCHECK="1"), tmp_path)
    assert checked["value"] == "IndexError"
    assert (checked["hits"], checked["probe_cache"], checked["warnings"]) == (0, "NullCache", [])
    assert checked["caches"] == ["NullCache"]
    again = _run_child(body.replace("INDEX", "2"), env, cwd=tmp_path)
    assert (again["value"], again["hits"]) == (2.0, 1)  # the normal cache was left alone


# --------------------------------------------------------------------------------------
# Leaving out the products of a zero initial state
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_finite_and_zero_checks_see_every_special_value(dtype):
    """The kernels leave out ``h0 @ Wh`` (and the first rows of ``dWh``) only when ``h0``
    is zero and the other factor finite. Both checks compiled with the kernels' fast-math
    flags: a NaN or an infinity anywhere, in any row, must be seen (a sum of ``v - v``
    was folded to zero in float64 under ``reassoc``)."""
    from fastrnn._kernels import _all_finite, _all_zero

    big = np.finfo(dtype).max
    base = np.full((3, 37), big, dtype=dtype)
    base[1, 5] = -big
    assert _all_finite(base)
    assert _all_finite(base[:, ::2])  # strided views, as the GRU passes
    for special in (np.nan, np.inf, -np.inf):
        for position in [(0, 0), (1, 36), (2, 17)]:
            a = base.copy()
            a[position] = special
            assert not _all_finite(a), (special, position)
    zeros = np.zeros((4, 19), dtype=dtype)
    zeros[2, 3] = -0.0
    assert _all_zero(zeros)
    for value in (np.finfo(dtype).smallest_subnormal, -1.0, np.nan, np.inf):
        a = zeros.copy()
        a[3, 18] = value
        assert not _all_zero(a), value
    assert _all_zero(zeros[:0]) and _all_finite(zeros[:0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["TimeRNN", "TimeLSTM", "TimeGRU"])
@pytest.mark.parametrize("state", ["none", "zeros", "negative zeros", "one value"])
def test_zero_initial_state_matches_the_reference(kind, dtype, state):
    """No state, an explicit zero state (either sign) and a state that is zero but for one
    value give the reference's outputs, state gradients and weight gradients."""
    rng = np.random.default_rng(11)
    D, H, N, T = 3, 5, 4, 6
    params = all_params(rng, kind, D, H, dtype)
    fast = build(fastrnn, kind, params, stateful=True)
    ref = build(reference, kind, params, stateful=True)
    if state != "none":
        h0 = np.zeros((N, H), dtype=dtype)
        if state == "negative zeros":
            h0[:] = -0.0
        elif state == "one value":  # in the last row checked: the whole state is read
            h0[N - 1, H - 1] = 0.25
        cells = [np.zeros_like(h0)] if kind == "TimeLSTM" else []
        fast.set_state(h0.copy(), *[c.copy() for c in cells])
        ref.set_state(h0.copy(), *[c.copy() for c in cells])
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    assert_close(fast.forward(xs), ref.forward(xs))
    assert_close(fast.backward(dhs), ref.backward(dhs))
    assert_close(fast.dh, ref.dh)
    for got, expected in zip(fast.grads, ref.grads, strict=True):
        assert_close(got, expected)
