"""Element-wise math for the kernels: ``fast_tanh``, ``fast_sigmoid``, ``fast_exp``.

Each is a Python name that only Numba-compiled code can call (an ``@overload``): in float32
a vectorisable approximation within a few ulp of the exact value; in float64 ``fast_exp``
is a vectorisable range reduction and polynomial within 1 ulp, ``fast_tanh`` and
``fast_sigmoid`` the C library's ``tanh``. NaN and inf propagate as in NumPy: the
approximations test with comparisons, which a NaN fails, and never use min/max.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from ._jit import SAFE_FASTMATH

_JIT_OPTIONS = dict(fastmath=set(SAFE_FASTMATH), error_model="numpy")


def fast_tanh(x):
    """tanh for kernels: a vectorisable rational approximation in float32, libm in float64.

    Callable from Numba-compiled code only.
    """
    raise NotImplementedError("fast_tanh is only available inside Numba kernels")


_TANH_CLAMP_F32 = np.float32(7.90531110763549805)
_ONE_F32 = np.float32(1.0)
# Odd numerator and even denominator of Eigen's float32 tanh approximation: at most a few
# float32 ulp from the true value, and 1 ns or less per element instead of ~20 ns for libm.
_TANH_P = tuple(
    np.float32(v)
    for v in (
        4.89352455891786e-03,
        6.37261928875436e-04,
        1.48572235717979e-05,
        5.12229709037114e-08,
        -8.60467152213735e-11,
        2.00018790482477e-13,
        -2.76076847742355e-16,
    )
)
_TANH_Q = tuple(
    np.float32(v)
    for v in (
        4.89352518554385e-03,
        2.26843463243900e-03,
        1.18534705686654e-04,
        1.19825839466702e-06,
    )
)


def _tanh_float32(x):
    # Comparisons, not min/max: a NaN fails every test below and flows through unchanged.
    x_in = x
    if x > _TANH_CLAMP_F32:
        x = _TANH_CLAMP_F32
    if x < -_TANH_CLAMP_F32:
        x = -_TANH_CLAMP_F32
    x2 = x * x
    p = x2 * _TANH_P[6] + _TANH_P[5]
    p = x2 * p + _TANH_P[4]
    p = x2 * p + _TANH_P[3]
    p = x2 * p + _TANH_P[2]
    p = x2 * p + _TANH_P[1]
    p = x2 * p + _TANH_P[0]
    q = x2 * _TANH_Q[3] + _TANH_Q[2]
    q = x2 * q + _TANH_Q[1]
    q = x2 * q + _TANH_Q[0]
    y = x * p / q
    # Saturate exactly, as np.tanh does in float32, so that 1 - tanh(x)**2 is 0 there too.
    if x_in > _TANH_CLAMP_F32:
        y = _ONE_F32
    if x_in < -_TANH_CLAMP_F32:
        y = -_ONE_F32
    return y


def _tanh_libm(x):
    return math.tanh(x)


@overload(fast_tanh, jit_options=_JIT_OPTIONS)
def _fast_tanh_overload(x):
    if x == types.float32:
        return _tanh_float32
    return _tanh_libm


def fast_sigmoid(x):
    """The logistic function for kernels, as ``0.5 + 0.5 * tanh(0.5 * x)``: no overflow for
    large ``|x|`` and the same vectorisable path as :func:`fast_tanh`.

    Callable from Numba-compiled code only.
    """
    raise NotImplementedError("fast_sigmoid is only available inside Numba kernels")


@overload(fast_sigmoid, jit_options=_JIT_OPTIONS)
def _fast_sigmoid_overload(x):
    half = np.float32(0.5) if x == types.float32 else np.float64(0.5)

    def sigmoid(x):
        return half + half * fast_tanh(half * x)

    return sigmoid


def fast_exp(x):
    """``exp`` for kernels: a vectorisable range reduction and polynomial in float32 (at
    most 5 ulp from the exact value, 1.5 on average; 0 below -87.33, about where only
    subnormals are left), and in float64 (within 1 ulp; 0 below -708, under 3.3e-308).

    Callable from Numba-compiled code only.
    """
    raise NotImplementedError("fast_exp is only available inside Numba kernels")


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits`` (a bitcast,
    which vectorises)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0]
        if bits.bitwidth > 32:
            low = builder.trunc(low, ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_from_float32(typingctx, value):
    """The bit pattern of the float32 ``value`` as an int32 (a bitcast, which vectorises)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


_EXP_HIGH_F32 = np.float32(88.7228391116729996)  # exp overflows float32 above this
_EXP_LOW_F32 = np.float32(-87.33)  # about where only subnormals are left
_LOG2E_F32 = np.float32(1.44269504088896341)
_HALF_F32 = np.float32(0.5)
_ZERO_F32 = np.float32(0.0)
# ln 2 in two parts, so that x - k ln 2 is exact for the k that occur (Cody and Waite).
_LN2_HIGH_F32 = np.float32(0.693359375)
_LN2_LOW_F32 = np.float32(-2.12194440e-4)
# Cephes' minimax polynomial for exp on [-ln2/2, ln2/2], from the cubic term up.
_EXP_P = tuple(
    np.float32(v)
    for v in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)


def _exp_float32(x):
    x_in = x
    if x > _EXP_HIGH_F32:
        x = _EXP_HIGH_F32
    if x < _EXP_LOW_F32:
        x = _EXP_LOW_F32
    if x != x:  # NaN: any finite value here keeps the integer conversion below defined
        x = _ZERO_F32
    k = np.floor(x * _LOG2E_F32 + _HALF_F32)
    r = x - k * _LN2_HIGH_F32 - k * _LN2_LOW_F32
    p = r * _EXP_P[0] + _EXP_P[1]
    p = r * p + _EXP_P[2]
    p = r * p + _EXP_P[3]
    p = r * p + _EXP_P[4]
    p = r * p + _EXP_P[5]
    y = p * (r * r) + r + _ONE_F32
    # y * 2**k by adding k to y's exponent bits: y is in [0.7, 1.42], so the sum stays a
    # normal float32 exponent over the whole clamped range (a product with a separate
    # 2**k would overflow at k = 128 and is not safe from reassociation).
    y = _float32_from_bits(_bits_from_float32(y) + (np.int32(k) << 23))
    if x_in > _EXP_HIGH_F32:
        y = np.float32(np.inf)
    if x_in < _EXP_LOW_F32:
        y = _ZERO_F32
    if x_in != x_in:
        y = x_in
    return y


@intrinsic
def _float64_from_bits(typingctx, bits):
    """The float64 whose bit pattern is the int64 ``bits`` (a bitcast, which vectorises)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def _bits_from_float64(typingctx, value):
    """The bit pattern of the float64 ``value`` as an int64 (a bitcast, which vectorises)."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


_EXP_HIGH_F64 = 709.782712893383973  # log(largest float64): exp overflows above this
# Below this exp is under 3.3e-308, about where only subnormals are left; 0 is returned.
# At the bound itself the reduced argument makes the exponent sum below a normal one.
_EXP_LOW_F64 = -708.0
_LOG2E_F64 = 1.44269504088896341
# ln 2 in two parts (Cephes): k * _LN2_HIGH_F64 is exact for every k that occurs.
_LN2_HIGH_F64 = 6.93145751953125e-1
_LN2_LOW_F64 = 1.42860682030941723212e-6
# 1.5 * 2**52: adding it to an integer-valued float64 k puts k in the low mantissa bits.
_SHIFTER_F64 = 6755399441055744.0
# Taylor coefficients 1/n! for n = 13 down to 2: on |r| <= ln2/2 the truncation error is
# below 5e-18, under half an ulp of the result.
_EXP_TAYLOR_F64 = tuple(1.0 / math.factorial(n) for n in range(13, 1, -1))


def _exp_float64(x):
    x_in = x
    if x > _EXP_HIGH_F64:
        x = _EXP_HIGH_F64
    if x < _EXP_LOW_F64:
        x = _EXP_LOW_F64
    if x != x:  # NaN: any finite value here keeps the integer arithmetic below defined
        x = 0.0
    k = np.floor(x * _LOG2E_F64 + 0.5)
    r = x - k * _LN2_HIGH_F64 - k * _LN2_LOW_F64
    c13, c12, c11, c10, c9, c8, c7, c6, c5, c4, c3, c2 = _EXP_TAYLOR_F64
    p = r * c13 + c12
    p = r * p + c11
    p = r * p + c10
    p = r * p + c9
    p = r * p + c8
    p = r * p + c7
    p = r * p + c6
    p = r * p + c5
    p = r * p + c4
    p = r * p + c3
    p = r * p + c2
    y = p * (r * r) + r + 1.0
    # y * 2**k by adding k to y's exponent bits, as in float32. AVX2 has no packed
    # float64 -> int64 conversion, so k's bits come from adding the shifter instead.
    k_bits = _bits_from_float64(k + _SHIFTER_F64) << 52
    y = _float64_from_bits(_bits_from_float64(y) + k_bits)
    if x_in > _EXP_HIGH_F64:
        y = np.inf
    if x_in < _EXP_LOW_F64:
        y = 0.0
    if x_in != x_in:
        y = x_in
    return y


@overload(fast_exp, jit_options=_JIT_OPTIONS)
def _fast_exp_overload(x):
    if x == types.float32:
        return _exp_float32
    return None


# Without ``reassoc``: it lets LLVM fold the two parts of ln 2 back into one constant
# (measured: errors of up to 100 ulp instead of 1); the flags are per instruction, so they
# survive inlining into kernels compiled with ``reassoc``.
@overload(fast_exp, jit_options=dict(_JIT_OPTIONS, fastmath=set(SAFE_FASTMATH) - {"reassoc"}))
def _fast_exp_float64_overload(x):
    if x == types.float64:
        return _exp_float64
    return None
