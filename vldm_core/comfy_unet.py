"""How ComfyUI's UNet (``comfy.ldm.modules.diffusionmodules.openaimodel``)
hands control to temporal layers: through its forward-timestep-embed patch,
with the frame count and c_S read from the transformer options.

Plain Python, no ComfyUI import: the nodes register this patch on a MODEL,
and the trainer calls a bare ComfyUI UNet with the same options, so the
layers see exactly what they will see inside ComfyUI's samplers.
"""

from .temporal import TemporalLayer

MASKED_CONTEXT = "vldm_masked_context"  # c_S: a per-frame model cond, then a transformer option


def frames_per_forward(x, transformer_options):
    """T from the batch ComfyUI built: it stacks whole videos, one per cond/uncond entry."""
    batch = transformer_options.get("original_shape", x.shape)[0]
    videos = len(transformer_options.get("cond_or_uncond") or [None])
    if batch % videos:
        raise RuntimeError(f"batch of {batch} frames does not split into {videos} videos (cond/uncond)")
    return batch // videos


def run_temporal_layer(layer, x, emb, context, transformer_options, *unused):
    return layer(x, emb, context, frames_per_forward(x, transformer_options), transformer_options.get(MASKED_CONTEXT))


TIMESTEP_EMBED_PATCH = (TemporalLayer, run_temporal_layer)


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
    return unet(x, timesteps, context, y=y, transformer_options=options)
