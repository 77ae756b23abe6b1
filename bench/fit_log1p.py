"""Coefficients of the log1p polynomial in kernels/triton_math.py, and their error.

softplus(u) = max(u, 0) + log1p(e), e = exp(-|u|) in (0, 1]. On [0, 1], log1p(y) = y p(y) with p a polynomial
of degree 8 fitted by least squares to log1p(y) / y at Chebyshev nodes. Evaluated in float32 by Horner's rule
(one FMA per coefficient, as the kernel does), its largest relative error against float64 log1p is printed;
float32's own rounding step is 6e-8. For comparison the error of float32 log(1 + y), the textbook form,
which loses the low bits of y when it adds 1.

    python bench/fit_log1p.py
"""
import numpy as np

DEGREE = 8


def fit(degree=DEGREE, nodes=4000):
    k = np.arange(nodes)
    y = 0.5 - 0.5 * np.cos((2 * k + 1) * np.pi / (2 * nodes))
    coeffs, *_ = np.linalg.lstsq(np.vander(y, degree + 1, increasing=True), np.log1p(y) / y, rcond=None)
    return coeffs


def log1p_f32(y, coeffs):
    c = coeffs.astype(np.float32)
    p = np.full_like(y, c[-1])
    for ci in c[-2::-1]:
        p = (p * y + ci).astype(np.float32)
    return (y * p).astype(np.float32)


def main():
    coeffs = fit()
    y = np.concatenate([np.linspace(0, 1, 400001), np.logspace(-30, 0, 10001)]).astype(np.float32)
    exact = np.log1p(y.astype(np.float64))
    keep = exact > 0

    def worst(values):
        return float((np.abs(values.astype(np.float64) - exact)[keep] / exact[keep]).max())
    print('coefficients, degree 0 first:', ', '.join(f'{c:.10g}' for c in coeffs))
    print(f'max relative error on [0, 1], float32 Horner: {worst(log1p_f32(y, coeffs)):.2e}')
    print(f'max relative error of float32 log(1 + y):   {worst(np.log(np.float32(1) + y)):.2e}')


if __name__ == '__main__':
    main()
