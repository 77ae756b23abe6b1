"""vim: Vision Mamba as a timm backbone. ``import vim`` registers every ``vim_*`` model with timm."""
from . import kernels
from .checkpoint import checkpoint_filter_fn, convert_checkpoint, unwrap_state_dict
from .vision_mamba import VisionMamba, insert_middle_token, remove_middle_token, resample_pos_embed

__version__ = '0.1.0'
__all__ = [
    'VisionMamba', 'checkpoint_filter_fn', 'convert_checkpoint', 'insert_middle_token', 'kernels',
    'remove_middle_token', 'resample_pos_embed', 'unwrap_state_dict',
]
