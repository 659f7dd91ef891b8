from comfy_api.latest import io

from .comfy_bridge import FRESH, load_layers_for, temporal_layer_files, with_temporal_layers


class TemporalUNetPatcher(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_TemporalUNetPatcher",
            display_name="Temporal UNet Patcher",
            category="Video LDM",
            description=(
                "Turns an image MODEL (SD 1.x / 2.x, the SD x4 upscaler, or a Video LDM bundle's) into a video model: inserts temporal layers "
                "(Video LDM's temporal attention and 3D convolutions, or an AnimateDiff motion module on SD 1.5) after its spatial layers, so the "
                "frames of a batch are denoised together as one video. Feed its MODEL to the Keyframe Sampler, Masked Predictor, 4x Interpolator "
                "or Video Upscaler. The input MODEL is left as it is."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The image model to animate: SD 1.x / 2.x or the SD x4 upscaler from any checkpoint loader, or a Video LDM bundle's MODEL; LoRAs may be applied before or after."),
                io.Combo.Input(
                    "temporal_layers",
                    options=[FRESH] + temporal_layer_files(),
                    tooltip=(
                        "A temporal-layer file from models/temporal_layers (or a bundle's), trained for this model family and for the job of the node it "
                        "feeds: key frames, prediction, interpolation or upscaling; or an AnimateDiff motion module for SD 1.5 (v1, v2, v3) from "
                        "models/animatediff_models, as .safetensors. 'fresh' builds untrained layers that leave the model's output unchanged, as a start for training."
                    ),
                ),
                io.Float.Input(
                    "scale", default=1.0, min=0.0, max=2.0, step=0.01, optional=True,
                    tooltip="Motion strength: how much of each temporal layer's change to the features applies. 1 as trained, below 1 less motion, 0 the image model exactly (frames independent).",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone of the input MODEL with the temporal layers: it denoises the frames of a batch jointly, as one video.")],
        )

    @classmethod
    def execute(cls, model, temporal_layers, scale=1.0) -> io.NodeOutput:  # optional: prompts saved before it existed still run
        return io.NodeOutput(with_temporal_layers(model, load_layers_for(model, temporal_layers), scale))
