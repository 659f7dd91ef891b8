"""AnimateDiff motion modules as temporal layers: files in the published key
layout load into the motion-module family and give the UNet output of an
independent reference implementation (animatediff_reference); a fresh module is
the image model; files this pack does not run are refused naming what they are;
and a context branch trains on top of a frozen module."""

import subprocess
import sys
from functools import partial

import pytest
import torch

from vldm_core.motion_module import MotionModuleConfig
from vldm_core.temporal import TemporalLayers, with_context_branch
from vldm_core.train.jobs import TemporalLayersJob
from vldm_core.train.loop import TrainConfig, train
from vldm_core.unet import UNetConfig, UNetModel
from vldm_core.unet_layout import eject, find_layout, inject
from vldm_core.weights import WeightFileError, load_temporal_layers, read_animatediff, read_header

from animatediff_reference import PE_LENGTH, published_state_dict, reference_forward
from tiny_models import SD15_LAYOUT, SeededVideos, write_motion_module

SIZE = 16  # latent pixels: three downsamplings leave 2x2


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNetModel(SD15_LAYOUT).eval()


def inputs(frames, videos=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = frames * videos
    x = torch.randn(n, 4, SIZE, SIZE, generator=g)
    context = torch.randn(videos, 3, SD15_LAYOUT.context_dim, generator=g).repeat_interleave(frames, 0)
    return x, torch.full((n,), 500), context


def load(path, unet):
    return load_temporal_layers(path, partial(find_layout, unet), prediction_type="eps")


def with_layers(unet, layers, x, t, context, frames):
    inject(unet, layers)
    try:
        with torch.no_grad():
            return unet(x, t, context, frames)
    finally:
        eject(unet)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
@pytest.mark.parametrize("frames, videos", [(8, 2), (16, 1)])
def test_a_published_file_computes_what_animatediff_computes(unet, tmp_path, version, frames, videos):
    state = published_state_dict(unet, version, seed=3)
    layers = load(write_motion_module(tmp_path / "mm.safetensors", state), unet).eval()
    x, t, context = inputs(frames, videos)
    with torch.no_grad():
        image = unet(x, t, context, frames)
        expected = reference_forward(unet, state, version, x, t, context, frames)
    ours = with_layers(unet, layers, x, t, context, frames)
    assert (expected - image).abs().mean() > 1e-2  # the modules act
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(unet(x, t, context, frames), image)  # ejected: the image model again, v1's joint norms gone too


@pytest.mark.parametrize("version, placement, modules, code", [("v1", "motion_modules", 20, 24), ("v2", "motion_modules_mid", 21, 32), ("v3", "motion_modules", 20, 32)])
def test_the_variant_is_read_from_the_keys_and_shapes(unet, tmp_path, version, placement, modules, code):
    path = write_motion_module(tmp_path / "mm.safetensors", published_state_dict(unet, version))
    found = read_animatediff(path.name, read_header(path).shapes)
    assert (found.config.version, found.placement, len(found.channels), found.config.position_code_frames) == (version, placement, modules, code)
    assert found.config.frame_joint_norms == (version == "v1")
    layers = load(path, unet)
    assert layers.train_frames == code and layers.modes == ("keyframe",) and layers.config.betas == "linear"
    assert {site.motion_module for site in layers.layout.sites} == set(found.channels)


def test_the_sites_are_where_animatediff_puts_its_modules(unet):
    sites = {site.motion_module: (site.path, site.channels) for site in find_layout(unet, "motion_modules_mid").sites}
    assert sites["down_blocks.0.motion_modules.1"] == ("input_blocks.2.1", 32)  # after the res+attn pair
    assert sites["down_blocks.3.motion_modules.0"] == ("input_blocks.10.0", 128)  # no attention at the last level
    assert sites["mid_block.motion_modules.0"] == ("middle_block.1", 128)  # between the transformer and the second ResBlock
    assert sites["up_blocks.0.motion_modules.2"] == ("output_blocks.2.0", 128)  # before the Upsample
    assert sites["up_blocks.3.motion_modules.2"] == ("output_blocks.11.1", 32)


@pytest.mark.parametrize("placement", ["motion_modules", "motion_modules_mid"])
def test_a_fresh_motion_module_is_the_image_model_exactly(unet, placement):
    layers = TemporalLayers(find_layout(unet, placement), MotionModuleConfig()).eval()
    x, t, context = inputs(8)
    with torch.no_grad():
        image = unet(x, t, context, 8)
    assert torch.equal(with_layers(unet, layers, x, t, context, 8), image)


def test_more_frames_than_the_position_code_are_refused(unet, tmp_path):
    layers = load(write_motion_module(tmp_path / "mm.safetensors", published_state_dict(unet, "v1")), unet)
    with pytest.raises(ValueError, match="position code covers 24: sample at most that many"):
        with_layers(unet, layers, *inputs(PE_LENGTH["v1"] + 1), PE_LENGTH["v1"] + 1)


def sdxl_like(state):
    """A file with AnimateDiff-SDXL's shape: three levels of 320, 640 and 1280 channels."""
    kept = {k: v for k, v in state.items() if not k.startswith(("down_blocks.3.", "up_blocks.3."))}
    return {k: torch.zeros(tuple(10 * d if d in (32, 64, 128) else d for d in v.shape)) for k, v in kept.items()}


def renamed(state, old, new):
    return {k.replace(old, new): v for k, v in state.items()}


@pytest.mark.parametrize("change, message", [
    (sdxl_like, "is an AnimateDiff-SDXL motion module (for SDXL): this pack runs AnimateDiff motion modules for SD 1.5"),
    (partial(renamed, old="motion_modules", new="temporal_attentions"), "is a HotShot-XL motion model (for SDXL)"),
    (lambda s: {**s, "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.lora.down.weight": torch.zeros(4, 32)}, "is a MotionLoRA"),
    (lambda s: {**s, "conv_in.weight": torch.zeros(320, 9, 3, 3)}, "is a PIA motion module"),
    (lambda s: {k: v for k, v in s.items() if "pos_encoder" not in k}, "AnimateLCM-style motion module (no position code)"),
    (lambda s: {**s, "controlnet_cond_embedding.weight": torch.zeros(3)}, "holds 1 tensors that are not motion-module weights"),
    (lambda s: {k: v for k, v in s.items() if "up_blocks.1.motion_modules.2.temporal_transformer.norm." not in k}, "incomplete or edited motion module"),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("up_blocks.1.motion_modules.2.")}, "the file lacks ['up_blocks.1.motion_modules.2']"),
    (lambda s: {k: v for k, v in s.items() if k != "down_blocks.1.motion_modules.0.temporal_transformer.proj_out.bias"}, "does not hold the tensors of the model it describes (1 tensors missing"),
    (lambda s: {k: v[:, :16] if k.endswith("pos_encoder.pe") and k.startswith("up_") else v for k, v in s.items()}, "its position codes differ"),
])
def test_files_this_pack_does_not_run_are_refused_naming_what_they_are(unet, tmp_path, change, message):
    path = write_motion_module(tmp_path / "mm.safetensors", change(published_state_dict(unet, "v2")))
    with pytest.raises(WeightFileError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load(path, unet)


@pytest.mark.parametrize("config, message", [
    (UNetConfig(model_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=8, context_dim=768),
     "down_blocks.0.motion_modules.0 has 32 channels; this MODEL's UNet has 64 at input_blocks.1.1: the module was built for another UNet"),
    (UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=8, context_dim=1024),
     "motion module for SD 1.5; this MODEL is SD2.x"),
    (UNetConfig(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, attention_levels=(0, 1), head_dim=8, context_dim=768),
     "do not match this MODEL's UNet blocks"),
])
def test_a_module_for_another_unet_is_refused_naming_both_sides(unet, tmp_path, config, message):
    path = write_motion_module(tmp_path / "mm.safetensors", published_state_dict(unet, "v3"))
    with pytest.raises(WeightFileError, match=message):
        load(path, UNetModel(config))


def test_a_ckpt_is_refused_with_a_conversion_command_that_works(unet, tmp_path):
    state = published_state_dict(unet, "v3")
    torch.save(state, tmp_path / "v3_sd15_mm.ckpt")
    with pytest.raises(WeightFileError, match="never opens") as refused:
        load(tmp_path / "v3_sd15_mm.ckpt", unet)
    command = str(refused.value).split("convert it to safetensors once with ")[1]
    assert command.startswith("python -c ")
    subprocess.run([sys.executable, "-c", command.split('"')[1]], cwd=tmp_path, check=True)
    layers = load(tmp_path / "v3_sd15_mm.safetensors", unet)
    assert torch.equal(layers.state_dict()["layers.input_blocks_1_1.proj_in.weight"], state["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"])


class MovingLatents(SeededVideos):
    """Latent videos of one pattern moving a pixel per frame."""

    def __getitem__(self, index):
        pattern = torch.randn(4, SIZE, SIZE, generator=self.generator(index))
        return {"latents": torch.stack([pattern.roll(k, dims=-1) for k in range(8)]), "caption": "a pattern moving right"}


def test_a_context_branch_trains_on_a_frozen_motion_module(unet, tmp_path):
    module = load(write_motion_module(tmp_path / "mm.safetensors", published_state_dict(unet, "v2")), unet)
    layers = with_context_branch(module, context_latent_channels=4)
    x, t, context = inputs(8)
    masked = torch.cat([x * 0, torch.zeros(8, 1, SIZE, SIZE)], dim=1)
    masked[0, :4], masked[0, 4] = x[0], 1
    inject(unet, layers.eval())
    try:
        with torch.no_grad():  # a fresh branch adds nothing, with context frames or without
            assert torch.equal(unet(x, t, context, 8, masked_context=masked), with_layers(unet, module, x, t, context, 8))
    finally:
        eject(unet)

    frozen = {k: v.clone() for k, v in layers.state_dict().items() if ".context_proj." not in k}
    job = TemporalLayersJob(unet, layers, lambda captions: torch.zeros(len(captions), 3, 768), modes=("prediction",), context_only=True)
    trainable = {name: p for name, p in job.layers.named_parameters() if p.requires_grad}
    assert trainable and all(".context_proj." in name for name in trainable)
    assert {id(p) for p in job.module.parameters()} == {id(p) for p in trainable.values()}
    train(job, MovingLatents(), TrainConfig(output_dir=str(tmp_path / "run"), steps=3, batch_size=2, lr=1e-3, checkpoint_every=3, log_every=3, seed=0))
    eject(unet)
    assert all(torch.equal(v, frozen[k]) for k, v in layers.state_dict().items() if k in frozen)  # the motion module did not move
    assert all(layer.context_proj.weight.abs().sum() > 0 for layer in layers.layers.values())  # the branch trained off zero


def test_scale_blends_each_modules_change_as_the_patcher_applies_it(unet, tmp_path):
    from vldm_core.comfy_unet import SCALE, run_temporal_layer

    layers = load(write_motion_module(tmp_path / "mm.safetensors", published_state_dict(unet, "v3")), unet).eval()
    module = next(iter(layers.layers.values()))
    z = torch.randn(8, module.proj_in.in_features, 4, 4)
    options = {"cond_or_uncond": [0]}
    with torch.no_grad():
        moved = module(z, None, None, 8)
        assert torch.equal(run_temporal_layer(module, z, None, None, {**options, SCALE: 0.0}), z)
        torch.testing.assert_close(run_temporal_layer(module, z, None, None, {**options, SCALE: 0.5}), z + 0.5 * (moved - z))
        assert torch.equal(run_temporal_layer(module, z, None, None, options), moved)
