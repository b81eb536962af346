"""Packed per-step products: ``C (+)= A @ W`` against a weight matrix packed once per call,
run on the BLAS library's own threads.

Why
---
The recurrent layers' per-step products (``h @ Wh`` forward, ``dA @ Wh.T`` backward) have
few rows (the batch) and a weight matrix that stays the same for all ``T`` steps of a call.
A BLAS library packs that matrix into its own layout on every call: for ``(20, 650) @
(650, 2600)`` that is a 6.8 MB copy per step, and OpenBLAS (Haswell kernels, two threads)
ran the product at 55-80 GFLOP/s against 100-140 for a large square one. Here the matrix is
packed once per layer call into panels of :data:`PANEL` columns, ``panels[q, k, c] =
W[k, PANEL * q + c]``, which the tiles below then read sequentially, step after step.

The tiles keep a block of up to five rows of ``C`` by two vectors in registers for the
whole sum over ``k``; they are written in LLVM IR (256-bit vectors, ``llvm.fmuladd``) so
that the code does not depend on what the loop vectoriser makes of a loop nest.

Threads
-------
On two cores, a second thread pool next to NumPy's BLAS would fight it: OpenBLAS's workers
spin for about 0.1 s after every product, and a parallel region started then ran 3-15x
slower than alone. So the panels are split between the BLAS library's own threads:
OpenBLAS (pthreads builds) exports ``gotoblas_pthread(n, function, args, stride)``, which
runs ``function(args + i * stride)`` for ``i < n``, the first on the calling thread and the
others on its workers, and returns when all are done. The layer passes the number of
threads the BLAS currently uses (so ``threadpoolctl`` limits and ``OPENBLAS_NUM_THREADS``
hold); with one thread, or another BLAS library, the panels run on the calling thread.
The same pools run other jobs that split well by rows (an LSTM step's element-wise work in
:mod:`fastrnn._kernels`, the softmax cross-entropy of :mod:`fastrnn._kernels_sequence`):
:func:`new_pool` takes the worker that runs them.

Measured on a 2-core AMD EPYC (Zen 3, AVX2; OpenBLAS 0.3.31, Haswell kernels), repeated in
a compiled loop: ``(20, 650) @ (650, 2600)`` at 130-145 GFLOP/s against OpenBLAS's 55-80,
``(20, 100) @ (100, 400)`` at 58-64 against 23, ``(128, 128) @ (128, 512)`` at 130-136
against 75-117. :mod:`fastrnn._planner` still times this route against the BLAS routes on
the machine that runs and keeps it only where it wins.

Everything a cached kernel calls from here (the tiles, :func:`pack_panels`,
:func:`packed_product`) lives in this module, which is one of
:data:`fastrnn._jit.KERNEL_MODULES`.
"""

from __future__ import annotations

import threading

import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _jit
from ._blas import BINDING, blas_threads
from ._jit import helper

__all__ = [
    "DISPATCH",
    "JOB_BYTES",
    "JOB_FIELDS",
    "MAX_THREADS",
    "PANEL",
    "THREADS",
    "UNUSED_POOL",
    "WORKER",
    "address_of",
    "call_dispatch",
    "new_pool",
    "pack_panels",
    "packed_product",
    "panel_count",
    "pointer_to",
    "row_pool",
    "split_threads",
    "thread_pool",
    "tiled_gemm_nn",
    "use_threads",
    "worker_address",
]

#: Columns per panel: two 256-bit vectors of float32.
PANEL = 16

#: The int64 fields of one thread's job in a pool (see :func:`new_pool`), and its size.
JOB_FIELDS = 16
JOB_BYTES = JOB_FIELDS * 8
# a packed product's job fields
_C, _A, _PANELS, _ROWS, _DEPTH, _LDC, _LDA, _COLUMNS, _FIRST, _STOP, _ACCUMULATE = range(11)
#: Fields of a pool's row 0: the dispatch function's and the worker's addresses, and the
#: number of threads to use.
DISPATCH, WORKER, THREADS = range(3)

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VECTOR_BITS = 256  # one AVX register


# --------------------------------------------------------------------------------------
# Tiles, in LLVM IR
# --------------------------------------------------------------------------------------


class _Vectors:
    """The IR vector type and ``fmuladd`` of one float dtype."""

    def __init__(self, builder, dtype: types.Float):
        self.scalar = ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()
        self.align = dtype.bitwidth // 8
        self.lanes = _VECTOR_BITS // dtype.bitwidth
        self.vector = ir.VectorType(self.scalar, self.lanes)
        self.pointer = self.vector.as_pointer()
        fn_type = ir.FunctionType(self.vector, [self.vector] * 3)
        name = f"llvm.fmuladd.v{self.lanes}f{dtype.bitwidth}"
        self.fmuladd = cgutils.get_or_insert_function(builder.module, fn_type, name)

    def load(self, builder, row, offset):
        """The vector at ``row[offset:offset + lanes]``."""
        address = builder.bitcast(builder.gep(row, [offset]), self.pointer)
        return builder.load(address, align=self.align)

    def splat(self, builder, scalar):
        first = builder.insert_element(ir.Constant(self.vector, ir.Undefined), scalar, _I32(0))
        mask = ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes)
        return builder.shuffle_vector(first, ir.Constant(self.vector, ir.Undefined), mask)


def _matrix(context, builder, ty, value):
    """Data pointer, rows and row stride (in elements) of a 2-D array with unit-stride rows."""
    array = context.make_array(ty)(context, builder, value)
    rows = builder.extract_value(array.shape, 0)
    row_bytes = builder.extract_value(array.strides, 0)
    return array.data, rows, builder.sdiv(row_bytes, _I64(ty.dtype.bitwidth // 8))


def _rows(builder, matrix, first, count):
    """Pointers to rows ``first .. first + count - 1`` of ``matrix``."""
    data, _, stride = matrix
    b = builder
    return [b.gep(data, [b.mul(b.add(first, _I64(r)), stride)]) for r in range(count)]


def _accumulators(builder, ty, count):
    """``count`` zeroed entry-block allocas, which LLVM keeps in registers."""
    slots = [cgutils.alloca_once(builder, ty) for _ in range(count)]
    for slot in slots:
        builder.store(ir.Constant(ty, [0.0] * ty.count), slot)
    return slots


def _store(builder, accumulate, target, total, align):
    """``*target = *target + total`` when ``accumulate``, else ``total``."""
    summed = builder.fadd(builder.load(target, align=align), total)
    builder.store(builder.select(accumulate, summed, total), target, align=align)


def _matrices_of_one_float(*arrays) -> bool:
    first = arrays[0]
    return (
        isinstance(first, types.Array)
        and isinstance(first.dtype, types.Float)
        and all(
            isinstance(a, types.Array) and a.ndim == 2 and a.dtype == first.dtype for a in arrays
        )
    )


def _operands(context, builder, signature, args):
    """A tile's vector helpers, ``C``, ``A`` and ``B`` as :func:`_matrix` gives them, its
    first row as an i64 and the ``accumulate`` flag."""
    vec = _Vectors(builder, signature.args[0].dtype)
    C, A, B = (
        _matrix(context, builder, ty, value)
        for ty, value in zip(signature.args[:3], args[:3], strict=True)
    )
    i0 = args[3] if args[3].type == _I64 else builder.sext(args[3], _I64)
    return vec, C, A, B, i0, args[4]


def _tile_intrinsic(codegen):
    """The intrinsic ``tile(C, A, B, i0, accumulate)`` whose body ``codegen`` writes."""

    @intrinsic
    def tile(typingctx, C, A, B, i0, accumulate):
        if _matrices_of_one_float(C, A, B):
            return types.void(C, A, B, i0, accumulate), codegen
        return None

    return tile


def _tile(rows: int, vectors: int):
    """An intrinsic ``tile(C, A, B, i0, accumulate)``: ``C[i0:i0+rows] (+)= A[i0:i0+rows] @
    B`` for a ``B`` of ``vectors`` vectors' width (16 float32 columns for two), accumulated
    in ``rows * vectors`` registers over all of ``B``'s rows."""

    def codegen(context, builder, signature, args):
        vec, C, A, B, i0, accumulate = _operands(context, builder, signature, args)
        b_data, depth, ldb = B
        a_rows = _rows(builder, A, i0, rows)
        acc = _accumulators(builder, vec.vector, rows * vectors)
        with cgutils.for_range(builder, depth) as loop:
            k = loop.index
            b_row = builder.gep(b_data, [builder.mul(k, ldb)])
            b_k = [vec.load(builder, b_row, _I64(v * vec.lanes)) for v in range(vectors)]
            for r in range(rows):
                a_k = vec.splat(builder, builder.load(builder.gep(a_rows[r], [k])))
                for v in range(vectors):
                    slot = acc[r * vectors + v]
                    total = builder.call(vec.fmuladd, [a_k, b_k[v], builder.load(slot)])
                    builder.store(total, slot)
        for r, c_row in enumerate(_rows(builder, C, i0, rows)):
            for v in range(vectors):
                target = builder.bitcast(builder.gep(c_row, [_I64(v * vec.lanes)]), vec.pointer)
                _store(builder, accumulate, target, builder.load(acc[r * vectors + v]), vec.align)
        return context.get_dummy_value()

    return _tile_intrinsic(codegen)


def _narrow_tile(rows: int):
    """An intrinsic ``tile(C, A, B, i0, accumulate)`` for a ``B`` narrower than one vector:
    as :func:`_tile` with one vector, only ``B``'s columns read and ``C``'s written."""

    def codegen(context, builder, signature, args):
        vec, C, A, B, i0, accumulate = _operands(context, builder, signature, args)
        b_data, depth, ldb = B
        width = builder.extract_value(
            context.make_array(signature.args[2])(context, builder, args[2]).shape, 1
        )
        a_rows = _rows(builder, A, i0, rows)
        acc = _accumulators(builder, vec.vector, rows)
        b_slot = cgutils.alloca_once(builder, vec.vector)
        zero = ir.Constant(vec.vector, [0.0] * vec.lanes)
        with cgutils.for_range(builder, depth) as loop:
            k = loop.index
            b_row = builder.gep(b_data, [builder.mul(k, ldb)])
            builder.store(zero, b_slot)
            for lane in range(vec.lanes - 1):
                with builder.if_then(builder.icmp_signed("<", _I64(lane), width)):
                    value = builder.load(builder.gep(b_row, [_I64(lane)]))
                    lanes = builder.insert_element(builder.load(b_slot), value, _I32(lane))
                    builder.store(lanes, b_slot)
            b_k = builder.load(b_slot)
            for r in range(rows):
                a_k = vec.splat(builder, builder.load(builder.gep(a_rows[r], [k])))
                builder.store(builder.call(vec.fmuladd, [a_k, b_k, builder.load(acc[r])]), acc[r])
        for r, c_row in enumerate(_rows(builder, C, i0, rows)):
            total = builder.load(acc[r])
            for lane in range(vec.lanes - 1):
                with builder.if_then(builder.icmp_signed("<", _I64(lane), width)):
                    target = builder.gep(c_row, [_I64(lane)])
                    value = builder.extract_element(total, _I32(lane))
                    _store(builder, accumulate, target, value, None)
        return context.get_dummy_value()

    return _tile_intrinsic(codegen)


# Numba code calls intrinsics by global name: one global per tile shape, and the column
# drivers that run a tile shape down all rows are generated from one template.
_TILES = {}
for _r in range(1, 6):
    _TILES[f"_tile_{_r}x2"] = _tile(_r, 2)
    _TILES[f"_tile_{_r}x1"] = _tile(_r, 1)
    _TILES[f"_tile_{_r}xw"] = _narrow_tile(_r)
globals().update(_TILES)


def _column_driver(kind: str):
    """A helper ``(C, A, B, accumulate)`` running the ``_tile_{rows}x{kind}`` tiles down all
    rows of ``C``: blocks of five rows, then the rest."""
    call = "(C, A, B, i, accumulate)"
    rest = "".join(
        f"    {'if' if r == 4 else 'elif'} rest == {r}:\n        _tile_{r}x{kind}{call}\n"
        for r in range(4, 0, -1)
    )
    source = (
        "def driver(C, A, B, accumulate):\n"
        "    M = C.shape[0]\n"
        "    i = 0\n"
        "    while i + 5 <= M:\n"
        f"        _tile_5x{kind}{call}\n"
        "        i += 5\n"
        "    rest = M - i\n" + rest
    )
    namespace = dict(_TILES)
    # Generated from constants above; compiled under this file's name, which the cache-key
    # check (tests/test_reliability.py) follows to find where compiled code comes from.
    exec(compile(source, __file__, "exec"), namespace)
    return helper(namespace["driver"])


_two_vectors_down = _column_driver("2")
_one_vector_down = _column_driver("1")
_narrow_down = _column_driver("w")


@helper
def tiled_gemm_nn(C, A, B, accumulate):
    """``C = A @ B``, or ``C += A @ B`` when ``accumulate``, for any width.

    Parameters
    ----------
    C : (M, N) array
    A : (M, K) array
    B : (K, N) array
        One float dtype, each with unit-stride rows (a column block of a C-contiguous array
        qualifies). Fastest when ``B``'s rows are short and adjacent, as in a panel.
    accumulate : bool
    """
    N = C.shape[1]
    lanes = 32 // C.itemsize
    j = 0
    while j + 2 * lanes <= N:
        _two_vectors_down(C[:, j : j + 2 * lanes], A, B[:, j : j + 2 * lanes], accumulate)
        j += 2 * lanes
    if j + lanes <= N:
        _one_vector_down(C[:, j : j + lanes], A, B[:, j : j + lanes], accumulate)
        j += lanes
    if j < N:
        _narrow_down(C[:, j:], A, B[:, j:], accumulate)


# --------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------


def panel_count(columns: int) -> int:
    """Panels of :data:`PANEL` columns that hold ``columns`` columns."""
    return -(-columns // PANEL)


@helper
def pack_panels(panels, W, transposed):
    """``panels[q, k, c] = M[k, PANEL * q + c]`` for ``M`` = ``W.T`` when ``transposed``,
    else ``W``; zeros past ``M``'s last column.

    Parameters
    ----------
    panels : (ceil(columns / PANEL), depth, PANEL) array
        Out, for ``M`` of shape ``(depth, columns)``.
    W : 2-D array
    transposed : bool
    """
    panels[panels.shape[0] - 1, :, :] = 0  # only the last panel can be partial
    depth = panels.shape[1]
    for q in range(panels.shape[0]):
        first = q * PANEL
        if transposed:  # panel columns are rows of W
            rows = W[first : first + PANEL]
            width = rows.shape[0]
            # Gathering one panel row from the ``width`` rows of W, rather than scattering
            # each row of W down a panel column, writes every cache line once: 2.2x faster
            # for a (650, 2600) W with cold caches (AMD EPYC Zen 4).
            for k in range(depth):
                target = panels[q, k]
                for c in range(width):
                    target[c] = rows[c, k]
        else:
            width = min(PANEL, W.shape[1] - first)
            for k in range(depth):
                source, target = W[k], panels[q, k]
                for c in range(width):
                    target[c] = source[first + c]


@helper
def _panel_range_product(C, A, panels, first, stop, accumulate):
    """Panels ``first .. stop - 1`` of ``C (+)= A @ W``, ``W`` packed in ``panels``."""
    columns = C.shape[1]
    for q in range(first, stop):
        j = q * PANEL
        width = min(PANEL, columns - j)
        tiled_gemm_nn(C[:, j : j + width], A, panels[q, :, :width], accumulate)


# --------------------------------------------------------------------------------------
# Running on the BLAS library's threads
# --------------------------------------------------------------------------------------


@intrinsic
def call_dispatch(typingctx, dispatch, threads, worker, jobs, stride):
    """``dispatch(threads, worker, jobs, stride)`` for the C function at address ``dispatch``,
    ``int (*)(int, void *, void *, int)``: OpenBLAS's ``gotoblas_pthread``."""
    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        pointer = ir.IntType(8).as_pointer()
        fn_type = ir.FunctionType(_I32, [_I32, pointer, pointer, _I32])
        function = builder.inttoptr(args[0], fn_type.as_pointer())
        builder.call(
            function,
            [
                builder.trunc(args[1], _I32),
                builder.inttoptr(args[2], pointer),
                builder.inttoptr(args[3], pointer),
                builder.trunc(args[4], _I32),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pointer_to(typingctx, address, like):
    """The integer ``address`` as a pointer to elements of ``like``'s type."""
    if not isinstance(like, (types.Float, types.Integer)):
        return None
    sig = types.CPointer(like)(types.int64, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def address_of(typingctx, pointer):
    """A ``void *`` as an int64."""
    if not isinstance(pointer, (types.RawPointer, types.CPointer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], _I64)

    return types.int64(pointer), codegen


@helper
def split_threads(pool, parts):
    """How many of ``pool``'s threads to split ``parts`` parts of a job between: 1 (run on
    the calling thread) when the pool has no dispatch function."""
    if pool[0, DISPATCH] == 0:
        return 1
    return min(pool[0, THREADS], pool.shape[0] - 1, parts)


@helper
def packed_product(C, A, panels, accumulate, pool):
    """``C = A @ W`` (``+=`` when ``accumulate``), ``W`` packed by :func:`pack_panels`, the
    panels split between the threads ``pool`` names (see :func:`new_pool`).

    Parameters
    ----------
    C : (M, G) array
    A : (M, K) array
        Unit-stride rows, one float dtype with ``panels``.
    panels : (ceil(G / PANEL), K, PANEL) array
    accumulate : bool
    pool : (1 + threads, JOB_FIELDS) int64 array
        Row 0: the dispatch function's address (0 for none), the worker's address and the
        number of threads to use; the other rows are scratch for the threads' jobs.
    """
    P = panels.shape[0]
    threads = split_threads(pool, P)
    if threads <= 1:
        _panel_range_product(C, A, panels, 0, P, accumulate)
        return
    itemsize = C.itemsize
    for t in range(threads):
        job = pool[1 + t]
        job[_C] = C.ctypes.data
        job[_A] = A.ctypes.data
        job[_PANELS] = panels.ctypes.data
        job[_ROWS] = C.shape[0]
        job[_DEPTH] = A.shape[1]
        job[_LDC] = C.strides[0] // itemsize
        job[_LDA] = A.strides[0] // itemsize
        job[_COLUMNS] = C.shape[1]
        job[_FIRST] = t * P // threads
        job[_STOP] = (t + 1) * P // threads
        job[_ACCUMULATE] = 1 if accumulate else 0
    call_dispatch(pool[0, DISPATCH], threads, pool[0, WORKER], pool[1:].ctypes.data, JOB_BYTES)


def _job_worker(dtype):
    """The C callback that runs one thread's job of :func:`packed_product` in ``dtype``."""
    zero = dtype.type(0)

    def worker(address):
        job = carray(pointer_to(address_of(address), np.int64(0)), (JOB_FIELDS,))
        rows, depth, columns = job[_ROWS], job[_DEPTH], job[_COLUMNS]
        P = (columns + PANEL - 1) // PANEL
        C = carray(pointer_to(job[_C], zero), (rows, job[_LDC]))[:, :columns]
        A = carray(pointer_to(job[_A], zero), (rows, job[_LDA]))[:, :depth]
        panels = carray(pointer_to(job[_PANELS], zero), (P, depth, PANEL))
        _panel_range_product(C, A, panels, job[_FIRST], job[_STOP], job[_ACCUMULATE] != 0)

    return _jit.callback(worker)


_workers: dict = {}
_workers_lock = threading.Lock()


def worker_address(make_worker, dtype) -> int:
    """The address of the C callback ``make_worker(dtype)`` compiles (through
    :func:`fastrnn._jit.callback`), made on first use: a few seconds of compiling, once,
    since the disk cache keeps it."""
    dtype = np.dtype(dtype)
    with _workers_lock:
        worker = _workers.get((make_worker, dtype))
        if worker is None:
            worker = _workers[make_worker, dtype] = make_worker(dtype)
    return worker.address


#: Most threads a pool splits the panels between.
MAX_THREADS = 64


def new_pool(dtype, make_worker=_job_worker) -> np.ndarray:
    """A pool for :func:`packed_product` in ``dtype`` (or for the jobs of another
    ``make_worker``): row 0 names the dispatch function (OpenBLAS's ``gotoblas_pthread``,
    or 0 to run on the calling thread) and the worker; :func:`use_threads` sets the thread
    count before each call. The other rows are the threads' jobs, :data:`JOB_FIELDS` int64
    each."""
    pool = np.zeros((1 + MAX_THREADS, JOB_FIELDS), np.int64)
    dispatch = BINDING.thread_dispatch
    if dispatch:
        pool[0, DISPATCH] = dispatch
        pool[0, WORKER] = worker_address(make_worker, dtype)
    pool[0, THREADS] = 1
    return pool


#: A pool with no job rows, for kernel calls whose products are not packed: with it,
#: :func:`packed_product` would run on the calling thread and write nothing here. (Not
#: read-only, which would make every kernel compile a second time for its type.)
UNUSED_POOL = np.zeros((1, JOB_FIELDS), np.int64)


def use_threads(pool: np.ndarray) -> np.ndarray:
    """Set ``pool`` to as many threads as NumPy's BLAS uses now; returns ``pool``."""
    pool[0, THREADS] = blas_threads() if pool[0, DISPATCH] else 1
    return pool


_thread_pools = threading.local()


def thread_pool(dtype, make_worker=_job_worker) -> np.ndarray:
    """The calling Python thread's pool for the jobs of ``make_worker`` in ``dtype``, set by
    :func:`use_threads` to as many threads as NumPy's BLAS uses now.

    Pools belong to Python threads, not to layers: a pool holds the addresses of compiled
    functions, valid in this process only, so a layer that kept one would carry them
    into a pickle and crash the process that loads it. A Python thread runs one kernel at
    a time, so its layers can share one pool; other threads have their own.
    """
    pools = getattr(_thread_pools, "pools", None)
    if pools is None:
        pools = _thread_pools.pools = {}
    key = (make_worker, np.dtype(dtype))
    pool = pools.get(key)
    if pool is None:
        pool = pools[key] = new_pool(dtype, make_worker)
    return use_threads(pool)


def row_pool(dtype, make_worker, rows: int, work: int, work_per_thread: int) -> np.ndarray:
    """The pool to split ``rows`` rows holding ``work`` units of work between: the calling
    thread's pool for ``make_worker`` (:func:`thread_pool`), set to as many threads as the
    BLAS uses and the work fills at ``work_per_thread`` each, or :data:`UNUSED_POOL` (the
    calling thread) when that is one thread or fewer."""
    threads = min(rows, work // work_per_thread)
    if threads <= 1:
        return UNUSED_POOL
    pool = thread_pool(dtype, make_worker)
    pool[0, THREADS] = min(threads, pool[0, THREADS])
    return pool
