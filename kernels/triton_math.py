"""Elementwise functions for the kernels, cheaper than Triton's built-ins and at least as exact.

Per call, on sm_90 (bench/sass_count.py): ``tl.log`` compiles to a ~30-instruction software logarithm and
``tl.sigmoid`` to an exponential with a denormal range check plus an IEEE division (~29 instructions). These run
once per (step, channel) in every scan pass, beside ~16 state updates of ~5 instructions each; the forms below
shorten the forward's loop by a tenth. They use only ``tl`` arithmetic, so they
run unchanged under Triton's interpreter.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def sigmoid(x):
    """1 / (1 + e^-x): one exponential, one approximate reciprocal (2 ulp, no IEEE fix-up)."""
    return tl.fdiv(1., 1. + tl.exp2(-x * LOG2E), ieee_rounding=False)


@triton.jit
def softplus(u):
    """(softplus(u), its derivative sigmoid(u)) = (max(u, 0) + log1p(e), 1 / (1 + e) or e / (1 + e)) with
    e = exp(-|u|) in (0, 1]. log1p on [0, 1] is y p(y), p the degree-8 least-squares polynomial of
    bench/fit_log1p.py: relative error 1.9e-7 in float32, where log(1 + e) loses all of e below 6e-8. Past
    u = 20 the result rounds to u, torch's threshold. Callers that need only the value drop the derivative
    and the compiler drops its division."""
    e = tl.exp2(-tl.abs(u) * LOG2E)
    p = 0.005253457797 * e - 0.02958850739
    p = p * e + 0.07836166802
    p = p * e - 0.1367476971
    p = p * e + 0.1911143108
    p = p * e - 0.2484436989
    p = p * e + 0.3331927134
    p = p * e - 0.4999950152
    p = p * e + 0.9999999705
    return tl.maximum(u, 0.) + e * p, tl.where(u >= 0., 1., e) / (1. + e)


@triton.jit
def to_f32(v):
    """v as float32. bf16 widens by a shift of its bits: Triton's own conversion compiles to two instructions
    (PRMT + SHF) for every odd element of a packed pair, this to one. In the scan it also moved where Triton
    widens B and C: on the loaded tile, before their rows are broadcast to every lane."""
    if v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return v.to(tl.float32)
