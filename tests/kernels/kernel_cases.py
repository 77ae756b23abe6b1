"""Triton kernels against the float64 reference: values and gradients of every input.

Not collected on its own (no ``test_`` prefix): ``test_triton_interpreter.py`` runs it on the CPU under
``TRITON_INTERPRET=1`` with tiny shapes, ``test_triton_gpu.py`` on a CUDA GPU with larger ones
(``python -m pytest -m gpu tests/kernels``).

Error measure: ||out - ref|| / ||ref|| per tensor, the reference computed in float64 from the same inputs.
Tolerances (the kernels compute in fp32 and round their outputs to the input dtype): float32 1e-5,
float16 3e-3, bfloat16 2e-2.
"""
import os

import pytest
import torch
import triton
import triton.language as tl

from vim.kernels import ops, reference, triton_conv1d, triton_math, triton_ops, triton_scan, triton_weight_grad

INTERPRET = os.environ.get('TRITON_INTERPRET', '0') == '1'
DEVICE = 'cpu' if INTERPRET else 'cuda'
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = list(TOL)


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    torch.manual_seed(0)
    if INTERPRET:   # small blocks: several channel blocks, tiles and checkpoint chunks at tiny shapes; the
        # backward's channel block differs from the forward's
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, 'BLOCK_E_FWD', 8)
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, 'BLOCK_E_BWD', 16)
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, 'CKPT_TILES', 2)
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, 'SEG_MIN_PROGRAMS', 1)   # unsegmented unless a test asks
        monkeypatch.setitem(triton_conv1d.CONV_CONFIG, 'BLOCK_T', 8)
        monkeypatch.setitem(triton_conv1d.CONV_CONFIG, 'BLOCK_E', 8)
        monkeypatch.setitem(triton_weight_grad.WEIGHT_GRAD_CONFIG, 'BLOCK_M', 16)   # several row splits
    else:           # poison the allocator's cache so an unwritten output element shows as NaN
        torch.empty(1 << 26, device=DEVICE).fill_(float('nan'))
        torch.cuda.synchronize()


def assert_close(out, ref, tol, name):
    assert out.shape == ref.shape, f'{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}'
    out = out.double()
    assert torch.isfinite(out).all(), f'{name}: non-finite values'
    # relative to ||ref||, or to an rms of 1e-3 where the reference is near zero (dA is exactly 0 at L = 1 and
    # the kernel's is fp32 rounding of h_s - b_s): an absolute rms error of tol * 1e-3 there
    err = ((out - ref).norm() / ref.norm().clamp_min(1e-3 * ref.numel() ** 0.5)).item()
    assert err < tol, f'{name}: relative error {err:.2e} > {tol:.0e}'


def compare(fn, ref_fn, leaves, dtype, names):
    """Run fn on the leaves and ref_fn on float64 copies; compare outputs and the gradients of every leaf."""
    leaves = [t.to(DEVICE).requires_grad_() for t in leaves]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    outs, refs = fn(*leaves), ref_fn(*ref_leaves)
    outs, refs = (outs, refs) if isinstance(outs, tuple) else ((outs,), (refs,))
    grads_out = [torch.randn_like(o) for o in outs]
    for i, (o, r) in enumerate(zip(outs, refs)):
        assert_close(o, r, TOL[dtype], f'output {i}')
    grads = torch.autograd.grad(outs, leaves, grads_out)
    ref_grads = torch.autograd.grad(refs, ref_leaves, [g.double() for g in grads_out])
    for name, leaf, g, r in zip(names, leaves, grads, ref_grads):
        assert g.dtype == leaf.dtype, f'grad of {name}: dtype {g.dtype} != {leaf.dtype}'
        assert_close(g, r, TOL[dtype], f'grad of {name}')
    return outs


def scan_leaves(lead, batch, L, E, N, dtype, pad=0):
    """Random scan inputs: activations in ``dtype``, parameters (A, D, dt_bias) in float32. With pad > 0 the
    activations are wider than needed, and :func:`split_scan` slices them into strided views."""
    def act(*shape, scale=1., shift=0.):
        return (torch.randn(*shape) * scale + shift).to(dtype)
    x, dt = act(*lead, batch, L, E + pad), act(*lead, batch, L, E + pad, scale=0.5, shift=-1.)
    BC, z = act(*lead, batch, L, 2 * N + pad), act(batch, L, E + pad)
    A = -torch.exp(torch.randn(*lead, E, N) * 0.5)
    return [x, dt, A, BC, torch.randn(*lead, E), z, torch.randn(*lead, E) * 0.5]


def split_scan(x, dt, A, BC, D, z, bias, E, N, pad):
    """Views of the leaves with the strides the mixer produces."""
    return (x[..., pad:], dt[..., :E], A, BC[..., pad:pad + N], BC[..., pad + N:], D, z[..., pad:], bias)


@triton.jit
def _math_kernel(u_ptr, softplus_ptr, dsoftplus_ptr, sigmoid_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    u = tl.load(u_ptr + offs, mask=offs < n)
    value, derivative = triton_math.softplus(u)
    tl.store(softplus_ptr + offs, value, mask=offs < n)
    tl.store(dsoftplus_ptr + offs, derivative, mask=offs < n)
    tl.store(sigmoid_ptr + offs, triton_math.sigmoid(u), mask=offs < n)


def test_softplus_and_sigmoid_everywhere():
    """The kernels' softplus (log1p polynomial) and sigmoid against float64 torch, element by element, over
    the whole float32 range that matters: tiny and huge magnitudes, both signs, torch's threshold at 20."""
    f64 = dict(dtype=torch.float64)
    mags = torch.cat([torch.logspace(-8, 2, 2000, **f64), torch.linspace(0, 25, 2001, **f64)])
    u = torch.cat([mags, -mags, torch.tensor([19.99, 20., 20.01, 88., 100., -88., -100.], **f64)])
    outs = [torch.empty(u.numel(), device=DEVICE) for _ in range(3)]
    _math_kernel[(triton.cdiv(u.numel(), 1024),)](u.float().to(DEVICE), *outs, u.numel(), BLOCK=1024)
    u32 = u.float().double()                     # the float32 inputs the kernel saw
    # exp(-|u|) is exp2 of the float32 product -|u| log2(e), whose rounding alone is a relative error of up to
    # |u| 2^-24 in the exponential: allow twice that (the GPU's approximate exp2 adds its own ulps) beside 1e-6
    tol = 1e-6 + u32.abs() * 2 ** -23
    for name, out, ref in (('softplus', outs[0], torch.nn.functional.softplus(u32)),
                           ('softplus derivative', outs[1], torch.sigmoid(u32)),
                           ('sigmoid', outs[2], torch.sigmoid(u32))):
        rel = (out.cpu().double() - ref).abs() / ref.abs().clamp_min(1e-30)
        worst = (rel / tol).argmax()
        assert (rel < tol).all(), f'{name}: relative error {rel[worst]:.2e} at u = {u32[worst]:.6g}'


@triton.jit
def _widen_kernel(v_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, triton_math.to_f32(tl.load(v_ptr + offs, mask=offs < n)), mask=offs < n)


@pytest.mark.parametrize('dtype', DTYPES)
def test_to_f32_is_exact(dtype):
    """The kernels' widening (a bit shift for bf16) gives exactly torch's float32 of every value: every bf16 bit
    pattern (zeros, subnormals, infinities and NaNs included), random values of the other dtypes."""
    if dtype == torch.bfloat16:
        v = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    else:
        v = (torch.randn(4096) * 100).to(dtype)
    out = torch.empty(v.numel(), device=DEVICE)
    _widen_kernel[(triton.cdiv(v.numel(), 1024),)](v.to(DEVICE), out, v.numel(), BLOCK=1024)
    torch.testing.assert_close(out.cpu(), v.float(), rtol=0, atol=0, equal_nan=True)


SCAN_SHAPES = [(1, 1, 12, 4), (2, 13, 12, 4)] if INTERPRET else [
    (1, 1, 40, 16), (2, 333, 100, 16), (3, 1000, 384, 16), (2, 197, 768, 16)]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', SCAN_SHAPES)
@pytest.mark.parametrize('pad', [0, 3])
def test_bidirectional_scan(dtype, shape, pad):
    batch, L, E, N = shape
    leaves = scan_leaves((2,), batch, L, E, N, dtype, pad)

    def run(module):
        return lambda *t: module.bidirectional_scan(*split_scan(*t, E, N, pad))
    out, = compare(run(triton_ops), run(reference), leaves, dtype, ['x', 'dt', 'A', 'B/C', 'D', 'z', 'dt_bias'])
    assert out.dtype == dtype


@pytest.mark.parametrize('N', [1, 2, 5])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_scan_with_few_states(dtype, N):
    """N = 5 states in blocks of 8 (the forward builds its state tile one state at a time with tl.join, the
    backward loads it as a tile): values and gradients where three of the block's states are padding. N = 1 and
    2: fewer states than the backward's layout puts in one thread (_fold)."""
    batch, L, E = (2, 13, 12) if INTERPRET else (2, 197, 100)
    leaves = scan_leaves((2,), batch, L, E, N, dtype)

    def run(module):
        return lambda *t: module.bidirectional_scan(*split_scan(*t, E, N, 0))
    compare(run(triton_ops), run(reference), leaves, dtype, ['x', 'dt', 'A', 'B/C', 'D', 'z', 'dt_bias'])


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('options', ['all', 'bare', 'no_z'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_selective_scan(reverse, options, dtype):
    """One direction, with and without the optional D, z, dt_bias and softplus ('bare': none of them)."""
    batch, L, E, N = SCAN_SHAPES[-1]
    pool = dict(zip(['x', 'dt', 'A', 'BC', 'D', 'z', 'dt_bias'], scan_leaves((), batch, L, E, N, dtype)))
    if options == 'bare':   # without softplus, delta = dt itself: keep it positive so the state decays
        pool['dt'] = pool['dt'].float().abs().to(dtype)
    names = {'all': list(pool), 'bare': ['x', 'dt', 'A', 'BC'], 'no_z': ['x', 'dt', 'A', 'BC', 'D', 'dt_bias']}

    def run(module):
        def fn(*leaves):
            kw = dict(zip(names[options], leaves))
            return module.selective_scan(kw['x'], kw['dt'], kw['A'], kw['BC'][..., :N], kw['BC'][..., N:],
                                         kw.get('D'), kw.get('z'), kw.get('dt_bias'), options != 'bare', reverse)
        return fn
    compare(run(triton_ops), run(reference), [pool[n] for n in names[options]], dtype, names[options])


def _segment_everything(monkeypatch):
    """Force the segmented scan at any shape, one checkpoint chunk per segment."""
    for key in ('SEG_MIN_PROGRAMS', 'SEG_TARGET_FWD', 'SEG_TARGET_BWD', 'SEG_MAX'):
        monkeypatch.setitem(triton_scan.SCAN_CONFIG, key, 1 << 30)


SEG_SHAPES = [(1, 29, 12, 4)] if INTERPRET else [(1, 1000, 32, 16), (3, 700, 100, 16)]


@pytest.mark.parametrize('shape', SEG_SHAPES)
@pytest.mark.parametrize('case', ['bidir_fp32', 'bidir_bf16', 'reverse_fp32'])
def test_segmented_scan(monkeypatch, shape, case):
    """The segmented (two-pass) scan, forced at any shape: the sequence split into segments of whole checkpoint
    chunks (several segments, a partial last one), forward and backward, against the float64 reference."""
    _segment_everything(monkeypatch)
    batch, L, E, N = shape
    cfg = triton_scan.launch_config(batch, L, E, torch.device(DEVICE))
    assert cfg[1][1] > 2 and cfg[3][1] > 2, cfg
    dtype = torch.bfloat16 if case.endswith('bf16') else torch.float32
    if case.startswith('bidir'):
        def run(module):
            return lambda *t: module.bidirectional_scan(*split_scan(*t, E, N, 0))
        compare(run(triton_ops), run(reference), scan_leaves((2,), batch, L, E, N, dtype), dtype,
                ['x', 'dt', 'A', 'B/C', 'D', 'z', 'dt_bias'])
    else:
        def run(module):
            return lambda x, dt, A, BC, D, z, bias: module.selective_scan(x, dt, A, BC[..., :N], BC[..., N:], D, z,
                                                                          bias, True, True)
        compare(run(triton_ops), run(reference), scan_leaves((), batch, L, E, N, dtype), dtype,
                ['x', 'dt', 'A', 'BC', 'D', 'z', 'dt_bias'])


@pytest.mark.parametrize('direction', ['bidirectional', 'reverse'])
@pytest.mark.parametrize('segmented', [False, True])
@pytest.mark.parametrize('dtype', DTYPES)
def test_scan_forward_without_autograd(monkeypatch, dtype, segmented, direction):
    """The forward without autograd (no checkpoints and no y saved: the launches inference runs), one segment and
    segmented, against the float64 reference. The other cases all run under autograd."""
    if segmented:
        _segment_everything(monkeypatch)
    batch, L, E, N = (SEG_SHAPES if segmented else SCAN_SHAPES)[-1]
    if direction == 'bidirectional':
        def run(module, leaves):
            return module.bidirectional_scan(*split_scan(*leaves, E, N, 0))
        leaves = scan_leaves((2,), batch, L, E, N, dtype)
    else:
        def run(module, leaves):
            x, dt, A, BC, D, z, bias = leaves
            return module.selective_scan(x, dt, A, BC[..., :N], BC[..., N:], D, z, bias, True, True)
        leaves = scan_leaves((), batch, L, E, N, dtype)
    leaves = [t.to(DEVICE) for t in leaves]
    with torch.no_grad():
        out = run(triton_ops, leaves)
    assert_close(out, run(reference, [t.double() for t in leaves]), TOL[dtype], 'output')


def test_launch_config_segments_small_batches():
    """Batch x channel blocks below the threshold: segments of whole checkpoint chunks covering L."""
    cfg = dict(triton_scan.SCAN_CONFIG, CKPT_TILES=16, BLOCK_E_FWD=None, BLOCK_E_BWD=None,
               SEG_MIN_PROGRAMS=None, SEG_TARGET_FWD=1536, SEG_TARGET_BWD=3072, SEG_MAX=None)
    cpu = torch.device('cpu')
    be_f, (seg_f, n_f), be_b, (seg_b, n_b) = triton_scan.launch_config(128, 197, 384, cpu, cfg)
    assert (be_f, n_f, be_b, n_b) == (32, 1, 16, 1) and seg_f >= 197
    be_f, (seg_f, n_f), be_b, (seg_b, n_b) = triton_scan.launch_config(8, 6085, 384, cpu, cfg)
    for seg, n in ((seg_f, n_f), (seg_b, n_b)):
        assert seg % 64 == 0 and n > 1 and (n - 1) * seg < 6085 <= n * seg
    assert 8 * 12 * n_f >= 2 * 132 and 8 * 24 * n_b >= 2 * 132 and (n_f, n_b) == (16, 16)
    _, (seg_f, n_f), _, _ = triton_scan.launch_config(1, 65536, 32, cpu, cfg)   # capped at sqrt(L / BLOCK_T)
    assert n_f == 128 and seg_f == 512


def test_scan_channel_strided_input_is_copied():
    """x with a non-unit channel stride (a transposed view) is made contiguous, not misread."""
    batch, L, E, N = SCAN_SHAPES[-1]
    x, dt, A, BC, D, z, bias = scan_leaves((2,), batch, L, E, N, torch.float32)
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    args = (xt, dt, A, BC[..., :N], BC[..., N:], D, z, bias)
    out = triton_ops.bidirectional_scan(*(t.to(DEVICE) for t in args))
    ref = reference.bidirectional_scan(*(t.double() for t in args))
    assert_close(out.cpu(), ref, 1e-5, 'output')


CONV_SHAPES = [(1, 1, 12), (1, 19, 12)] if INTERPRET else [(1, 1, 40), (2, 333, 100), (8, 1000, 768)]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', CONV_SHAPES)
def test_bidirectional_conv1d(dtype, shape):
    batch, L, E = shape
    xz = torch.randn(batch, L, 2 * E, dtype=dtype)            # x is the first half of in_proj's output
    leaves = [xz, torch.randn(2, E, 4), torch.randn(2, E)]

    def run(module):
        return lambda xz, w, b: module.bidirectional_conv1d(xz[..., :E], w, b)
    compare(run(triton_ops), run(reference), leaves, dtype, ['x', 'weight', 'bias'])


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('silu', [False, True])
@pytest.mark.parametrize('bias', [False, True])
def test_causal_conv1d(reverse, silu, bias):
    batch, L, E = CONV_SHAPES[-1]
    leaves = [torch.randn(batch, L, E), torch.randn(E, 4)] + ([torch.randn(E)] if bias else [])

    def run(module):
        return lambda x, w, *b: module.causal_conv1d(x, w, b[0] if b else None, silu, reverse)
    compare(run(triton_ops), run(reference), leaves, torch.float32, ['x', 'weight', 'bias'])


NORM_SHAPES = [(1, 1, 8), (3, 5, 24)] if INTERPRET else [(1, 1, 192), (4, 197, 384), (2, 333, 768)]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', NORM_SHAPES)
@pytest.mark.parametrize('residual', ['none', 'fp32', 'same'])
@pytest.mark.parametrize('residual_in_fp32', [True, False])
def test_add_rms_norm(dtype, shape, residual, residual_in_fp32):
    x = torch.randn(*shape[:-1], shape[-1] + 2, dtype=dtype)  # x: a strided view
    leaves = [x, torch.randn(shape[-1])]
    if residual != 'none':
        leaves.append(torch.randn(shape, dtype=torch.float32 if residual == 'fp32' else dtype))

    def run(module):
        return lambda x, w, *r: module.add_rms_norm(x[..., 1:-1], r[0] if r else None, w, 1e-5, residual_in_fp32)
    out, new_residual = compare(run(triton_ops), run(reference), leaves, dtype, ['x', 'weight', 'residual'])
    assert out.dtype == dtype and new_residual.dtype == (torch.float32 if residual_in_fp32 else dtype)


# rows M, K1 (a's channels, here a strided view), K2: the mixer's x_proj and dt_proj weight gradients at
# Vim-Tiny b128 L197 on the GPU; masked channel tiles and a last split of fewer rows everywhere
WEIGHT_GRAD_SHAPES = [(37, 12, 44), (50, 20, 12)] if INTERPRET else [(25216, 384, 44), (25216, 12, 384),
                                                                      (1000, 768, 80)]


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', WEIGHT_GRAD_SHAPES)
def test_weight_grad(dtype, shape):
    """a[d]^T b[d] summed over all rows, split across programs, against the float64 product; fp32 out."""
    M, K1, K2 = shape
    a = torch.randn(2, M, K1 + 7, dtype=dtype, device=DEVICE)[..., 3:3 + K1]
    b = torch.randn(2, M, K2, dtype=dtype, device=DEVICE)
    out = triton_weight_grad.weight_grad(a, b)
    assert out.dtype == torch.float32
    assert_close(out, torch.bmm(a.double().transpose(1, 2), b.double()), TOL[dtype] / 10, 'dW')


MIXER_SHAPE = (2, 11, 12, 4, 3) if INTERPRET else (4, 197, 384, 16, 12)   # batch, L, E, N, dt_rank


def mixer_leaves(batch, L, E, N, R, dtype):
    """Random mixer-core inputs: in_proj's output xz (x and z are its strided halves) and the projections'
    weights in ``dtype``, the conv, A_log, D and dt_bias in float32 (as a model under autocast has them)."""
    return [torch.randn(batch, L, 2 * E, dtype=dtype), torch.randn(2, E, 4) * 0.5, torch.randn(2, E) * 0.1,
            (torch.randn(2, E, R + 2 * N) / E ** 0.5).to(dtype), (torch.randn(2, R, E) / R ** 0.5).to(dtype),
            torch.randn(2, E, N) * 0.5, torch.randn(2, E), torch.randn(2, E) * 0.5 - 1.]


MIXER_NAMES = ['xz', 'conv_w', 'conv_b', 'w_x', 'w_dt', 'A_log', 'D', 'dt_bias']


def run_mixer_core(module, E, recompute=False):
    return lambda xz, *weights: module.mixer_core(xz[..., :E], xz[..., E:], *weights, recompute=recompute)


@pytest.mark.parametrize('dtype, segmented, recompute',
                         [(dtype, False, recompute) for dtype in DTYPES for recompute in (False, True)] +
                         [(torch.float32, True, True), (torch.bfloat16, True, True)])
def test_mixer_core(monkeypatch, dtype, segmented, recompute):
    """The Triton mixer core, keeping the conv output and dt for the backward or recomputing them (the scan
    computing conv + SiLU and dt from the raw x and dt_low; also segmented), against the float64 reference
    composition, with x and z the strided halves of in_proj's output: values, the gradients of every input, the
    output without autograd, and what the op keeps for the backward: with recompute, nothing of the conv
    output's or dt's size (2 x batch x L x E), else both."""
    batch, L, E, N, R = MIXER_SHAPE
    if segmented:
        _segment_everything(monkeypatch)
        batch, L = SEG_SHAPES[-1][:2]
        assert triton_scan.launch_config(batch, L, E, torch.device(DEVICE))[3][1] > 2
    leaves = mixer_leaves(batch, L, E, N, R, dtype)
    triton_mixer = run_mixer_core(triton_ops, E, recompute)
    out, = compare(triton_mixer, run_mixer_core(reference, E), leaves, dtype, MIXER_NAMES)
    assert out.dtype == dtype
    leaves = [t.to(DEVICE) for t in leaves]
    out = triton_mixer(leaves[0], *(t.requires_grad_() for t in leaves[1:]))
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    full_width = [t for t in saved if t.numel() == 2 * batch * L * E]
    assert len(full_width) == (0 if recompute else 2), [tuple(t.shape) for t in saved]
    leaves = [t.detach() for t in leaves]
    with torch.no_grad():
        out = triton_mixer(*leaves)
    assert_close(out, run_mixer_core(reference, E)(*(t.double() for t in leaves)), TOL[dtype], 'no-grad output')


def test_mixer_core_input_checks():
    batch, L, E, N, R = MIXER_SHAPE
    xz, *weights = (t.to(DEVICE) for t in mixer_leaves(batch, L, E, N, R, torch.float32))
    with pytest.raises(ValueError, match=r'x_proj_weight has shape .* expected \(2, 12, 11\)' if INTERPRET
                       else 'x_proj_weight has shape'):
        triton_ops.mixer_core(xz[..., :E], xz[..., E:], weights[0], weights[1], weights[2][..., 1:], *weights[3:])
    with pytest.raises(ValueError, match='z has shape'):
        triton_ops.mixer_core(xz[..., :E], xz[:, 1:, E:], *weights)


@pytest.mark.parametrize('mixer_recompute', [False, True])
def test_model_triton_matches_reference(mixer_recompute):
    """The whole model, forward and backward, on the Triton path (its mixers composed or fused) against the
    reference path (both float32): the logits and the gradient of every parameter."""
    from vim.kernels import use_backend
    from vim.vision_mamba import VisionMamba
    model = VisionMamba(img_size=32, patch_size=16, embed_dim=16, depth=2, num_classes=5,
                        mixer_recompute=mixer_recompute).to(DEVICE)
    image = torch.randn(2, 3, 32, 32, device=DEVICE)
    grad_out = torch.randn(2, 5, device=DEVICE)
    results = {}
    for backend in ('reference', 'triton'):
        model.zero_grad()
        with use_backend(backend):
            logits = model(image)
        logits.backward(grad_out)
        results[backend] = [('logits', logits.detach())] + [
            (name, p.grad.clone()) for name, p in model.named_parameters() if p.grad is not None]
    assert len(results['triton']) == len(results['reference']) > 20
    for (name, ours), (_, ref) in zip(results['triton'], results['reference']):
        assert_close(ours, ref.double(), 1e-4, name)


def test_dispatch_uses_triton():
    batch, L, E, N = SCAN_SHAPES[-1]
    x, dt, A, BC, D, z, bias = (t.to(DEVICE) for t in scan_leaves((2,), batch, L, E, N, torch.float32))
    args = (x, dt, A, BC[..., :N], BC[..., N:], D, z, bias)
    assert torch.equal(ops.bidirectional_scan(*args, backend='triton'), triton_ops.bidirectional_scan(*args))


def test_input_checks():
    batch, L, E, N = SCAN_SHAPES[-1]
    x, dt, A, BC, D, z, bias = (t.to(DEVICE) for t in scan_leaves((2,), batch, L, E, N, torch.float32))
    B, C = BC[..., :N], BC[..., N:]
    with pytest.raises(ValueError, match='dt has shape'):
        triton_ops.bidirectional_scan(x, dt[:, :, :-1], A, B, C, D, z, bias)
    with pytest.raises(TypeError, match='float64'):
        triton_ops.bidirectional_scan(x, dt, A.double(), B, C, D, z, bias)
    with pytest.raises(ValueError, match='device'):
        triton_ops.bidirectional_scan(x, dt, A, B, C, D, z.to('meta'), bias)
    with pytest.raises(ValueError, match='weight has shape'):
        triton_ops.bidirectional_conv1d(x[0], torch.randn(2, E + 1, 4, device=DEVICE), bias)
    with pytest.raises(ValueError, match='weight has shape'):
        triton_ops.add_rms_norm(x[0], None, torch.randn(E + 1, device=DEVICE))
