"""Masked-context sampling inside ComfyUI: c_S travels as a per-frame model cond
to the temporal layers, and context guidance runs through ComfyUI's samplers."""

import pytest
import torch

FRAMES, STEPS, SEED = 6, 3, 11


@pytest.fixture(scope="module")
def setup(comfy):
    bridge = comfy.module("nodes.comfy_bridge")
    temporal = comfy.module("vldm_core.temporal")
    layout = comfy.module("vldm_core.unet_layout")
    image = comfy.tiny_model(seed=2)
    torch.manual_seed(0)
    layers = temporal.TemporalLayers(layout.find_layout(bridge.unet_of(image)), temporal.TemporalConfig(context_latent_channels=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking: every zero-initialised projection gets weights
        for layer in layers.layers.values():
            for last in (getattr(layer, "conv2", None), getattr(layer, "context_proj", None), getattr(layer, "proj_out", None)):
                if last is not None:
                    last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.1)
    return bridge, bridge.with_temporal_layers(image, layers), comfy.tiny_conds()


def known_frames(seed=3):
    return torch.randn(FRAMES, 4, 4, 4, generator=torch.Generator().manual_seed(seed))


def mask(context_frames):
    return torch.tensor([1.0] * context_frames + [0.0] * (FRAMES - context_frames))


def sample(guider):
    import comfy.samplers

    noise = torch.randn(FRAMES, 4, 4, 4, generator=torch.Generator().manual_seed(SEED))
    sigmas = guider.model_patcher.get_model_object("model_sampling").sigma_max * torch.linspace(1, 0, STEPS + 1)
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas, seed=SEED, disable_pbar=True)


def test_context_frames_reach_the_temporal_layers(setup):
    bridge, model, (positive, negative) = setup
    a = sample(bridge.ContextGuider(model, positive, negative, known_frames(3), mask(2), 5.0, 1.0))
    b = sample(bridge.ContextGuider(model, positive, negative, known_frames(4), mask(2), 5.0, 1.0))
    assert (a - b).abs().max() > 1e-3


def test_guidance_scale_one_is_plain_conditional_sampling(setup):
    import comfy.samplers

    bridge, model, (positive, negative) = setup
    masked = bridge.context_input(model.model.process_latent_in(known_frames()), mask(2))
    plain = comfy.samplers.CFGGuider(model)
    plain.set_conds(bridge.with_masked_context(positive, masked), bridge.with_masked_context(negative, masked))
    plain.set_cfg(5.0)
    guided = bridge.ContextGuider(model, positive, negative, known_frames(), mask(2), 5.0, 1.0)
    assert torch.equal(sample(guided), sample(plain))
    stronger = bridge.ContextGuider(model, positive, negative, known_frames(), mask(2), 5.0, 2.0)
    assert (sample(stronger) - sample(plain)).abs().max() > 1e-3


def test_the_context_free_branch_is_the_model_with_no_context_frames(setup):
    import comfy.samplers

    bridge, model, (positive, _) = setup
    # text cfg 1 with equal prompts and s = 0 leave only the context-free branch
    guided = bridge.ContextGuider(model, positive, positive, known_frames(), mask(2), 1.0, 0.0)
    unconditioned = comfy.samplers.CFGGuider(model)
    empty = bridge.context_input(torch.zeros(FRAMES, 4, 4, 4), mask(0))
    unconditioned.set_conds(bridge.with_masked_context(positive, empty), bridge.with_masked_context(positive, empty))
    unconditioned.set_cfg(1.0)
    assert torch.allclose(sample(guided), sample(unconditioned), atol=1e-5)
