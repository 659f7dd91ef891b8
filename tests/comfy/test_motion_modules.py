"""AnimateDiff motion modules through the pack's nodes in a real ComfyUI, on a
tiny random model of SD 1.5's UNet layout: sampling through the Temporal UNet
Patcher gives what the independent reference implementation gives, scale 0 is
the image model to the bit, the user's MODEL is untouched, AnimateDiff's noise
schedule comes along, and files or models that do not fit are refused through
the nodes with the problem named."""

import os

import pytest
import torch
from safetensors.torch import save_file

from animatediff_reference import PE_LENGTH, VERSIONS, published_state_dict, reference_forward_with
from prompt_parts import key, sampler_inputs

FRAMES, SIZE, STEPS, CFG, SEED = 8, 64, 3, 5.0, 7  # 64 px: an 8 x 8 latent, 1 x 1 after SD 1.5's three downsamplings
FILES = {version: f"vldm_test_mm_{version}.safetensors" for version in VERSIONS}
COMBINED = "vldm_test_mm_v3_with_context.safetensors"  # a motion module with a context branch, as the trainer exports it


@pytest.fixture(scope="module")
def bridge(comfy):
    return comfy.module("nodes.comfy_bridge")


def sd15(comfy, seed=0, context_dim=768):
    return comfy.tiny_model(context_dim, seed, layout="sd1.5")


@pytest.fixture(scope="module")
def states(comfy, bridge):
    """Motion modules v1, v2, v3 for the tiny SD 1.5-layout UNet in AnimateDiff's key layout
    (random values), in models/animatediff_models as AnimateDiff-Evolved users keep them."""
    folder = os.path.join(comfy.folder_paths.models_dir, "animatediff_models")
    os.makedirs(folder, exist_ok=True)
    unet = bridge.unet_of(sd15(comfy))
    states = {version: published_state_dict(unet, version, seed=5) for version in VERSIONS}
    for version, state in states.items():
        save_file(state, os.path.join(folder, FILES[version]))
    return states


@pytest.fixture(scope="module")
def sample(bridge, comfy):
    conds = comfy.tiny_conds()

    def sample(model, frames=FRAMES):
        latent = torch.zeros(frames, 4, SIZE // 8, SIZE // 8)
        return bridge.sample_frames(model, SEED, STEPS, CFG, "ddim", "ddim_uniform", *conds, latent)

    return sample


def patched(bridge, model, version, scale=1.0):
    return bridge.with_temporal_layers(model, bridge.load_layers_for(model, FILES[version]), scale)


@pytest.mark.parametrize("version", VERSIONS)
def test_sampling_through_the_patcher_matches_the_reference(comfy, bridge, states, sample, version):
    image = sd15(comfy, seed=2)
    video = patched(bridge, image, version)
    ours = sample(video)
    # the reference: the same image model with AnimateDiff's modules hooked in, on the patched model's noise schedule
    reference_model = image.clone()
    reference_model.add_object_patch("model_sampling", video.get_model_object("model_sampling"))
    expected = reference_forward_with(bridge.unet_of(image), states[version], version, FRAMES, lambda: sample(reference_model))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (expected - sample(reference_model)).abs().max() > 1e-2  # the modules act


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_scale_zero_is_the_image_model_to_the_bit_and_leaves_the_users_model_untouched(comfy, bridge, states, sample, version):
    image = sd15(comfy, seed=3)
    state = {k: v.clone() for k, v in image.model.state_dict().items()}
    structure = [name for name, _ in image.model.named_modules()]
    schedule = image.get_model_object("model_sampling")
    alone = sample(image)

    half, full = sample(patched(bridge, image, version, scale=0.5)), sample(patched(bridge, image, version))
    assert torch.equal(sample(patched(bridge, image, version, scale=0.0)), alone)
    assert (half - alone).abs().max() > 1e-2 and (half - full).abs().max() > 1e-2

    assert torch.equal(sample(image), alone)
    assert [name for name, _ in image.model.named_modules()] == structure
    assert all(torch.equal(v, state[k]) for k, v in image.model.state_dict().items())
    assert image.get_model_object("model_sampling") is schedule


def animatediff_sigmas():
    """AnimateDiff's training schedule: betas evenly spaced from 0.00085 to 0.012 over 1000 steps."""
    alpha_bar = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64), 0)
    return ((1 - alpha_bar) / alpha_bar).sqrt().float()


def test_animatediffs_noise_schedule_comes_along_unless_the_user_chose_one(comfy, bridge, states):
    import comfy_extras.nodes_model_advanced as advanced

    image = sd15(comfy)
    sd_sigmas = image.get_model_object("model_sampling").sigmas.clone()
    torch.testing.assert_close(patched(bridge, image, "v3").get_model_object("model_sampling").sigmas, animatediff_sigmas(), rtol=1e-5, atol=0)
    assert torch.equal(image.get_model_object("model_sampling").sigmas, sd_sigmas)

    zsnr = advanced.ModelSamplingDiscrete().patch(image, "eps", True)[0]  # chosen before the patcher: kept
    assert torch.equal(patched(bridge, zsnr, "v3").get_model_object("model_sampling").sigmas, zsnr.get_model_object("model_sampling").sigmas)
    after = advanced.ModelSamplingDiscrete().patch(patched(bridge, image, "v3"), "eps", True)[0]  # chosen after it: the user's
    assert torch.equal(after.get_model_object("model_sampling").sigmas, zsnr.get_model_object("model_sampling").sigmas)


def test_weight_patches_and_low_vram_loading_compose_with_a_v1_module(comfy, bridge, states, sample, monkeypatch):
    import comfy.model_management as mm

    image = sd15(comfy, seed=4)
    keys = [k for k in image.model.state_dict() if k.endswith(("input_blocks.1.1.proj_in.weight", "middle_block.0.in_layers.2.weight", "output_blocks.2.0.out_layers.3.weight"))]
    g = torch.Generator().manual_seed(2)
    patches = {k: (torch.randn(image.model.state_dict()[k].shape, generator=g) * 0.05,) for k in keys}
    lora_first = image.clone()
    lora_first.add_patches(patches)
    lora_first = patched(bridge, lora_first, "v1")
    lora_last = patched(bridge, image, "v1").clone()
    assert set(lora_last.add_patches(patches)) == set(patches)
    mm.unload_all_models()
    first, last = sample(lora_first), sample(lora_last)
    assert torch.equal(first, last) and (first - sample(patched(bridge, image, "v1"))).abs().max() > 1e-3

    mm.unload_all_models()
    real_load = mm.LoadedModel.model_load
    monkeypatch.setattr(mm.LoadedModel, "model_load", lambda self, lowvram_model_memory=0, force_patch_weights=False: real_load(self, self.model.model_size() // 4, force_patch_weights))
    try:
        low = sample(lora_last)
        holder = lora_last.get_additional_models_with_key(bridge.KEY)[0]
        assert lora_last.model.model_lowvram and holder.model.model_lowvram
    finally:
        monkeypatch.undo()
        mm.unload_all_models()
    assert torch.equal(low, last)


def loader(layout="sd1.5", context_dim=768):
    return {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": context_dim, "layout": layout}}


def patcher(layers, scale=1.0):
    return {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layers, "scale": scale}}


def keyframes(frames):
    return {"class_type": "VLDM_KeyframeSampler", "inputs": {**sampler_inputs(["2", 0]), "frames": frames, "width": SIZE, "height": SIZE, "frame_rate": 8.0}}


def capture(name):
    return {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": name}}


def test_the_keyframe_sampler_makes_16_frames_with_a_motion_module(comfy, states):
    listed = comfy.nodes.NODE_CLASS_MAPPINGS["VLDM_TemporalUNetPatcher"].INPUT_TYPES()["required"]["temporal_layers"][1]["options"]
    assert set(FILES.values()) <= set(listed)
    name = key("16")
    result = comfy.run({"1": loader(), "2": patcher(FILES["v2"], scale=0.8), "3": keyframes(16), "4": capture(name)})
    assert result.ok, result.events("execution_error")
    frames = comfy.captured[name]
    assert frames.shape == (16, 4, SIZE // 8, SIZE // 8) and torch.isfinite(frames).all()


@pytest.fixture(scope="module")
def combined(comfy, bridge, states):
    """v3 with a context branch trained on top (here: random), saved as the trainer exports it."""
    temporal, weights = comfy.module("vldm_core.temporal"), comfy.module("vldm_core.weights")
    layers = temporal.with_context_branch(bridge.load_layers_for(sd15(comfy), FILES["v3"]), context_latent_channels=4, interpolation_stage=True)
    with torch.no_grad():
        for layer in layers.layers.values():
            layer.context_proj.weight.normal_(std=0.05)
    weights.save_temporal_layers(layers, os.path.join(comfy.temporal_layers_dir, COMBINED), train_frames=FRAMES, modes=("keyframe", "prediction", "interpolation"), prediction_type="eps", overwrite=True)
    return COMBINED


@pytest.mark.parametrize("node, inputs, count", [
    ("VLDM_MaskedPredictor", {"video": ["3", 0], "segments": 1, "context_frames": 2, "context_guidance": 1.5}, 8 + 6),
    ("VLDM_Interpolator4x", {"key_frames": ["3", 0], "multiplier": "4", "context_guidance": 1.0}, 4 * 8 - 3),
])
def test_long_and_dense_videos_need_the_context_branch(comfy, states, combined, node, inputs, count):
    def prompt(layers, name):
        return {"1": loader(), "2": patcher(layers), "3": keyframes(8),
                "4": {"class_type": node, "inputs": {**sampler_inputs(["2", 0], seed=2), **inputs}},
                "5": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["4", 0], "key": name}}}

    refused = comfy.run(prompt(FILES["v2"], key("raw")))
    message = refused.error["exception_message"]
    assert refused.error["node_type"] == node and "trained for keyframe" in message and "context branch trained first: python -m vldm_core.train" in message
    name = key("combined")
    result = comfy.run(prompt(combined, name))
    assert result.ok, result.events("execution_error")
    assert comfy.captured[name].shape[0] == count


def write(comfy, name, state, folder="animatediff_models"):
    save_file(state, os.path.join(comfy.folder_paths.models_dir, folder, name))
    return name


def test_files_and_models_that_do_not_fit_are_refused_through_the_nodes(comfy, states):
    folder = os.path.join(comfy.folder_paths.models_dir, "animatediff_models")
    torch.save(states["v3"], os.path.join(folder, "vldm_test_v3_sd15_mm.ckpt"))
    hotshot = write(comfy, "vldm_test_hotshot.safetensors", {k.replace("motion_modules", "temporal_attentions"): v for k, v in states["v2"].items()})
    cases = [
        ({"1": loader(), "2": patcher("vldm_test_v3_sd15_mm.ckpt"), "3": keyframes(8), "4": capture(key())},
         "VLDM_TemporalUNetPatcher", ["pickled file, which this pack never opens", "weights_only=True", "vldm_test_v3_sd15_mm.safetensors"]),
        ({"1": loader(), "2": patcher(hotshot), "3": keyframes(8), "4": capture(key())}, "VLDM_TemporalUNetPatcher", ["HotShot-XL motion model (for SDXL)"]),
        ({"1": loader(context_dim=1024), "2": patcher(FILES["v3"]), "3": keyframes(8), "4": capture(key())},
         "VLDM_TemporalUNetPatcher", ["motion module for SD 1.5; this MODEL is SD2.x", "load an SD 1.5 checkpoint"]),
        ({"1": loader(layout="tiny"), "2": patcher(FILES["v3"]), "3": keyframes(8), "4": capture(key())},
         "VLDM_TemporalUNetPatcher", ["do not match this MODEL's UNet blocks"]),
        ({"1": loader(), "2": patcher(FILES["v1"]), "3": keyframes(PE_LENGTH["v1"] + 1), "4": capture(key())},
         "VLDM_KeyframeSampler", ["25 frames requested, but this motion module's position code covers 24", "sample at most 24"]),
    ]
    for prompt, node, phrases in cases:
        result = comfy.run(prompt)
        assert result.error["node_type"] == node
        for phrase in phrases:
            assert phrase in result.error["exception_message"], result.error["exception_message"]
