from dataclasses import replace

import pytest
import torch

from vldm_core.temporal import TemporalConfig, TemporalLayers, TemporalResBlock
from vldm_core.unet_layout import eject, find_layout, inject

from tiny_models import TINY, perturb, tiny_unet, video_batch


def forward(unet, x, t, context, frames):
    with torch.no_grad():
        return unet(x, t, context, frames=frames)


@pytest.mark.parametrize("cross", [True, False])
def test_fresh_video_model_equals_image_model_to_the_bit(unet, cross):
    x, t, context = video_batch()
    image = forward(unet, x, t, context, 6)
    layers = TemporalLayers(find_layout(unet), TemporalConfig(text_cross_attention=cross))
    inject(unet, layers)
    assert torch.equal(forward(unet, x, t, context, 6), image)


def test_trained_layers_mix_frames_only_in_the_video_model(unet, layers):
    x, t, context = video_batch()
    x_changed = x.clone()
    x_changed[0] += 1.0  # change the first frame only

    image = forward(unet, x, t, context, 6) - forward(unet, x_changed, t, context, 6)
    assert image[1:].abs().max() == 0  # the image model keeps frames independent

    inject(unet, perturb(layers))
    video = forward(unet, x, t, context, 6) - forward(unet, x_changed, t, context, 6)
    assert video[1:].abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every other frame felt it


def test_frames_are_mixed_within_each_video_not_across_videos(unet, layers):
    inject(unet, perturb(layers))
    x, t, context = video_batch(frames=8)
    x_changed = x.clone()
    x_changed[0] += 1.0
    delta = forward(unet, x, t, context, 4) - forward(unet, x_changed, t, context, 4)  # two videos of 4 frames
    assert delta[1:4].abs().max() > 1e-4
    assert delta[4:].abs().max() == 0


def test_temporal_attention_knows_frame_order(unet, layers):
    inject(unet, perturb(layers))
    x, t, context = video_batch()
    reversed_then_back = forward(unet, x.flip(0), t, context, 6).flip(0)
    assert not torch.allclose(reversed_then_back, forward(unet, x, t, context, 6), atol=1e-4)


def test_alpha_one_is_the_image_model_whatever_the_temporal_weights(unet, layers):
    x, t, context = video_batch()
    image = forward(unet, x, t, context, 6)
    perturb(layers)
    with torch.no_grad():
        for layer in layers.layers.values():
            layer.merge.mix_factor.fill_(30.0)  # sigmoid(30) == 1 in fp32
    inject(unet, layers)
    assert all(a == 1.0 for a in layers.alphas().values())
    assert torch.equal(forward(unet, x, t, context, 6), image)


def test_alpha_is_sigmoid_of_mix_factor_and_blends_linearly():
    block = TemporalResBlock(32, 16, TemporalConfig(alpha_init=0.25))
    assert block.merge.alpha.item() == pytest.approx(0.25)
    z_s, z_t = torch.randn(2, 32, 4, 4), torch.randn(2, 32, 4, 4)
    assert torch.allclose(block.merge(z_s, z_t - z_s), 0.25 * z_s + 0.75 * z_t, atol=1e-6)


def test_training_moves_only_temporal_parameters(unet, layers):
    spatial_before = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.requires_grad_(False)
    inject(unet, layers)
    optimizer = torch.optim.AdamW(layers.parameters(), lr=1e-2)
    x, t, context = video_batch()
    for _ in range(2):
        loss = unet(x, t, context, frames=6).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    eject(unet)
    assert unet.state_dict().keys() == spatial_before.keys()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in spatial_before.items())
    zero_init = [l.conv2.weight if hasattr(l, "conv2") else l.proj_out.weight for l in layers.layers.values()]
    assert all(w.abs().max() > 0 for w in zero_init)  # the zero projections learned
    assert all(a != 0.5 for a in layers.alphas().values())  # and so did every alpha


def test_gradients_reach_every_temporal_parameter_through_the_zero_init(unet, layers):
    unet.requires_grad_(False)
    inject(unet, layers)
    x, t, context = video_batch()
    unet(x, t, context, frames=6).pow(2).mean().backward()
    # At init only the last projections and alphas see a gradient (everything
    # before a zero projection is cut off); after one step all do.
    last = [l.conv2.weight if hasattr(l, "conv2") else l.proj_out.weight for l in layers.layers.values()]
    assert all(w.grad is not None and w.grad.abs().max() > 0 for w in last)


def test_single_frame_is_the_image_model_for_res_blocks_padding():
    unet = tiny_unet(TINY)
    x, t, context = video_batch(frames=1)
    layers = perturb(TemporalLayers(find_layout(unet)))
    inject(unet, layers)
    out = forward(unet, x, t, context, 1)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_class_labels_join_the_timestep_embedding():
    """The x4 upscaler's noise level reaches the UNet as a class label y, as in SD's layout."""
    unet = tiny_unet(replace(TINY, num_classes=5))
    x, t, context = video_batch()
    with torch.no_grad():
        low, high = unet(x, t, context, y=torch.zeros(6, dtype=torch.long)), unet(x, t, context, y=torch.full((6,), 4))
    assert unet.label_emb.weight.shape == (5, unet.time_embed[0].out_features) and (low - high).abs().max() > 1e-4
    with pytest.raises(ValueError, match="takes a class label y"):
        unet(x, t, context)
