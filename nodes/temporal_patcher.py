import folder_paths
from comfy_api.latest import io

from .comfy_bridge import FOLDER, FRESH, load_layers_for, with_temporal_layers


class TemporalUNetPatcher(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_TemporalUNetPatcher",
            display_name="Temporal UNet Patcher",
            category="Video LDM",
            description=(
                "Turns an image MODEL (SD 1.x / 2.x, the SD x4 upscaler, or a Video LDM bundle's) into a video model: inserts temporal layers "
                "(temporal attention and 3D convolutions, mixed into the spatial layers by learned alphas) after its spatial layers, so the frames "
                "of a batch are denoised together as one video. Feed its MODEL to the Keyframe Sampler, Masked Predictor, 4x Interpolator or "
                "Video Upscaler. The input MODEL is left as it is."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The image model to animate: SD 1.x / 2.x or the SD x4 upscaler from any checkpoint loader, or a Video LDM bundle's MODEL; LoRAs may be applied before or after."),
                io.Combo.Input(
                    "temporal_layers",
                    options=[FRESH] + folder_paths.get_filename_list(FOLDER),
                    tooltip="A temporal-layer file from models/temporal_layers (or a bundle's), trained for this model family and for the job of the node it feeds: key frames, prediction, interpolation or upscaling. 'fresh' builds untrained layers that leave the model's output unchanged, as a start for training.",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone of the input MODEL with the temporal layers: it denoises the frames of a batch jointly, as one video.")],
        )

    @classmethod
    def execute(cls, model, temporal_layers) -> io.NodeOutput:
        return io.NodeOutput(with_temporal_layers(model, load_layers_for(model, temporal_layers)))
