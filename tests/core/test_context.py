"""Context conditioning (paper, Fig. 4): c_S = (m * z, m) through a learned,
zero-initialised downsampling into every temporal res block."""

import pytest
import torch

from vldm_core.masking import context_input, prediction_mask
from vldm_core.temporal import TemporalConfig, TemporalLayers
from vldm_core.unet_layout import find_layout, inject

from tiny_models import TINY, perturb, video_batch

CONTEXT = TemporalConfig(context_latent_channels=TINY.in_channels)


def forward(unet, x, t, context, masked_context=None, frames=6):
    with torch.no_grad():
        return unet(x, t, context, frames=frames, masked_context=masked_context)


def clean_frames(seed=5):
    return torch.randn(6, TINY.in_channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_fresh_context_layers_equal_the_image_model_with_any_context(unet):
    x, t, context = video_batch()
    image = forward(unet, x, t, context)
    inject(unet, TemporalLayers(find_layout(unet), CONTEXT))
    for s in (0, 1, 2):
        assert torch.equal(forward(unet, x, t, context, context_input(clean_frames(), prediction_mask(6, s))), image)


def test_trained_context_layers_see_the_known_frames_and_only_them(unet):
    x, t, context = video_batch()
    inject(unet, perturb(TemporalLayers(find_layout(unet), CONTEXT)))
    mask = prediction_mask(6, 2)
    a, b = clean_frames(5), clean_frames(5).clone()
    b[:2] += 1.0  # other context frames
    out_a = forward(unet, x, t, context, context_input(a, mask))
    assert (out_a - forward(unet, x, t, context, context_input(b, mask))).abs().max() > 1e-3
    c = a.clone()
    c[2:] += 1.0  # frames that the mask hides
    assert torch.equal(out_a, forward(unet, x, t, context, context_input(c, mask)))


def test_context_reaches_every_resolution(unet):
    layers = TemporalLayers(find_layout(unet), CONTEXT)
    resolutions = []
    for layer in layers.layers.values():
        if hasattr(layer, "context_proj"):
            layer.context_proj.register_forward_hook(lambda m, args, out: resolutions.append(out.shape[-1]))
    inject(unet, layers)
    x, t, context = video_batch()
    forward(unet, x, t, context, context_input(clean_frames(), prediction_mask(6, 1)))
    assert sorted(set(resolutions)) == [4, 8]  # latent 8x8 and the downsampled level


def test_layers_without_context_refuse_context_frames(unet, layers):
    inject(unet, layers)
    x, t, context = video_batch()
    with pytest.raises(ValueError, match="not trained with context frames"):
        forward(unet, x, t, context, context_input(clean_frames(), prediction_mask(6, 1)))


STAGED = TemporalConfig(context_latent_channels=TINY.in_channels, interpolation_stage=True)


def test_one_interpolation_model_tells_its_two_stages_apart(unet):
    from vldm_core.masking import interpolation_mask

    x, t, context = video_batch(frames=5)
    image = forward(unet, x, t, context, frames=5)
    layers = TemporalLayers(find_layout(unet), STAGED)
    inject(unet, layers)
    keys = clean_frames()[:5]
    stage = {s: context_input(keys, interpolation_mask(2), stage=s) for s in (0, 1)}
    assert torch.equal(forward(unet, x, t, context, stage[0], frames=5), image)  # fresh: identity whatever the stage
    perturb(layers)
    first, second = (forward(unet, x, t, context, stage[s], frames=5) for s in (0, 1))
    assert (first - second).abs().max() > 1e-3


def test_context_without_the_stage_channel_is_refused(unet):
    inject(unet, TemporalLayers(find_layout(unet), STAGED))
    x, t, context = video_batch()
    with pytest.raises(ValueError, match="context frames have 5 channels, these layers take 6"):
        forward(unet, x, t, context, context_input(clean_frames(), prediction_mask(6, 1)))
