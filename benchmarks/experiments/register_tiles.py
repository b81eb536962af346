"""Experiment, not used by fastrnn: register-blocked products for the per-step recurrent
products, against NumPy's BLAS (see README, "Register-blocked per-step products").

Run ``python benchmarks/experiments/register_tiles.py``: it checks both products against
NumPy, then times them and OpenBLAS (one and all threads) on the per-step shapes of the
book's layers, each product repeated in a compiled loop as the kernels' time loops call
it (no Python in between).

The idea. The per-step products ``h @ Wh`` (forward) and ``dA @ Wh.T`` (backward) have few
rows (the batch) and a weight matrix that stays the same over all steps. A BLAS library
packs that matrix into its own layout on every call, which for small shapes is a large part
of the work. These products read the matrix as it is (its rows are contiguous, and at
these sizes it stays in the core's L2 cache from one step to the next) and keep a tile of
the result in vector registers for the whole sum:

* :func:`tiled_gemm_nn`: ``C (+)= A @ B``, tiles of 5 rows by two vectors (16 float32 or
  8 float64 columns): ten accumulators, two loads of ``B`` per five broadcasts of ``A``;
* :func:`tiled_gemm_nt`: ``C (+)= A @ B.T``, tiles of 5 rows of ``A`` by 2 rows of ``B``:
  ten vector accumulators along the shared axis, summed across lanes at the end.

The tiles are written in LLVM IR, on 256-bit vectors with ``llvm.fmuladd``, so that they
do not depend on what the loop vectoriser makes of a loop nest.

What was measured (AMD EPYC Zen 3, 2 cores, AVX2; OpenBLAS 0.3.31, Haswell kernels): about
60 GFLOP/s for ``(20, 100) @ (100, 400)`` on one thread, against OpenBLAS's 40-59; slower
than OpenBLAS's two threads once ``Wh`` outgrows the L2 cache. Offered to the planner as a
fourth route and measured side by side inside whole layers, it gave 0.89-1.11x, so fastrnn
does not use it.
"""

from __future__ import annotations

import time

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from threadpoolctl import threadpool_limits

from fastrnn._blas import gemm
from fastrnn._jit import helper, kernel

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VECTOR_BITS = 256  # one AVX register


# --------------------------------------------------------------------------------------
# IR building blocks
# --------------------------------------------------------------------------------------


class _Vectors:
    """The IR types and the ``fmuladd`` of one float dtype."""

    def __init__(self, builder, dtype: types.Float):
        self.scalar = ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()
        self.align = dtype.bitwidth // 8
        self.lanes = _VECTOR_BITS // dtype.bitwidth
        self.vector = ir.VectorType(self.scalar, self.lanes)
        self.pointer = self.vector.as_pointer()
        self.fmuladd_vector = _declare_fmuladd(
            builder, self.vector, f"v{self.lanes}f{dtype.bitwidth}"
        )
        self.fmuladd_scalar = _declare_fmuladd(builder, self.scalar, f"f{dtype.bitwidth}")

    def load(self, builder, row, offset):
        """The vector at ``row[offset:offset + lanes]``."""
        address = builder.bitcast(builder.gep(row, [offset]), self.pointer)
        return builder.load(address, align=self.align)

    def splat(self, builder, scalar):
        first = builder.insert_element(ir.Constant(self.vector, ir.Undefined), scalar, _I32(0))
        mask = ir.Constant(ir.VectorType(_I32, self.lanes), [0] * self.lanes)
        return builder.shuffle_vector(first, ir.Constant(self.vector, ir.Undefined), mask)

    def lane_sum(self, builder, value):
        """The sum of a vector's lanes, as a tree of halves."""
        width = self.lanes
        while width > 1:
            width //= 2
            low = ir.Constant(ir.VectorType(_I32, width), list(range(width)))
            high = ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width)))
            undefined = ir.Constant(value.type, ir.Undefined)
            value = builder.fadd(
                builder.shuffle_vector(value, undefined, low),
                builder.shuffle_vector(value, undefined, high),
            )
        return builder.extract_element(value, _I32(0))


def _declare_fmuladd(builder, ty, suffix):
    fn_type = ir.FunctionType(ty, [ty, ty, ty])
    return cgutils.get_or_insert_function(builder.module, fn_type, f"llvm.fmuladd.{suffix}")


def _matrix(context, builder, ty, value):
    """Data pointer, rows, columns and row stride (in elements) of a 2-D array whose rows
    are contiguous."""
    array = context.make_array(ty)(context, builder, value)
    rows = builder.extract_value(array.shape, 0)
    columns = builder.extract_value(array.shape, 1)
    row_bytes = builder.extract_value(array.strides, 0)
    stride = builder.sdiv(row_bytes, _I64(ty.dtype.bitwidth // 8))
    return array.data, rows, columns, stride


def _i64(builder, value):
    return value if value.type == _I64 else builder.sext(value, _I64)


def _slots(builder, ty, count):
    """``count`` zeroed accumulators: entry-block allocas, which LLVM keeps in registers."""
    zero = (
        ir.Constant(ty, [0.0] * ty.count) if isinstance(ty, ir.VectorType) else ir.Constant(ty, 0.0)
    )
    slots = [cgutils.alloca_once(builder, ty) for _ in range(count)]
    for slot in slots:
        builder.store(zero, slot)
    return slots


def _accumulate(builder, slot, fmuladd, a, b):
    builder.store(builder.call(fmuladd, [a, b, builder.load(slot)]), slot)


def _same_matrices(*arrays) -> bool:
    """2-D float arrays of one dtype (any layout: the callers pass views whose rows are
    contiguous, such as column blocks of a C-contiguous array)."""
    first = arrays[0]
    return all(
        isinstance(a, types.Array) and a.ndim == 2 and a.dtype == first.dtype for a in arrays
    ) and isinstance(first.dtype, types.Float)


# --------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------


class _Tile:
    """What a tile's IR body gets: the builder, the vector helpers, data pointer, rows,
    columns and row stride of ``C``, ``A`` and ``B``, the tile's first row and column, the
    ``accumulate`` flag and, for narrow tiles, the width."""

    def __init__(self, context, builder, signature, args):
        self.builder = builder
        self.vec = _Vectors(builder, signature.args[0].dtype)
        self.C, self.A, self.B = (
            _matrix(context, builder, ty, value)
            for ty, value in zip(signature.args[:3], args[:3], strict=True)
        )
        self.i0, self.j0 = _i64(builder, args[3]), _i64(builder, args[4])
        self.accumulate = args[5]
        self.width = _i64(builder, args[6]) if len(args) > 6 else None

    def rows_of(self, matrix, first, count):
        """Pointers to rows ``first .. first + count - 1`` of ``matrix``."""
        data, _, _, stride = matrix
        b = self.builder
        return [b.gep(data, [b.mul(b.add(first, _I64(r)), stride)]) for r in range(count)]

    def store(self, target, total, align=None):
        """``*target = *target + total`` when accumulating, else ``total``."""
        b = self.builder
        summed = b.fadd(b.load(target, align=align), total)
        b.store(b.select(self.accumulate, summed, total), target, align=align)


def _make_tile(body, narrow: bool = False):
    """An intrinsic ``tile(C, A, B, i0, j0, accumulate)`` (with a trailing ``width`` when
    ``narrow``) whose IR is written by ``body(tile: _Tile)``."""

    def codegen(context, builder, signature, args):
        body(_Tile(context, builder, signature, args))
        return context.get_dummy_value()

    if narrow:

        @intrinsic
        def tile(typingctx, C, A, B, i0, j0, accumulate, width):
            if _same_matrices(C, A, B):
                return types.void(C, A, B, i0, j0, accumulate, width), codegen
            return None

    else:

        @intrinsic
        def tile(typingctx, C, A, B, i0, j0, accumulate):
            if _same_matrices(C, A, B):
                return types.void(C, A, B, i0, j0, accumulate), codegen
            return None

    return tile


def _nn_tile(rows: int, vectors: int):
    """``C[i0:i0+rows, j0:j0+w] (+)= A[i0:i0+rows] @ B[:, j0:j0+w]``, ``w`` being
    ``vectors * lanes``."""

    def body(t: _Tile):
        b, vec = t.builder, t.vec
        b_data, depth, _, ldb = t.B
        a_rows = t.rows_of(t.A, t.i0, rows)
        acc = _slots(b, vec.vector, rows * vectors)
        with cgutils.for_range(b, depth) as loop:
            k = loop.index
            b_row = b.gep(b_data, [b.add(b.mul(k, ldb), t.j0)])
            b_k = [vec.load(b, b_row, _I64(v * vec.lanes)) for v in range(vectors)]
            for r in range(rows):
                a_k = vec.splat(b, b.load(b.gep(a_rows[r], [k])))
                for v in range(vectors):
                    _accumulate(b, acc[r * vectors + v], vec.fmuladd_vector, a_k, b_k[v])
        for r, c_row in enumerate(t.rows_of(t.C, t.i0, rows)):
            for v in range(vectors):
                address = b.bitcast(b.gep(c_row, [b.add(t.j0, _I64(v * vec.lanes))]), vec.pointer)
                t.store(address, b.load(acc[r * vectors + v]), align=vec.align)

    return _make_tile(body)


def _nt_tile(rows: int, columns: int):
    """``C[i0:i0+rows, j0:j0+columns] (+)= A[i0:i0+rows] @ B[j0:j0+columns].T``; the shared
    axis is ``A``'s columns."""

    def body(t: _Tile):
        b, vec = t.builder, t.vec
        depth = t.A[2]
        a_rows = t.rows_of(t.A, t.i0, rows)
        b_rows = t.rows_of(t.B, t.j0, columns)
        acc = _slots(b, vec.vector, rows * columns)
        lanes = _I64(vec.lanes)
        chunks = b.udiv(depth, lanes)
        with cgutils.for_range(b, chunks) as loop:
            k = b.mul(loop.index, lanes)
            a_k = [vec.load(b, row, k) for row in a_rows]
            for q in range(columns):
                b_k = vec.load(b, b_rows[q], k)
                for r in range(rows):
                    _accumulate(b, acc[r * columns + q], vec.fmuladd_vector, a_k[r], b_k)
        sums = _slots(b, vec.scalar, rows * columns)
        for slot, total in zip(sums, acc, strict=True):
            b.store(vec.lane_sum(b, b.load(total)), slot)
        # the last depth % lanes terms, one by one
        with cgutils.for_range_slice(b, b.mul(chunks, lanes), depth, _I64(1)) as (k, _):
            a_k = [b.load(b.gep(row, [k])) for row in a_rows]
            for q in range(columns):
                b_k = b.load(b.gep(b_rows[q], [k]))
                for r in range(rows):
                    _accumulate(b, sums[r * columns + q], vec.fmuladd_scalar, a_k[r], b_k)
        for r, c_row in enumerate(t.rows_of(t.C, t.i0, rows)):
            for q in range(columns):
                t.store(b.gep(c_row, [b.add(t.j0, _I64(q))]), b.load(sums[r * columns + q]))

    return _make_tile(body)


def _nn_narrow_tile(rows: int):
    """The last columns: ``C[i0:i0+rows, j0:j0+width] (+)= A[i0:i0+rows] @ B[:, j0:j0+width]``
    with ``width < lanes``, one vector wide; only the ``width`` columns are read and
    written."""

    def body(t: _Tile):
        b, vec = t.builder, t.vec
        b_data, depth, _, ldb = t.B
        a_rows = t.rows_of(t.A, t.i0, rows)
        acc = _slots(b, vec.vector, rows)
        b_slot = cgutils.alloca_once(b, vec.vector)
        zero = ir.Constant(vec.vector, [0.0] * vec.lanes)
        with cgutils.for_range(b, depth) as loop:
            k = loop.index
            b_row = b.gep(b_data, [b.add(b.mul(k, ldb), t.j0)])
            b.store(zero, b_slot)
            for lane in range(vec.lanes - 1):  # width < lanes
                with b.if_then(b.icmp_signed("<", _I64(lane), t.width)):
                    value = b.load(b.gep(b_row, [_I64(lane)]))
                    b.store(b.insert_element(b.load(b_slot), value, _I32(lane)), b_slot)
            b_k = b.load(b_slot)
            for r in range(rows):
                a_k = vec.splat(b, b.load(b.gep(a_rows[r], [k])))
                _accumulate(b, acc[r], vec.fmuladd_vector, a_k, b_k)
        for r, c_row in enumerate(t.rows_of(t.C, t.i0, rows)):
            total = b.load(acc[r])
            for lane in range(vec.lanes - 1):
                with b.if_then(b.icmp_signed("<", _I64(lane), t.width)):
                    target = b.gep(c_row, [b.add(t.j0, _I64(lane))])
                    t.store(target, b.extract_element(total, _I32(lane)))

    return _make_tile(body, narrow=True)


# Numba code calls intrinsics by global name: one per tile shape.
# Numba code calls intrinsics by global name only, so each tile shape gets a global, and
# the drivers that pick one by the number of rows left are generated from one template.
_TILES = {}
for _rows in range(1, 6):
    _TILES[f"_nn_{_rows}x2"] = _nn_tile(_rows, 2)
    _TILES[f"_nn_{_rows}x1"] = _nn_tile(_rows, 1)
    _TILES[f"_nn_{_rows}xw"] = _nn_narrow_tile(_rows)
    _TILES[f"_nt_{_rows}x2"] = _nt_tile(_rows, 2)
    _TILES[f"_nt_{_rows}x1"] = _nt_tile(_rows, 1)
globals().update(_TILES)


def _nn_column_driver(kind: str, extra: str = ""):
    """A helper ``(C, A, B, j, accumulate{extra})`` running the ``_nn_{rows}x{kind}`` tiles
    down every row of ``C``'s columns from ``j``: blocks of 5 rows, then the rest."""
    call = f"(C, A, B, i, j, accumulate{extra})"
    rest = "".join(
        f"    {'if' if r == 4 else 'elif'} rest == {r}:\n        _nn_{r}x{kind}{call}\n"
        for r in range(4, 0, -1)
    )
    source = (
        f"def driver(C, A, B, j, accumulate{extra}):\n"
        "    M = C.shape[0]\n"
        "    i = 0\n"
        "    while i + 5 <= M:\n"
        f"        _nn_5x{kind}{call}\n"
        "        i += 5\n"
        "    rest = M - i\n" + rest
    )
    namespace = dict(_TILES)
    exec(source, namespace)  # source generated above from constants
    return helper(namespace["driver"])


def _nt_row_driver(rows: int):
    """A helper ``(C, A, B, i, accumulate)``: ``C[i:i+rows] (+)= A[i:i+rows] @ B.T``, the
    rows of ``A`` kept in the L1 cache while the rows of ``B`` pass by two at a time."""
    source = (
        "def driver(C, A, B, i, accumulate):\n"
        "    N = C.shape[1]\n"
        "    last_pair = N - N % 2\n"
        "    for j in range(0, last_pair, 2):\n"
        f"        _nt_{rows}x2(C, A, B, i, j, accumulate)\n"
        "    if last_pair < N:\n"
        f"        _nt_{rows}x1(C, A, B, i, last_pair, accumulate)\n"
    )
    namespace = dict(_TILES)
    exec(source, namespace)  # source generated above from constants
    return helper(namespace["driver"])


_nn_two_vector_columns = _nn_column_driver("2")
_nn_one_vector_columns = _nn_column_driver("1")
_nn_narrow_columns = _nn_column_driver("w", ", width")
_nt_rows_1, _nt_rows_2, _nt_rows_3, _nt_rows_4, _nt_rows_5 = (
    _nt_row_driver(rows) for rows in range(1, 6)
)


# --------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------


@helper
def tiled_gemm_nn(C, A, B, accumulate):
    """``C = A @ B``, or ``C += A @ B`` when ``accumulate``.

    Parameters
    ----------
    C : (M, N) array
        Out.
    A : (M, K) array
    B : (K, N) array
        Of one float dtype, each with contiguous rows (C-contiguous, or a block of columns
        of a C-contiguous array).
    accumulate : bool
    """
    N = C.shape[1]
    lanes = 32 // C.itemsize
    j = 0
    while j + 2 * lanes <= N:
        _nn_two_vector_columns(C, A, B, j, accumulate)
        j += 2 * lanes
    if j + lanes <= N:
        _nn_one_vector_columns(C, A, B, j, accumulate)
        j += lanes
    if j < N:
        _nn_narrow_columns(C, A, B, j, accumulate, N - j)


@helper
def tiled_gemm_nt(C, A, B, accumulate):
    """``C = A @ B.T``, or ``C += A @ B.T`` when ``accumulate``: as :func:`tiled_gemm_nn`,
    with ``B`` of shape (N, K)."""
    M = C.shape[0]
    i = 0
    while i + 5 <= M:
        _nt_rows_5(C, A, B, i, accumulate)
        i += 5
    rest = M - i
    if rest == 4:
        _nt_rows_4(C, A, B, i, accumulate)
    elif rest == 3:
        _nt_rows_3(C, A, B, i, accumulate)
    elif rest == 2:
        _nt_rows_2(C, A, B, i, accumulate)
    elif rest == 1:
        _nt_rows_1(C, A, B, i, accumulate)


# --------------------------------------------------------------------------------------
# Check and timing
# --------------------------------------------------------------------------------------


@kernel
def _repeat_tiled(reps, C, A, B, transposed):
    for _ in range(reps):
        if transposed:
            tiled_gemm_nt(C, A, B, False)
        else:
            tiled_gemm_nn(C, A, B, True)


@kernel
def _repeat_blas(reps, C, A, B, transposed):
    for _ in range(reps):
        gemm(C, A, B, False, transposed, not transposed)


def _seconds_per_call(run, rounds: int = 7) -> float:
    run(1)
    start = time.perf_counter()
    run(1)
    reps = max(1, int(0.02 / max(time.perf_counter() - start, 1e-7)))
    best = []
    for _ in range(rounds):
        start = time.perf_counter()
        run(reps)
        best.append((time.perf_counter() - start) / reps)
    return float(np.median(best))


def check(rng) -> None:
    """Both products against NumPy over every tile edge, float32 and float64."""
    for dtype in (np.float32, np.float64):
        for M in (1, 2, 3, 4, 5, 6, 11, 20):
            for N in (1, 3, 7, 8, 9, 16, 17, 33):
                for K in (0, 1, 8, 13, 100):
                    A = rng.standard_normal((M, K)).astype(dtype)
                    B = rng.standard_normal((K, N)).astype(dtype)
                    C = rng.standard_normal((M, N)).astype(dtype)
                    expected = C + A @ B
                    tiled_gemm_nn(C, A, B, True)
                    np.testing.assert_allclose(C, expected, rtol=1e-4, atol=1e-4)
                    tiled_gemm_nt(C, A, np.ascontiguousarray(B.T), False)
                    np.testing.assert_allclose(C, A @ B, rtol=1e-4, atol=1e-4)


def main() -> None:
    rng = np.random.default_rng(0)
    check(rng)
    print("both products match NumPy")
    print(f"{'product':34s} {'tiles':>8s} {'BLAS 1t':>8s} {'BLAS all':>8s}  GFLOP/s")
    for N, H, gates in [(10, 100, 4), (20, 100, 4), (20, 128, 4), (128, 128, 4), (20, 650, 4)]:
        G = gates * H
        W = (rng.standard_normal((H, G)) / np.sqrt(H)).astype(np.float32)
        h = rng.standard_normal((N, H)).astype(np.float32)
        A = np.zeros((N, G), np.float32)
        dA = rng.standard_normal((N, G)).astype(np.float32)
        dh = np.zeros((N, H), np.float32)
        flop = 2 * N * H * G
        for label, args, transposed in [
            (f"h @ Wh      ({N}x{H} @ {H}x{G})", (A, h, W), False),
            (f"dA @ Wh.T   ({N}x{G} @ {G}x{H})", (dh, dA, W), True),
        ]:

            def tiled(reps, args=args, transposed=transposed):
                _repeat_tiled(reps, *args, transposed)

            def blas(reps, args=args, transposed=transposed):
                _repeat_blas(reps, *args, transposed)

            tiles = _seconds_per_call(tiled)
            with threadpool_limits(1, user_api="blas"):
                blas_one = _seconds_per_call(blas)
            blas_all = _seconds_per_call(blas)
            rates = [flop / t / 1e9 for t in (tiles, blas_one, blas_all)]
            print(f"{label:34s} " + " ".join(f"{rate:8.1f}" for rate in rates))


if __name__ == "__main__":
    main()
