"""The training objective agrees with the sampler, and the context masks the
prediction and interpolation models learn from are the paper's."""

import pytest
import torch

from vldm_core.masking import interpolation_mask
from vldm_core.sampling import Denoiser, alphas_cumprod, discrete_sigmas
from vldm_core.train.objectives import draw_context, draw_timesteps, masked_context, noised


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_a_unet_that_hits_the_training_target_denoises_exactly_when_sampling(prediction_type):
    """Training noises with alpha_bar and regresses eps or v; sampling reads the
    same UNet output through sigma = sqrt((1 - a) / a). Both must describe one model."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    t = torch.tensor([37, 811])
    alpha_bar = alphas_cumprod()
    x_t, target = noised(x0, eps, t, alpha_bar, prediction_type)
    for video in range(2):
        sigma = discrete_sigmas()[t[video]]

        def unet(x_in, timesteps, context, frames, masked_context=None, y=None):
            assert torch.allclose(x_in, x_t[video], atol=1e-5) and torch.allclose(timesteps, t[video].float().expand(3), atol=1e-2)
            return target[video]

        x_sigma = x_t[video] * (1 + sigma**2).sqrt()  # the same point in the sampler's coordinates
        assert torch.allclose(Denoiser(unet, prediction_type)(x_sigma, sigma, None, 3), x0[video], atol=1e-4)


def test_timesteps_are_one_per_video_and_follow_the_generator():
    a, b = draw_timesteps(5, torch.Generator().manual_seed(1)), draw_timesteps(5, torch.Generator().manual_seed(1))
    assert a.shape == (5,) and torch.equal(a, b) and ((0 <= a) & (a < 1000)).all()


def test_a_timestep_power_above_one_favours_high_noise_and_one_keeps_the_uniform_stream():
    """Density p (t/T)^(p-1): with p = 2, P(t >= T/2) = 3/4 and E[t/T] = 2/3."""
    t = draw_timesteps(40000, torch.Generator().manual_seed(4), power=2.0).double()
    assert abs(float((t >= 500).double().mean()) - 0.75) < 0.01 and abs(float(t.mean()) / 1000 - 2 / 3) < 0.01
    assert t.min() >= 0 and t.max() <= 999
    uniform = torch.randint(0, 1000, (6,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(draw_timesteps(6, torch.Generator().manual_seed(5), power=1.0), uniform)  # runs trained before the power draw the same
    with pytest.raises(ValueError, match="timestep_power 0"):
        draw_timesteps(6, torch.Generator(), power=0.0)


def test_prediction_draws_zero_one_and_two_context_frames():
    g = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(60):
        mask, stage = draw_context("prediction", 8, g)
        context_frames = int(mask.sum())
        assert torch.equal(mask[:context_frames], torch.ones(context_frames)) and not mask[context_frames:].any()
        assert stage is None
        seen.add(context_frames)
    assert seen == {0, 1, 2}
    assert draw_context("prediction", 8, g, stages=(0, 1))[1] == 0  # the key-frame rate, as the nodes run it


def test_interpolation_knows_every_fourth_frame_and_draws_its_stage():
    g = torch.Generator().manual_seed(3)
    stages = {draw_context("interpolation", 13, g, stages=(0, 1))[1] for _ in range(30)}
    mask, stage = draw_context("interpolation", 13, g)
    assert torch.equal(mask, interpolation_mask(4)) and stage is None and stages == {0, 1}
    with pytest.raises(ValueError, match="4N - 3 frames"):
        draw_context("interpolation", 12, g)
    with pytest.raises(ValueError, match="has no context"):
        draw_context("keyframe", 12, g)


def test_masked_context_is_batched_like_the_frames():
    videos = torch.randn(2, 5, 4, 3, 3)
    masks = [interpolation_mask(2), torch.tensor([1.0, 0, 0, 0, 0])]
    c = masked_context(videos, masks, [1, 0])
    assert c.shape == (10, 6, 3, 3)
    assert torch.equal(c[4, :4], videos[0, 4]) and torch.equal(c[1, :4], torch.zeros(4, 3, 3))
    assert torch.equal(c[5, 4], torch.ones(3, 3)) and torch.equal(c[6, 4], torch.zeros(3, 3))
    assert torch.equal(c[:5, 5], torch.ones(5, 3, 3)) and torch.equal(c[5:, 5], torch.zeros(5, 3, 3))
