"""An independent float64 implementation of the released Vim forward pass (hustvl/Vim models_mamba.py
with bimamba v2, middle class token, divide-out), written from the paper's equations and the released
model's semantics, straight on a released state dict. Token by token, flips and all: slow and plain, so
it can judge the package's model and checkpoint loading."""
import torch
import torch.nn.functional as F


def _rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _mamba_branch(x, z, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A_log, D):
    """One direction of the mixer on (batch, E, L) tensors, exactly as mamba_inner_fn_no_out_proj."""
    batch, width, length = x.shape
    d_state = A_log.shape[1]
    dt_rank = dt_proj_w.shape[1]
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=width)[..., :length])
    x_dbl = x.transpose(1, 2) @ x_proj_w.T                      # (batch, L, R + 2N)
    delta = F.softplus(x_dbl[..., :dt_rank] @ dt_proj_w.T + dt_proj_b)   # (batch, L, E)
    B, C = x_dbl[..., dt_rank:dt_rank + d_state], x_dbl[..., dt_rank + d_state:]
    A = -torch.exp(A_log)
    h = torch.zeros(batch, width, d_state, dtype=x.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, :, t, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, :, t])
    return torch.stack(ys, dim=-1) * F.silu(z)


def released_layout(state_dict):
    """The package's state dict under the released names and shapes: each mixer tensor that holds both directions
    split into the forward branch's and the ``_b`` backward branch's, conv weights (E, 1, W), projection weights
    (out, in) as nn.Linear keeps them."""
    out = {}
    for key, value in state_dict.items():
        prefix, _, name = key.rpartition('.')
        if '.mixer.' not in key or name == 'weight':          # not a mixer tensor, or in_proj's / out_proj's
            out[key] = value
            continue
        prefix += '.'
        for branch, suffix in ((0, ''), (1, '_b')):
            v = value[branch]
            if name == 'conv_weight':
                out[prefix + 'conv1d' + suffix + '.weight'] = v[:, None, :]
            elif name == 'conv_bias':
                out[prefix + 'conv1d' + suffix + '.bias'] = v
            elif name in ('x_proj_weight', 'dt_proj_weight'):
                out[prefix + name[:-len('_weight')] + suffix + '.weight'] = v.T
            elif name == 'dt_bias':
                out[prefix + 'dt_proj' + suffix + '.bias'] = v
            elif name == 'A_log':
                out[prefix + 'A' + suffix + '_log'] = v
            else:
                assert name == 'D', key
                out[prefix + 'D' + suffix] = v
    return out


def released_forward(state_dict, images, stride=16, pool='token'):
    """Logits of the released Vim (float64). ``state_dict`` uses the released parameter names."""
    sd = {k: v.double() for k, v in state_dict.items()}
    x = F.conv2d(images.double(), sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=stride)
    x = x.flatten(2).transpose(1, 2)                            # (batch, M, D)
    middle = x.shape[1] // 2
    x = torch.cat([x[:, :middle], sd['cls_token'].expand(x.shape[0], -1, -1), x[:, middle:]], dim=1)
    x = x + sd['pos_embed']
    depth = len({k.split('.')[1] for k in sd if k.startswith('layers.')})
    residual, hidden = None, x
    for i in range(depth):
        p = f'layers.{i}.mixer.'
        residual = hidden if residual is None else residual + hidden
        h = _rms_norm(residual, sd[f'layers.{i}.norm.weight'])
        xz = (h @ sd[p + 'in_proj.weight'].T).transpose(1, 2)  # (batch, 2E, L)
        x_in, z = xz.chunk(2, dim=1)
        y_f = _mamba_branch(x_in, z, sd[p + 'conv1d.weight'], sd[p + 'conv1d.bias'], sd[p + 'x_proj.weight'],
                            sd[p + 'dt_proj.weight'], sd[p + 'dt_proj.bias'], sd[p + 'A_log'], sd[p + 'D'])
        y_b = _mamba_branch(x_in.flip(-1), z.flip(-1), sd[p + 'conv1d_b.weight'], sd[p + 'conv1d_b.bias'],
                            sd[p + 'x_proj_b.weight'], sd[p + 'dt_proj_b.weight'], sd[p + 'dt_proj_b.bias'],
                            sd[p + 'A_b_log'], sd[p + 'D_b'])
        hidden = ((y_f + y_b.flip(-1)).transpose(1, 2) / 2) @ sd[p + 'out_proj.weight'].T
    h = _rms_norm(residual + hidden, sd['norm_f.weight'])
    feat = h[:, middle] if pool == 'token' else torch.cat([h[:, :middle], h[:, middle + 1:]], 1).mean(1)
    return feat @ sd['head.weight'].T + sd['head.bias']
