"""Shared settings of the detection tests (a module of its own: `from conftest import` picks whichever
conftest.py was imported first when several test directories run together)."""

# A narrow, shallow Vim: the CPU runs it on the pure-PyTorch path in a fraction of a second.
TINY_VIM = dict(embed_dim=32, depth=2, drop_path_rate=0.0)
TINY_MODEL = 'vim_tiny_patch16_224'
