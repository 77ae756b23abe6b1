"""Run the Triton kernel cases on the CPU through Triton's interpreter.

``TRITON_INTERPRET=1`` has to be in the environment before Triton decorates the kernels, so the cases run in a
fresh interpreter (a subprocess) rather than in this pytest process, which may already have imported them.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize('cases', ['kernel_cases.py', 'compile_cases.py'])
def test_cases_under_triton_interpreter(cases):
    pytest.importorskip('triton')
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'not gpu',
         str(HERE / cases)],
        cwd=HERE.parent.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f'interpreter run failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}'
