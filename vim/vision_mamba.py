"""Vision Mamba (Vim): Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model", ICML 2024 (arXiv 2401.09417).

Data path: patch embed -> + pos_embed -> class token inserted in the middle of the sequence ->
depth x Block (add -> RMSNorm -> bidirectional Mamba) -> add -> final RMSNorm -> pool (class token or
mean over patches) -> head. Parameter names follow hustvl/Vim (the mixer's two directions stacked), and released
checkpoints load unchanged.
"""
import math
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, resample_abs_pos_embed, resample_patch_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from .layers import Block, PatchEmbed, ResidualSum, RMSNorm
from .loading import pretrained_checkpoint

__all__ = ['VisionMamba', 'checkpoint_filter_fn', 'insert_middle_token', 'remove_middle_token', 'resample_pos_embed',
           'unwrap_state_dict']


def insert_middle_token(patches: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patches + (B, 1, D) token -> (B, N+1, D) with the token at index N // 2."""
    middle = patches.shape[1] // 2
    return torch.cat([patches[:, :middle], token, patches[:, middle:]], dim=1)


def remove_middle_token(tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`insert_middle_token`: (B, N+1, D) -> ((B, N, D) patches, (B, 1, D) token)."""
    middle = (tokens.shape[1] - 1) // 2
    return torch.cat([tokens[:, :middle], tokens[:, middle + 1:]], dim=1), tokens[:, middle:middle + 1]


def resample_pos_embed(
        pos_embed: torch.Tensor,
        new_size: Tuple[int, int],
        old_size: Tuple[int, int],
        num_prefix_tokens: int = 1,
        interpolation: str = 'bicubic',
        antialias: bool = True,
) -> torch.Tensor:
    """Resample a (1, [1 +] gh*gw, D) position embedding whose class entry sits in the middle.

    The class entry is split out at the old grid's middle index, the patch grid is resampled, and the
    class entry goes back in at the new grid's middle index (98 at 14x14, 128 at 16x16).
    """
    if tuple(new_size) == tuple(old_size):
        return pos_embed
    if num_prefix_tokens:
        grid, cls = remove_middle_token(pos_embed)
    else:
        grid = pos_embed
    grid = resample_abs_pos_embed(
        grid, new_size=list(new_size), old_size=list(old_size), num_prefix_tokens=0,
        interpolation=interpolation, antialias=antialias, verbose=False)
    return insert_middle_token(grid, cls) if num_prefix_tokens else grid


class VisionMamba(nn.Module):
    """Vision Mamba, a timm model: ``timm.create_model('vim_tiny_patch16_224')`` after ``import vim``."""

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: int = 2,
            dt_rank: Optional[int] = None,
            mixer_recompute: bool = False,
            class_token: bool = True,
            residual_in_fp32: bool = True,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            img_size: input size the position embedding is laid out for.
            patch_size: patch (conv kernel) size.
            stride: patch stride; defaults to ``patch_size`` (8 for the "finer granularity" models).
            global_pool: 'token' (the middle class token, as released), 'avg' (mean over patch tokens),
                or '' (no pooling: the head sees every token).
            d_state: SSM state size per channel (Mamba's N).
            d_conv: kernel width of the mixer's causal depthwise conv.
            expand: the mixer's inner width as a multiple of ``embed_dim``.
            dt_rank: rank of the dt projection; None is ``ceil(embed_dim / 16)``.
            mixer_recompute: on the Triton path, recompute each mixer's conv output and dt in its scan instead of
                keeping them for the backward: less training memory, a slower step (docs/performance.md).
            dynamic_img_size: accept any image size >= the patch, resampling the position embedding.
            dynamic_img_pad: pad images at the bottom/right to the stride grid.
        """
        super().__init__()
        if global_pool not in ('', 'avg', 'token'):
            raise ValueError(f"global_pool must be one of '', 'avg', 'token'; got {global_pool!r}.")
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True.")
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size, patch_size, stride or patch_size, in_chans, embed_dim,
            dynamic_img_size=dynamic_img_size, dynamic_img_pad=dynamic_img_pad, **dd)
        reduction = self.patch_embed.stride[0]
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(
            torch.empty(1, self.patch_embed.num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        # Vim drops each block's *input* hidden state: block i gets the rate of block i-1, block 0 none,
        # and the final add gets the full rate.
        rates = [0.0] + [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([
            Block(embed_dim, rates[i], norm_eps, residual_in_fp32, d_state=d_state, d_conv=d_conv, expand=expand,
                  dt_rank=dt_rank, mixer_recompute=mixer_recompute, **dd)
            for i in range(depth)])
        self.feature_info = [
            dict(module=f'layers.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, norm_eps, residual_in_fp32, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        for layer in self.layers:
            layer.mixer.init_weights(len(self.layers))
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    # ----- timm model API -----
    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        # Mamba decays neither the log-rates A_log nor the skip D; the mixer's biases and D hold both directions,
        # so they are 2-D and need naming (timm exempts 1-D parameters and '.bias' names by itself)
        return {'pos_embed', 'cls_token', 'layers.*.mixer.A_log', 'layers.*.mixer.D', 'layers.*.mixer.conv_bias',
                'layers.*.mixer.dt_bias'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        return dict(
            stem=r'^cls_token|^pos_embed|^patch_embed',
            blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ('', 'avg', 'token'):
                raise ValueError(f"global_pool must be one of '', 'avg', 'token'; got {global_pool!r}.")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token; this model has none.")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.pos_embed
        self.head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype) \
            if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def set_input_size(self, img_size: Optional[Tuple[int, int]] = None, patch_size=None) -> None:
        """Change the input size the position embedding is laid out for (resampling it)."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_embed.patch_size:
            raise ValueError(
                f'Changing the patch size ({self.patch_embed.patch_size} -> {to_2tuple(patch_size)}) is not '
                f'supported: it would invalidate the trained patch embedding.')
        if img_size is None:
            return
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size)
        with torch.no_grad():
            resampled = resample_pos_embed(
                self.pos_embed, self.patch_embed.grid_size, old_grid, self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(resampled, requires_grad=self.pos_embed.requires_grad)

    # ----- forward -----
    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.patch_embed(x)                                   # (B, gh, gw, D)
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        pos_embed = self.pos_embed
        if self.dynamic_img_size:
            pos_embed = resample_pos_embed(
                pos_embed, grid, self.patch_embed.grid_size, self.num_prefix_tokens)
        if self.cls_token is not None:
            x = insert_middle_token(x, self.cls_token.expand(x.shape[0], -1, -1))
        return self.pos_drop(x + pos_embed), grid

    def _run_layers(self, x: torch.Tensor, stop_after: Optional[int] = None, take: Optional[set] = None,
                    norm: bool = False):
        """Run blocks 0..stop_after; return (hidden, residual, [stream after each block in ``take``])."""
        hidden, residual, taken = x, None, []
        layers = self.layers if stop_after is None else self.layers[:stop_after + 1]
        for i, layer in enumerate(layers):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                hidden, residual = torch.utils.checkpoint.checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
            if take is not None and i in take:
                taken.append(self.norm_f(hidden, residual)[0] if norm else (residual + hidden).to(hidden.dtype))
        return hidden, residual, taken

    def _final_norm(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm_f(self.drop_path(hidden), residual)[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_prefix_tokens + gh*gw, D) normalised tokens (class token in the middle)."""
        x, _ = self._embed(x)
        hidden, residual, _ = self._run_layers(x)
        return self._final_norm(hidden, residual)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == 'token':
            return remove_middle_token(x)[1][:, 0]
        if self.global_pool == 'avg':
            return (remove_middle_token(x)[0] if self.num_prefix_tokens else x).mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Features after chosen blocks (the residual stream, or its final norm with ``norm=True``).

        Args:
            indices: the last n blocks if an int, those blocks if a list, all if None.
            return_prefix_tokens: also return each block's class token, as (features, (B, 1, D)) pairs.
            stop_early: skip the blocks after the last one asked for (only with intermediates_only).
            output_fmt: 'NCHW' feature maps at the patch stride, or 'NLC' token sequences.
        Returns:
            (final forward_features output, [intermediates]) or the intermediates alone.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        x, (gh, gw) = self._embed(x)
        stop_after = max_index if (stop_early and intermediates_only) else None
        hidden, residual, taken = self._run_layers(x, stop_after, set(take_indices), norm)

        intermediates = []
        for y in taken:
            patches, prefix = remove_middle_token(y) if self.num_prefix_tokens else (y, None)
            if output_fmt == 'NCHW':
                patches = patches.reshape(patches.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((patches, prefix) if return_prefix_tokens and prefix is not None else patches)
        if intermediates_only:
            return intermediates
        return self._final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last index kept (and the final norm / head) for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = ResidualSum()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


# ----- released checkpoints -----
# A state dict is Vim's if it holds these, and its layer 0 is a bimamba-v2 mixer in the released layout (a
# backward branch's A_b_log) or in ours (both directions in each tensor).
_SIGNATURE_KEYS = ('patch_embed.proj.weight', 'pos_embed', 'norm_f.weight')
_MIXER_KEYS = ('layers.0.mixer.A_b_log', 'layers.0.mixer.conv_weight')


def unwrap_state_dict(checkpoint: Dict[str, Any], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The weights inside a checkpoint, chosen as timm's ``load_state_dict`` chooses them
    (state_dict_ema, then model_ema, then state_dict, then model), with DDP 'module.' prefixes removed."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'Expected a checkpoint dict, got {type(checkpoint).__name__}.')
    for key, wanted in (('state_dict_ema', use_ema), ('model_ema', use_ema), ('state_dict', True), ('model', True)):
        if wanted and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in checkpoint.items()}


def _square_grid(num_patches: int) -> tuple:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f'Cannot infer the patch grid of a position embedding with {num_patches} patch entries: '
            f'it is not square.')
    return side, side


def checkpoint_filter_fn(state_dict: Dict[str, Any], model) -> Dict[str, torch.Tensor]:
    """Adapt a released (or our own) Vim state dict to ``model``: unwrap the envelope, resample the
    position embedding (keeping the middle class entry) and the patch kernel where sizes differ.
    Channel and class-count changes are left to timm's loader (first_conv / classifier in the cfg)."""
    state_dict = unwrap_state_dict(state_dict)
    missing = [k for k in _SIGNATURE_KEYS if k not in state_dict]
    if not any(k in state_dict for k in _MIXER_KEYS):
        missing.append(' or '.join(_MIXER_KEYS))
    if missing:
        raise KeyError(
            f'Not a Vision Mamba (bimamba v2) checkpoint: missing {missing}. '
            f'Its first keys are {list(state_dict)[:5]}.')
    pos_embed = state_dict['pos_embed']
    prefix = 1 if 'cls_token' in state_dict else 0
    if prefix != model.num_prefix_tokens:
        raise ValueError(
            f'Checkpoint has {prefix} class token(s), the model {model.num_prefix_tokens}: '
            f'create the model with class_token={bool(prefix)}.')
    new_grid = model.patch_embed.grid_size
    if pos_embed.shape[1] != model.pos_embed.shape[1]:
        old_grid = _square_grid(pos_embed.shape[1] - prefix)
        state_dict['pos_embed'] = resample_pos_embed(pos_embed, new_grid, old_grid, prefix)

    kernel = state_dict['patch_embed.proj.weight']
    if kernel.shape[-2:] != model.patch_embed.proj.weight.shape[-2:]:
        state_dict['patch_embed.proj.weight'] = resample_patch_embed(
            kernel, list(model.patch_embed.patch_size), verbose=False)
    return state_dict



# ----- registration -----
def _create_vision_mamba(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    out_indices = kwargs.pop('out_indices', 3)
    if pretrained:  # read by vim.checkpoint, not timm's loader: one clear error for a bad file or no network
        cfg = resolve_pretrained_cfg(variant, kwargs.pop('pretrained_cfg', None),
                                     kwargs.pop('pretrained_cfg_overlay', None)).to_dict()
        cfg['state_dict'] = pretrained_checkpoint(cfg) or cfg['state_dict']
        kwargs['pretrained_cfg'] = cfg
    model = build_model_with_cfg(
        VisionMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )
    if pretrained:  # the cfg stays on the model: it must not keep a second copy of the weights alive
        model.pretrained_cfg['state_dict'] = None
    return model


def _cfg(hf_hub_id: str, hf_hub_filename: str, **kwargs) -> dict:
    return {
        'hf_hub_id': hf_hub_id,
        'hf_hub_filename': hf_hub_filename,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'fixed_input_size': True,  # any size needs dynamic_img_size=True
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2401.09417',
        'paper_name': 'Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model',
        'origin_url': 'https://github.com/hustvl/Vim',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vim_tiny_patch16_224.midclstok_in1k': _cfg('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'),
    'vim_tiny_patch16_stride8_224.midclstok_ft_in1k': _cfg(
        'hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_ft_78p3acc.pth', crop_pct=1.0),
    'vim_small_patch16_224.midclstok_in1k': _cfg('hustvl/Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth'),
    'vim_small_patch16_stride8_224.midclstok_ft_in1k': _cfg(
        'hustvl/Vim-small-midclstok', 'vim_s_midclstok_ft_81p6acc.pth', crop_pct=1.0),
    'vim_base_patch16_224.midclstok_in1k': _cfg('hustvl/Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth'),
})


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Tiny: 192 wide, 24 blocks, 16x16 patches (7M parameters)."""
    args = dict(patch_size=16, embed_dim=192, depth=24)
    return _create_vision_mamba('vim_tiny_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Tiny with overlapping 16x16 patches at stride 8 (730 tokens at 224 px)."""
    args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vision_mamba('vim_tiny_patch16_stride8_224', pretrained, **dict(args, **kwargs))


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Small: 384 wide, 24 blocks, 16x16 patches (26M parameters)."""
    args = dict(patch_size=16, embed_dim=384, depth=24)
    return _create_vision_mamba('vim_small_patch16_224', pretrained, **dict(args, **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Small with overlapping 16x16 patches at stride 8."""
    args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vision_mamba('vim_small_patch16_stride8_224', pretrained, **dict(args, **kwargs))


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Base: 768 wide, 24 blocks, 16x16 patches (98M parameters)."""
    args = dict(patch_size=16, embed_dim=768, depth=24)
    return _create_vision_mamba('vim_base_patch16_224', pretrained, **dict(args, **kwargs))
