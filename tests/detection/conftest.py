import pytest

from detection_cases import TINY_VIM


@pytest.fixture
def tiny_backbone_kwargs():
    return dict(TINY_VIM, out_channels=32)
