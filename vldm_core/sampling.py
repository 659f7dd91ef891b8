"""Sampling without ComfyUI: SD's discrete noise schedule, Euler steps in
k-diffusion's sigma parametrisation, and the window sampler that the rollout
loops (vldm_core.rollout) call.

Inside ComfyUI the nodes sample with ComfyUI's own samplers; this serves the
command line (demo, benchmarks, training previews), where there is no ComfyUI.
"""

import torch

from .guidance import context_guided
from .masking import context_input, no_context


def alphas_cumprod(beta_start=0.00085, beta_end=0.012, timesteps=1000, betas="scaled_linear"):
    """alpha_bar_t of the training timesteps, in float64. SD's betas are evenly spaced
    in their square root ("scaled_linear"); AnimateDiff trained its motion modules
    with betas evenly spaced themselves ("linear")."""
    if betas == "scaled_linear":
        beta = torch.linspace(beta_start**0.5, beta_end**0.5, timesteps, dtype=torch.float64) ** 2
    elif betas == "linear":
        beta = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    else:
        raise ValueError(f"betas {betas!r}: choose 'scaled_linear' (SD's) or 'linear' (AnimateDiff's)")
    return torch.cumprod(1 - beta, dim=0)


def discrete_sigmas(**schedule):
    """The noise levels of SD's training timesteps, sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t):
    0.0292 at t = 0 to 14.6146 at t = 999."""
    alpha_bar = alphas_cumprod(**schedule)
    return ((1 - alpha_bar) / alpha_bar).sqrt().float()


def sigma_at(train_sigmas, t):
    """sigma at (fractional) timesteps ``t``, interpolated in log sigma."""
    t = t.clamp(0, len(train_sigmas) - 1)
    low = t.floor().long()
    high = (low + 1).clamp(max=len(train_sigmas) - 1)
    log_sigmas = train_sigmas.log()
    return (torch.lerp(log_sigmas[low], log_sigmas[high], t - low)).exp()


def timestep_at(train_sigmas, sigma):
    """The (fractional) timestep of noise level ``sigma``: the inverse of sigma_at."""
    log_sigmas = train_sigmas.to(sigma.device).log()
    log_sigma = sigma.log().clamp(log_sigmas[0], log_sigmas[-1])
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1).reshape(log_sigma.shape)
    low = high - 1
    return low + (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])


def sampling_sigmas(train_sigmas, steps):
    """``steps`` noise levels evenly spaced in timestep from the noisiest, then 0
    (ComfyUI's "normal" scheduler)."""
    t = torch.linspace(len(train_sigmas) - 1, 0, steps)
    return torch.cat([sigma_at(train_sigmas, t), torch.zeros(1)])


class Denoiser:
    """D(x; sigma): the clean-latent estimate of a UNet that predicts eps or v
    at SD's discrete timesteps."""

    def __init__(self, unet, prediction_type="eps", train_sigmas=None):
        if prediction_type not in ("eps", "v"):
            raise ValueError(f"prediction type {prediction_type!r}: choose 'eps' or 'v'")
        self.unet, self.prediction_type = unet, prediction_type
        self.train_sigmas = discrete_sigmas() if train_sigmas is None else train_sigmas

    def __call__(self, x, sigma, context, frames, masked_context=None, concat=None, y=None):
        """``concat``: frames stacked on the scaled input's channels (the x4
        upscaler's low-res frames); ``y``: class labels (its noise level)."""
        scale = (sigma**2 + 1) ** -0.5
        t = timestep_at(self.train_sigmas, sigma).expand(x.shape[0])
        x_in = x * scale if concat is None else torch.cat([x * scale, concat.to(x)], dim=1)
        out = self.unet(x_in, t, context, frames, masked_context, y=y)
        if self.prediction_type == "eps":
            return x - sigma * out
        return x * scale**2 - out * sigma * scale


def sample_euler(denoise, noise, sigmas, callback=None):
    """Euler steps of the probability-flow ODE, dx/dsigma = (x - D(x; sigma)) / sigma."""
    x = noise * sigmas[0]
    for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = denoise(x, sigma)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
        if callback is not None:
            callback(i, len(sigmas) - 1)
    return x


def sample_guided(denoiser, text, no_text, noise, steps, cfg, callback=None, concat=None, y=None):
    """One video from ``noise`` ``(t, c, h, w)`` with classifier-free guidance,
    f(z; -) + w * (f(z; text) - f(z; -)), both branches in one forward:
    key frames (layers without context), and the x4 upscaler with its
    ``concat`` low-res frames and noise level ``y``."""
    frames = noise.shape[0]
    context = torch.cat([no_text, text]).to(noise.device).repeat_interleave(frames, dim=0)

    def twice(v):
        return None if v is None else torch.cat([v, v]).to(noise.device)

    def guided(x, sigma):
        uncond, cond = denoiser(torch.cat([x, x]), sigma, context, frames, concat=twice(concat), y=twice(y)).chunk(2)
        return uncond + cfg * (cond - uncond)

    return sample_euler(guided, noise, sampling_sigmas(denoiser.train_sigmas, steps).to(noise.device), callback)


def window_sampler(denoiser, text, no_text, steps, cfg, context_scale, seed, device, callback=None):
    """``sample_window(known, mask, index, [stage])`` for vldm_core.rollout, with
    text and context guidance (vldm_core.guidance) in one forward of three
    videos: f(z; -, -), f(z; c_S, -), f(z; c_S, text). ``text`` and ``no_text``
    are ``(1, tokens, dim)`` prompt embeddings; window ``index`` draws its noise
    from ``seed + index``."""
    sigmas = sampling_sigmas(denoiser.train_sigmas, steps).to(device)

    def sample_window(known, mask, index=0, stage=None):
        frames = known.shape[0]
        known, mask = known.to(device), mask.to(device)
        with_context = context_input(known, mask, stage)
        masked_context = torch.cat([no_context(known, stage), with_context, with_context])
        context = torch.cat([no_text, no_text, text]).to(device).repeat_interleave(frames, dim=0)

        def guided(x, sigma):
            plain, context_only, full = denoiser(x.repeat(3, 1, 1, 1), sigma, context, frames, masked_context).chunk(3)
            return context_guided(plain, context_only, full, cfg, context_scale)

        noise = torch.randn(known.shape, generator=torch.Generator().manual_seed(seed + index)).to(device)
        return sample_euler(guided, noise, sigmas, callback)

    return sample_window
