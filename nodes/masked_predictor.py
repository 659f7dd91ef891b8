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
            description="Makes a video longer, segment by segment: each new segment is predicted from the last 1 or 2 frames of the video so far, which stay unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL patched with temporal layers trained for prediction."),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("video", tooltip="The video so far, e.g. from the Keyframe Sampler."),
                io.Int.Input("segments", default=2, min=1, max=1000, tooltip="How many new segments to add; each adds (window - context_frames) frames."),
                io.Int.Input("context_frames", default=2, min=1, max=2, tooltip="How many frames of the video so far each segment continues from."),
                io.Float.Input("context_guidance", default=1.0, min=0.0, max=10.0, step=0.1, tooltip="s in f(z) + s (f(z; c) - f(z)); above 1 keeps long videos closer to their context."),
                *sampler_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The video followed by the new frames, at the same frame rate.")],
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
