import pytest
import torch

from vldm_core.temporal import TemporalLayers
from vldm_core.unet_layout import find_layout

from tiny_models import tiny_unet


@pytest.fixture
def unet():
    return tiny_unet()


@pytest.fixture
def layers(unet):
    torch.manual_seed(3)
    return TemporalLayers(find_layout(unet))
