#!/usr/bin/env python3
"""Top-1/top-5 of a trained checkpoint (raw and EMA weights) on its validation set.

    python tools/evaluate.py --checkpoint runs/quickstart-digits
"""
import sys

from vim.engine.cli import evaluate_main

if __name__ == '__main__':
    sys.exit(evaluate_main())
