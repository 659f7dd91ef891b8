"""The layout adapter on ComfyUI's own UNet class at the real SD sizes, built on
the meta device (no memory, no weights)."""

import pytest
import torch

from vldm_core.temporal import TemporalLayers
from vldm_core.unet_layout import find_layout

COMMON = dict(image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False, adm_in_channels=None, num_res_blocks=[2, 2, 2, 2],
              use_temporal_attention=False, use_temporal_resblock=False)
SD15 = dict(COMMON, in_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False, context_dim=768, num_heads=8)
SD21 = dict(COMMON, in_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=True, context_dim=1024, num_head_channels=64)
X4 = dict(COMMON, in_channels=7, model_channels=256, channel_mult=[1, 2, 2, 4], transformer_depth=[0, 0, 1, 1, 1, 1, 1, 1], transformer_depth_middle=1,
          transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], use_linear_in_transformer=True, context_dim=1024, num_heads=8, num_classes=1000,
          disable_self_attentions=[True, True, True, False])


def comfy_unet(config):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)


@pytest.mark.parametrize(
    "config, family, res_sites, attention_sites, heads",
    [
        (SD15, "SD1.x", 22, 16, {(8, 40), (8, 80), (8, 160)}),
        (SD21, "SD2.x", 22, 16, {(5, 64), (10, 64), (20, 64)}),
        (X4, "SD x4 upscaler", 22, 16, {(8, 64), (8, 128)}),
    ],
)
def test_insertion_sites_of_real_sd_unets(comfy, config, family, res_sites, attention_sites, heads):
    layout = find_layout(comfy_unet(config))
    assert layout.family == family and layout.context_dim == config["context_dim"]
    assert sum(s.kind == "res" for s in layout.sites) == res_sites
    assert sum(s.kind == "attention" for s in layout.sites) == attention_sites
    assert {(s.heads, s.head_dim) for s in layout.sites if s.kind == "attention"} == heads
    assert all(s.emb_channels == 4 * config["model_channels"] for s in layout.sites if s.kind == "res")


def test_sd15_and_sd21_layers_do_not_fit_each_other(comfy):
    sd15, sd21 = find_layout(comfy_unet(SD15)), find_layout(comfy_unet(SD21))
    message = sd15.mismatch(sd21)
    assert "SD1.x (context 768" in message and "SD2.x (context 1024" in message


def test_temporal_layers_build_for_sd15_on_meta(comfy):
    unet = comfy_unet(SD15)
    with torch.device("meta"):
        layers = TemporalLayers(find_layout(unet))
    temporal = sum(p.numel() for p in layers.parameters())
    spatial = sum(p.numel() for p in unet.parameters())
    assert 0.2 < temporal / spatial < 1.0  # same order as the paper's added parameters


@pytest.mark.parametrize("version, placement, modules", [("v1", "motion_modules", 20), ("v2", "motion_modules_mid", 21)])
def test_motion_module_sites_of_sd15_are_animatediffs(comfy, version, placement, modules):
    import math

    from animatediff_reference import _module_shapes, motion_module_sites

    from vldm_core.motion_module import MotionModuleConfig

    unet = comfy_unet(SD15)
    layout = find_layout(unet, placement)
    reference = motion_module_sites(unet, version)
    assert [(s.motion_module, s.channels) for s in layout.sites] == [(name, channels) for name, _, channels in reference]
    assert len(layout.sites) == modules and {s.channels for s in layout.sites} == {320, 640, 1280}
    with torch.device("meta"):
        layers = TemporalLayers(layout, MotionModuleConfig())
    published = sum(math.prod(shape) for _, _, c in reference for _, shape, kind in _module_shapes(c) if kind != "pe")
    assert sum(p.numel() for p in layers.parameters()) == published
