"""The sampler settings every sampling node of the pack takes, in one place so
that they read and behave the same everywhere."""

import comfy.samplers
from comfy_api.latest import io


def sampler_inputs():
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seed of the initial noise."),
        io.Int.Input("steps", default=25, min=1, max=10000, tooltip="Denoising steps."),
        io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Text guidance scale."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddim", tooltip="Any ComfyUI sampler; the paper uses DDIM."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform", tooltip="Any ComfyUI scheduler."),
    ]
