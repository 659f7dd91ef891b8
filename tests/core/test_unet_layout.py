import pytest
import torch
from torch import nn

from vldm_core.temporal import TemporalLayers
from vldm_core.unet import UNetConfig, UNetModel
from vldm_core.unet_layout import TEMPORAL_SUFFIX, UNetLayout, eject, find_layout, inject, name_family

from tiny_models import TINY, tiny_unet


def test_a_temporal_layer_follows_every_resblock_and_transformer(unet):
    layout = find_layout(unet)
    kinds = [(s.path, s.kind) for s in layout.sites]
    spatial = [(f"{p}.{n}", type(m).__name__) for p, blk in [(f"input_blocks.{i}", b) for i, b in enumerate(unet.input_blocks)] + [("middle_block", unet.middle_block)] + [(f"output_blocks.{i}", b) for i, b in enumerate(unet.output_blocks)] for n, m in blk.named_children() if type(m).__name__ in ("ResBlock", "SpatialTransformer")]
    assert kinds == [(p, "res" if k == "ResBlock" else "attention") for p, k in spatial]
    assert layout.family.startswith("custom") and layout.context_dim == TINY.context_dim
    attention = [s for s in layout.sites if s.kind == "attention"]
    assert {(s.heads, s.head_dim) for s in attention} == {(2, 16), (4, 16)}


def test_inject_keeps_spatial_names_and_eject_restores_the_unet(unet, layers):
    keys = list(unet.state_dict())
    inject(unet, layers)
    inject(unet, layers)  # idempotent
    injected = list(unet.state_dict())
    assert [k for k in injected if TEMPORAL_SUFFIX not in k] == keys
    assert list(unet.input_blocks[1]._modules) == ["0", "0" + TEMPORAL_SUFFIX, "1", "1" + TEMPORAL_SUFFIX]
    eject(unet)
    assert list(unet.state_dict()) == keys


def test_layout_round_trips_through_json(unet):
    layout = find_layout(unet)
    assert UNetLayout.from_json(layout.to_json()) == layout


def test_family_names():
    assert name_family(4, 768) == "SD1.x"
    assert name_family(9, 768) == "SD1.x"  # inpainting UNets share the layout
    assert name_family(4, 1024) == "SD2.x"
    assert name_family(7, 1024) == "SD x4 upscaler"


def test_mismatch_names_both_sides():
    a = find_layout(tiny_unet(TINY))
    b = find_layout(tiny_unet(UNetConfig(model_channels=32, channel_mult=(1, 2), head_dim=16, context_dim=48)))
    assert "context 24" in a.mismatch(b) and "context 48" in a.mismatch(b)
    c = find_layout(tiny_unet(UNetConfig(model_channels=64, channel_mult=(1, 2), head_dim=16, context_dim=24)))
    assert "input_blocks.1.0" in a.mismatch(c) and "32 channels" in a.mismatch(c) and "64 channels" in a.mismatch(c)
    d = find_layout(tiny_unet(UNetConfig(model_channels=32, channel_mult=(1, 2, 2), head_dim=16, context_dim=24)))
    assert "temporal sites" in a.mismatch(d)
    assert a.mismatch(a) is None


def test_not_a_unet_is_refused():
    with pytest.raises(ValueError, match="not a Stable Diffusion UNet"):
        find_layout(nn.Linear(2, 2))


def test_video_unet_is_refused(unet):
    unet.middle_block[0].time_stack = nn.Identity()
    with pytest.raises(ValueError, match="already a video UNet"):
        find_layout(unet)


def test_real_sd_sizes_on_meta_device():
    """SD1.x-sized layout of the pack's own UNet: 320/640/1280 channels, context 768."""
    with torch.device("meta"):
        unet = UNetModel(UNetConfig(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=40, context_dim=768))
    layout = find_layout(unet)
    assert layout.family == "SD1.x"
    assert {s.channels for s in layout.sites} == {320, 640, 1280}
    assert len([s for s in layout.sites if s.kind == "attention"]) == 16  # SD1.5 has 16 transformers
    TemporalLayers(layout).to("meta")  # builds for that size
