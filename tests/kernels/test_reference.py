"""The reference ops against float64 token-by-token recurrences written straight from the equations."""
import pytest
import torch
import torch.nn.functional as F

from vim.kernels import reference


def naive_scan(x, dt, A, B, C, D, z, dt_bias, reverse):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t ; y_t = C_t . h_t + D x_t ; out = y silu(z), float64."""
    x, dt, A, B, C, D, z, dt_bias = (t.double() for t in (x, dt, A, B, C, D, z, dt_bias))
    delta = F.softplus(dt + dt_bias)
    batch, length, width = x.shape
    h = torch.zeros(batch, width, A.shape[1], dtype=torch.float64)
    out = [None] * length
    for t in (reversed(range(length)) if reverse else range(length)):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        out[t] = ((h * C[:, t, None, :]).sum(-1) + D * x[:, t]) * F.silu(z[:, t])
    return torch.stack(out, dim=1)


def scan_inputs(batch, length, width, d_state, dtype=torch.float32, requires_grad=False):
    tensors = dict(
        x=torch.randn(batch, length, width), dt=torch.randn(batch, length, width) - 1.0,
        A=-torch.exp(torch.randn(width, d_state)), B=torch.randn(batch, length, d_state),
        C=torch.randn(batch, length, d_state), D=torch.randn(width), z=torch.randn(batch, length, width),
        dt_bias=torch.randn(width) * 0.5)
    return {k: v.to(dtype).requires_grad_(requires_grad) for k, v in tensors.items()}


@pytest.mark.parametrize('length', [1, 7, 16, 37])
@pytest.mark.parametrize('reverse', [False, True])
def test_selective_scan_matches_recurrence_float64(length, reverse):
    inp = scan_inputs(2, length, 5, 3, torch.float64, requires_grad=True)
    out = reference.selective_scan(**inp, reverse=reverse)
    expected = naive_scan(**inp, reverse=reverse)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, list(inp.values()), grad)
    want = torch.autograd.grad(expected, list(inp.values()), grad)
    for name, g, w in zip(inp, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=f'gradient of {name}')


@pytest.mark.parametrize('chunk', [1, 4, 64])
def test_chunk_size_does_not_change_the_result(chunk):
    inp = scan_inputs(2, 23, 6, 4, torch.float64)
    torch.testing.assert_close(
        reference.selective_scan(**inp, reverse=True, chunk=chunk),
        reference.selective_scan(**inp, reverse=True, chunk=5), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_selective_scan_low_precision_inputs(dtype, tol):
    inp = scan_inputs(3, 21, 8, 4, dtype)
    out = reference.selective_scan(**inp)
    assert out.dtype == dtype
    expected = naive_scan(**inp, reverse=False)
    rel = (out.double() - expected).norm() / expected.norm()
    assert rel < tol, f'relative error {rel:.2e} over {tol:.0e} for {dtype}'


def test_selective_scan_optional_terms():
    inp = scan_inputs(2, 9, 4, 3, torch.float64)
    no_gate = reference.selective_scan(inp['x'], inp['dt'], inp['A'], inp['B'], inp['C'], inp['D'],
                                       dt_bias=inp['dt_bias'])
    gated = reference.selective_scan(**inp)
    torch.testing.assert_close(gated, no_gate * F.silu(inp['z']))
    raw = reference.selective_scan(inp['x'], F.softplus(inp['dt'] + inp['dt_bias']), inp['A'], inp['B'], inp['C'],
                                   inp['D'], dt_softplus=False)
    torch.testing.assert_close(raw, no_gate)


def test_bidirectional_scan_is_the_gated_mean_of_both_directions():
    fwd, bwd = scan_inputs(2, 11, 6, 4, torch.float64), scan_inputs(2, 11, 6, 4, torch.float64)
    z = fwd['z']
    stacked = {k: torch.stack([fwd[k], bwd[k]]) for k in ('x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias')}
    out = reference.bidirectional_scan(**stacked, z=z)
    expected = (naive_scan(**fwd, reverse=False) + naive_scan(**dict(bwd, z=z), reverse=True)) / 2
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('reverse', [False, True])
def test_causal_conv1d_matches_its_definition(reverse):
    x, w, b = torch.randn(2, 9, 5, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    out = reference.causal_conv1d(x, w, b, silu=True, reverse=reverse)
    expected = torch.empty_like(x)
    for t in range(x.shape[1]):
        acc = b.clone()
        for k in range(4):
            s = t + (3 - k) if reverse else t - 3 + k   # the taps: past for causal, future for reverse
            if 0 <= s < x.shape[1]:
                acc = acc + w[:, k] * x[:, s]
        expected[:, t] = F.silu(acc)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_bidirectional_conv1d_stacks_causal_and_anticausal():
    x, w, b = torch.randn(2, 8, 5), torch.randn(2, 5, 4), torch.randn(2, 5)
    out = reference.bidirectional_conv1d(x, w, b)
    assert out.shape == (2, 2, 8, 5)
    torch.testing.assert_close(out[0], reference.causal_conv1d(x, w[0], b[0], silu=True))
    torch.testing.assert_close(out[1], reference.causal_conv1d(x, w[1], b[1], silu=True, reverse=True))


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_add_rms_norm(dtype):
    x, res, w = torch.randn(2, 5, 8).to(dtype), torch.randn(2, 5, 8), torch.randn(8)
    out, new_res = reference.add_rms_norm(x, res, w, eps=1e-5)
    summed = x.double() + res.double()
    expected = summed / torch.sqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    assert out.dtype == dtype and new_res.dtype == torch.float32
    torch.testing.assert_close(new_res.double(), summed, rtol=1e-6, atol=1e-6)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    first, first_res = reference.add_rms_norm(x, None, w)
    torch.testing.assert_close(first_res, x.float())
