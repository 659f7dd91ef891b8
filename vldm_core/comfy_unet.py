"""How ComfyUI's UNet (``comfy.ldm.modules.diffusionmodules.openaimodel``)
hands control to temporal layers: through its forward-timestep-embed patch,
with the frame count and c_S read from the transformer options.

Plain Python, no ComfyUI import: the nodes register this patch on a MODEL,
and the trainer calls a bare ComfyUI UNet with the same options, so the
layers see exactly what they will see inside ComfyUI's samplers.
"""

import torch

from .temporal import TemporalLayer, frames_in_call

MASKED_CONTEXT = "vldm_masked_context"  # c_S: a per-frame model cond, then a transformer option
SCALE = "vldm_temporal_scale"  # s in z + s (z' - z): how much of each temporal layer's change applies (the motion strength)


def frames_per_forward(x, transformer_options):
    """T from the batch ComfyUI built: it stacks whole videos, one per cond/uncond entry."""
    batch = transformer_options.get("original_shape", x.shape)[0]
    videos = len(transformer_options.get("cond_or_uncond") or [None])
    if batch % videos:
        raise RuntimeError(f"batch of {batch} frames does not split into {videos} videos (cond/uncond)")
    return batch // videos


def run_temporal_layer(layer, x, emb, context, transformer_options, *unused):
    scale = transformer_options.get(SCALE, 1.0)
    if scale == 0:
        return x
    z = layer(x, emb, context, frames_per_forward(x, transformer_options), transformer_options.get(MASKED_CONTEXT))
    return z if scale == 1 else torch.lerp(x, z, scale)


TIMESTEP_EMBED_PATCH = (TemporalLayer, run_temporal_layer)


def video_call(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """The diffusion model's call with what the temporal layers read besides x: c_S,
    which reaches the UNet as a keyword its forward drops, moves into the
    transformer options; the frame count is set for frame-joint GroupNorms."""
    masked_context = kwargs.pop(MASKED_CONTEXT, None)
    if masked_context is not None:
        transformer_options = {**transformer_options, MASKED_CONTEXT: masked_context}
    with frames_in_call(frames_per_forward(x, transformer_options)):
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


def call_unet(unet, x, timesteps, context, frames, masked_context=None, y=None):
    """Run a ComfyUI UNet with injected temporal layers outside a sampler, as
    vldm_core.train's jobs call a UNet: with the transformer options a patched
    MODEL would hand it, for videos of ``frames`` frames."""
    options = {
        "patches": {"forward_timestep_embed_patch": [TIMESTEP_EMBED_PATCH]},
        "original_shape": list(x.shape),
        "cond_or_uncond": [0] * (x.shape[0] // frames),
        MASKED_CONTEXT: masked_context,
    }
    with frames_in_call(frames):
        return unet(x, timesteps, context, y=y, transformer_options=options)
