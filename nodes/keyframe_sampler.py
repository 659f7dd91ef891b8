import comfy.model_management
import nodes
import torch
from comfy_api.latest import io

from ..vldm_core.motion_module import MotionModuleConfig
from .comfy_bridge import context_branch_hint, require_temporal_layers, sample_frames
from .sampler_inputs import sampler_inputs


def check_frame_count(model, frames):
    layers = require_temporal_layers(model, "without them its frames would come out independent; pass it through Temporal UNet Patcher first")
    if layers.train_frames is not None and frames > layers.train_frames:
        motion_module = isinstance(layers.config, MotionModuleConfig) and layers.train_frames == layers.config.position_code_frames
        limit = "this motion module's position code covers" if motion_module else "these temporal layers were trained on"
        raise ValueError(
            f"{frames} frames requested, but {limit} {layers.train_frames}: sample at most {layers.train_frames} key frames here, "
            f"then make the video longer with the Masked Predictor or denser with the 4x Interpolator{context_branch_hint(layers)}"
        )


def check_size(width, height):
    for name, value in (("width", width), ("height", height)):
        if value % 8:
            raise ValueError(f"{name} {value} is not a multiple of 8 (the latent is 8x smaller): use {value - value % 8} or {value - value % 8 + 8}")


class KeyframeSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_KeyframeSampler",
            display_name="Keyframe Sampler",
            category="Video LDM",
            description=(
                "Samples the key frames of a video from text: all frames are denoised together, so the temporal layers make them one coherent clip. "
                "Make the video longer with the Masked Predictor, denser with the 4x Interpolator, and decode it with Temporal VAE Decode."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Temporal UNet Patcher, with temporal layers trained for key frames."),
                io.Conditioning.Input("positive", tooltip="What the video shows: the text prompt, from CLIP Text Encode."),
                io.Conditioning.Input("negative", tooltip="What the video should not show: the negative prompt, from CLIP Text Encode."),
                io.Int.Input("frames", default=16, min=1, max=1024, tooltip="Number of key frames, denoised together as one clip; at most the number the temporal layers were trained on."),
                io.Int.Input("width", default=512, min=16, max=nodes.MAX_RESOLUTION, step=8, tooltip="Frame width in pixels (multiple of 8)."),
                io.Int.Input("height", default=320, min=16, max=nodes.MAX_RESOLUTION, step=8, tooltip="Frame height in pixels (multiple of 8)."),
                io.Float.Input("frame_rate", default=8.0, min=0.1, max=240.0, step=0.001, tooltip="Frames per second of the key frames: the rate the temporal layers were trained at (the paper's key frames: 1.875). The 4x Interpolator multiplies it, Temporal VAE Decode gives it to the VIDEO."),
                *sampler_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The key frames as a latent video (one latent per frame in the batch axis), with their frame_rate: for the Masked Predictor, the 4x Interpolator or Temporal VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, frames, width, height, frame_rate, seed, steps, cfg, sampler_name, scheduler) -> io.NodeOutput:
        check_frame_count(model, frames)
        check_size(width, height)
        latent_format = model.model.latent_format
        ratio = getattr(latent_format, "spacial_downscale_ratio", 8)  # SD's VAE: 8; a bundle's may downsample less
        empty = torch.zeros([frames, latent_format.latent_channels, height // ratio, width // ratio], device=comfy.model_management.intermediate_device())
        samples = sample_frames(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, empty)
        return io.NodeOutput({"samples": samples, "frame_rate": frame_rate})
