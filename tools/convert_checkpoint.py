"""Convert a released hustvl/Vim checkpoint to a safetensors weight file (also installed as `vim-convert`).

    python tools/convert_checkpoint.py vim_t_midclstok_76p1acc.pth vim_tiny.safetensors --model vim_tiny_patch16_224
"""
import sys

from vim.checkpoint import main

if __name__ == '__main__':
    sys.exit(main())
