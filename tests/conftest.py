import os
import sys

import pytest
import torch

# helpers shared by the tests (tests/ is not a package)
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
