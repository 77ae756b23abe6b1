"""The host-side integer helpers of the Triton wrappers (plain Python, so that a launch does not pay for
triton's constexpr functions): they must agree with the definitions they replace."""
import math

import pytest

from vim.kernels.triton_common import cdiv, next_power_of_2


@pytest.mark.parametrize('b', [1, 3, 4, 16, 64])
def test_cdiv_is_the_ceiling_of_the_quotient(b):
    for a in range(0, 300):
        assert cdiv(a, b) == math.ceil(a / b)


def test_next_power_of_2():
    for n in range(1, 5000):
        p = next_power_of_2(n)
        assert p >= n and p & (p - 1) == 0 and (p == 1 or p // 2 < n)
