from comfy_api.latest import io

from ..vldm_core.rollout import predict_segments
from .comfy_bridge import check_video_latent, layers_for_mode, to_intermediate, video_latent, window_progress, window_sampler
from .sampler_inputs import sampler_inputs


class MaskedPredictor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_MaskedPredictor",
            display_name="Masked Predictor",
            category="Video LDM",
            description=(
                "Makes a video longer, segment by segment (the paper's prediction model): each new segment is predicted from the last 1 or 2 "
                "frames of the video so far (the context frames), which stay unchanged; context guidance above 1 keeps long videos consistent."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from Temporal UNet Patcher, with temporal layers trained for prediction (they take context frames)."),
                io.Conditioning.Input("positive", tooltip="What the video shows: the text prompt, usually the one the video so far was sampled with."),
                io.Conditioning.Input("negative", tooltip="What the video should not show: the negative prompt."),
                io.Latent.Input("video", tooltip="The video so far, a latent video (e.g. from the Keyframe Sampler); its last context_frames frames start the first new segment."),
                io.Int.Input("segments", default=2, min=1, max=1000, tooltip="How many segments to add; each adds (frames the temporal layers were trained on - context_frames) new frames."),
                io.Int.Input("context_frames", default=2, min=1, max=2, tooltip="Context frames: how many of the last frames each new segment is conditioned on (1 or 2, as in the paper)."),
                io.Float.Input("context_guidance", default=1.5, min=0.0, max=10.0, step=0.1, tooltip="Context guidance scale s in f(z) + s * (f(z; c) - f(z)): 1 is plain conditioning on the context frames; above 1 keeps long videos closer to their context, at one more model pass per step."),
                *sampler_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The video followed by the new frames, as one latent video at the same frame rate.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, video, segments, context_frames, context_guidance, seed, steps, cfg, sampler_name, scheduler) -> io.NodeOutput:
        layers = layers_for_mode(model, "prediction")
        check_video_latent(model, video, layers)
        progress = window_progress(model, segments, steps)
        sample_window = window_sampler(model, positive, negative, seed, steps, cfg, sampler_name, scheduler, context_guidance, progress)
        longer = predict_segments(
            video["samples"], segments, layers.train_frames, context_frames, sample_window, stage=layers.config.stage_flag(), store=to_intermediate
        )
        return io.NodeOutput(video_latent(video, longer))
