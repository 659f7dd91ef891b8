"""Sampling without ComfyUI: SD's schedule, Euler steps, and the guided window
sampler that drives the rollout loops on the command line."""

import pytest
import torch

from vldm_core.masking import prediction_mask
from vldm_core.rollout import predict_segments
from vldm_core.sampling import Denoiser, discrete_sigmas, sample_euler, sampling_sigmas, sigma_at, timestep_at, window_sampler
from vldm_core.temporal import TemporalConfig, TemporalLayers
from vldm_core.unet_layout import find_layout, inject

from tiny_models import TINY, perturb


def test_sd_schedule_end_points():
    sigmas = discrete_sigmas()
    assert sigmas.shape == (1000,)
    assert sigmas[0].item() == pytest.approx(0.0292, abs=1e-4)
    assert sigmas[-1].item() == pytest.approx(14.6146, abs=1e-3)
    assert (sigmas.diff() > 0).all()


def test_timestep_and_sigma_are_inverse():
    sigmas = discrete_sigmas()
    t = torch.tensor([0.0, 1.5, 250.25, 998.9, 999.0])
    assert torch.allclose(timestep_at(sigmas, sigma_at(sigmas, t)), t, atol=1e-3)
    assert torch.allclose(sigma_at(sigmas, torch.arange(1000.0)), sigmas, rtol=1e-6, atol=0)


def test_sampling_sigmas_start_at_the_noisiest_and_end_at_zero():
    sigmas = sampling_sigmas(discrete_sigmas(), 10)
    assert sigmas.shape == (11,)
    assert sigmas[0].item() == pytest.approx(discrete_sigmas()[-1].item()) and sigmas[-1] == 0 and (sigmas.diff() < 0).all()


def test_euler_reaches_a_single_data_point_exactly():
    """With one training example the ideal denoiser always answers it; the ODE then ends on it."""
    x0 = torch.randn(3, 4, 5, 5)
    out = sample_euler(lambda x, sigma: x0, torch.randn(3, 4, 5, 5), sampling_sigmas(discrete_sigmas(), 7))
    assert torch.allclose(out, x0, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_denoiser_inverts_the_forward_process_for_an_oracle_unet(prediction_type):
    """A UNet that answers the true eps (or v) gives back the clean latents."""
    x0, eps, sigma = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor(3.0)
    x = x0 + sigma * eps
    alpha, s = (1 + sigma**2) ** -0.5, sigma * (1 + sigma**2) ** -0.5  # x * alpha is the variance-preserving latent
    target = eps if prediction_type == "eps" else alpha * eps - s * x0

    def oracle(x_in, t, context, frames, masked_context=None, y=None):
        assert torch.allclose(x_in, x * alpha) and t.shape == (2,)
        return target

    assert torch.allclose(Denoiser(oracle, prediction_type)(x, sigma, None, 2), x0, atol=1e-5)


def context_model():
    torch.manual_seed(0)
    from tiny_models import tiny_unet

    unet = tiny_unet()
    inject(unet, perturb(TemporalLayers(find_layout(unet), TemporalConfig(context_latent_channels=TINY.in_channels))))
    return unet


def prompts():
    g = torch.Generator().manual_seed(9)
    return torch.randn(1, 5, TINY.context_dim, generator=g), torch.zeros(1, 5, TINY.context_dim)


@torch.no_grad()
def test_unit_guidance_is_plain_conditional_sampling():
    """At s = 1 and cfg = 1 the three-video batch reduces to f(z; c_S, text)."""
    unet, (text, no_text) = context_model(), prompts()
    denoiser = Denoiser(unet)
    known = torch.randn(6, 4, 8, 8)
    mask = prediction_mask(6, 2)
    guided = window_sampler(denoiser, text, no_text, steps=3, cfg=1.0, context_scale=1.0, seed=4, device="cpu")(known, mask)

    from vldm_core.masking import context_input

    c_s = context_input(known, mask)
    plain = sample_euler(
        lambda x, sigma: denoiser(x, sigma, text.expand(6, -1, -1), 6, c_s),
        torch.randn(known.shape, generator=torch.Generator().manual_seed(4)),
        sampling_sigmas(denoiser.train_sigmas, 3),
    )
    assert torch.allclose(guided, plain, atol=1e-4)


@torch.no_grad()
def test_guided_rollout_keeps_its_context_and_repeats_with_its_seed():
    unet, (text, no_text) = context_model(), prompts()
    video = torch.randn(6, 4, 8, 8)

    def rollout(seed, context_scale):
        sample_window = window_sampler(Denoiser(unet), text, no_text, steps=2, cfg=3.0, context_scale=context_scale, seed=seed, device="cpu")
        return predict_segments(video, 2, 6, 2, sample_window)

    out = rollout(1, 2.0)
    assert out.shape == (6 + 2 * 4, 4, 8, 8) and torch.isfinite(out).all()
    assert torch.equal(out[:6], video)
    assert torch.equal(out, rollout(1, 2.0))
    assert not torch.allclose(out[6:], rollout(2, 2.0)[6:])
    assert not torch.allclose(out[6:], rollout(1, 1.0)[6:])  # context guidance changes the prediction
