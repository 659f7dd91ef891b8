"""The sampler settings every sampling node of the pack takes, in one place so
that they read and behave the same everywhere."""

import comfy.samplers
from comfy_api.latest import io


def sampler_inputs():
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed of the initial noise; the same seed and settings give the same video. Nodes that sample in several windows, tiles or passes use seed, seed + 1, ... for them."),
        io.Int.Input("steps", default=25, min=1, max=10000, tooltip="Denoising steps of each sampling run (of each window or tile, where the node samples in pieces)."),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Text guidance (classifier-free guidance) scale: how strongly the frames follow positive over negative; 1 turns it off."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddim", tooltip="Any ComfyUI sampler; the paper samples with DDIM."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform", tooltip="How the noise levels of the steps are spaced; any ComfyUI scheduler (ddim_uniform goes with DDIM)."),
    ]
