from comfy_api.latest import io

from ..vldm_core.masking import INTERPOLATION_FACTOR, interpolated_length, interpolation_windows, keys_per_window
from ..vldm_core.rollout import interpolate
from .comfy_bridge import check_video_latent, layers_for_mode, to_intermediate, video_latent, window_progress, window_sampler
from .sampler_inputs import sampler_inputs

MULTIPLIERS = {"4": 1, "16": 2}  # passes of the 4x model


class Interpolator4x(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_Interpolator4x",
            display_name="4x Interpolator",
            category="Video LDM",
            description=(
                "Makes a video denser (the paper's interpolation model): fills 3 frames between each pair of key frames (N -> 4N - 3), "
                "or does it twice for 16x; key frames stay unchanged in their places and the frame rate is multiplied."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Temporal UNet Patcher, with temporal layers trained for interpolation (they take key frames as context)."),
                io.Conditioning.Input("positive", tooltip="What the video shows: the text prompt, usually the one the key frames were sampled with."),
                io.Conditioning.Input("negative", tooltip="What the video should not show: the negative prompt."),
                io.Latent.Input("key_frames", tooltip="The key frames to fill in between, a latent video (e.g. from the Keyframe Sampler or the Masked Predictor)."),
                io.Combo.Input("multiplier", options=list(MULTIPLIERS), default="4", tooltip="Frame-rate multiplier. 4: one pass, N -> 4N - 3 frames; 16: two passes of the same model, N -> 16N - 15 frames."),
                io.Float.Input("context_guidance", default=1.5, min=0.0, max=10.0, step=0.1, tooltip="Context guidance scale s towards the key frames, in f(z) + s * (f(z; c) - f(z)): 1 is plain conditioning on them; above 1 follows them more closely, at one more model pass per step."),
                *sampler_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The denser latent video, key frames in their places; its frame_rate, where known, is multiplied by 4 or 16.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, key_frames, multiplier, context_guidance, seed, steps, cfg, sampler_name, scheduler) -> io.NodeOutput:
        if multiplier not in MULTIPLIERS:
            raise ValueError(f"multiplier {multiplier!r}: choose 4 (one pass) or 16 (two passes)")
        layers = layers_for_mode(model, "interpolation")
        check_video_latent(model, key_frames, layers)
        per_window = keys_per_window(layers.train_frames)
        video = to_intermediate(key_frames["samples"])
        passes = MULTIPLIERS[multiplier]
        lengths = [video.shape[0]]
        for _ in range(passes - 1):
            lengths.append(interpolated_length(lengths[-1]))
        progress = window_progress(model, sum(len(interpolation_windows(n, per_window)) for n in lengths), steps)
        for stage in range(passes):
            sample_window = window_sampler(model, positive, negative, seed + stage, steps, cfg, sampler_name, scheduler, context_guidance, progress)
            video = interpolate(video, per_window, sample_window, stage=layers.config.stage_flag(stage), store=to_intermediate)
        return io.NodeOutput(video_latent(key_frames, video, frame_rate_factor=INTERPOLATION_FACTOR**passes))
