"""What the temporal layers are trained to do: the diffusion objective of the
image model (same schedule, same prediction type), applied to whole videos,
and the context masks the prediction and interpolation models learn from.

Every random draw takes the training loop's generator, so an interrupted and
resumed run draws exactly what an uninterrupted one would.
"""

import torch
from einops import rearrange

from ..masking import INTERPOLATION_FACTOR, context_input, interpolation_mask, prediction_mask

CONTEXT_FRAMES = (0, 1, 2)  # S for the prediction model; S = 0 is trained too, for context guidance


def noised(x0, noise, t, alpha_bar, prediction_type):
    """``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` for videos ``(b, t, c, h, w)`` at one timestep per
    video (``alpha_bar``: sampling.alphas_cumprod), and the UNet's target: eps,
    or v = sqrt(a) eps - sqrt(1 - a) x0."""
    a = alpha_bar.to(x0.device)[t].view(-1, 1, 1, 1, 1).to(x0.dtype)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if prediction_type == "eps":
        return x_t, noise
    if prediction_type == "v":
        return x_t, a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"prediction type {prediction_type!r}: choose 'eps' or 'v'")


def checked_power(power):
    if power <= 0:
        raise ValueError(f"timestep_power {power}: choose a positive power (1: uniform)")
    return power


def draw_timesteps(videos, generator, timesteps=1000, power=1.0):
    """One timestep per video: all frames of a video share their noise level.
    ``power`` p draws t / T with density p (t / T)^(p - 1): 1 is uniform, the
    image model's objective; above 1 favours high noise, where a video's layout
    (which object is where) is decided and the frames must agree on it."""
    if checked_power(power) == 1:  # the stream of every run trained before the power existed
        return torch.randint(0, timesteps, (videos,), generator=generator)
    u = torch.rand(videos, generator=generator, dtype=torch.float64)
    return (u ** (1 / power) * timesteps).long().clamp(max=timesteps - 1)


def checked_dropout(probability):
    if not 0 <= probability <= 1:
        raise ValueError(f"caption_dropout {probability} is a probability: choose it in [0, 1]")
    return probability


def drop_captions(captions, probability, generator):
    """Each caption replaced by "" with ``probability``: the model also learns the
    unconditional prediction that classifier-free guidance subtracts. One draw
    per caption whatever the probability, so the rest of the loss's random
    stream does not depend on it."""
    dropped = torch.rand(len(captions), generator=generator) < probability
    return ["" if drop else caption for caption, drop in zip(captions, dropped.tolist())]


def _choice(options, generator):
    return options[torch.randint(len(options), (1,), generator=generator).item()]


def draw_context(mode, frames, generator, stages=None):
    """A training mask ``(frames,)`` and stage flag for one video of a context mode:
    prediction knows its first S frames, S drawn from {0, 1, 2}; interpolation
    knows every 4th frame (``frames`` = 4N - 3). ``stages``: None for layers
    without a stage channel, else the interpolation stages to draw from
    (prediction runs at stage 0, the key-frame rate, as TemporalConfig.stage_flag)."""
    if mode == "prediction":
        return prediction_mask(frames, _choice(CONTEXT_FRAMES, generator)), None if stages is None else 0
    if mode == "interpolation":
        if (frames - 1) % INTERPOLATION_FACTOR:
            raise ValueError(f"interpolation trains on windows of 4N - 3 frames (5, 9, 13, 17, ...), got {frames}")
        stage = None if stages is None else _choice(stages, generator)
        return interpolation_mask((frames - 1) // INTERPOLATION_FACTOR + 1), stage
    raise ValueError(f"mode {mode!r} has no context: choose 'prediction' or 'interpolation'")


def masked_context(videos, masks, stages):
    """c_S for a batch of clean videos ``(b, t, c, h, w)``, one mask and stage per
    video -> ``((b t), c + 1 [+ 1], h, w)``, batched as the UNet sees frames."""
    return rearrange(torch.stack([context_input(v, m.to(v), s) for v, m, s in zip(videos, masks, stages)]), "b t c h w -> (b t) c h w")
