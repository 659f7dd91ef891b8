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
            description="Turns an SD 1.x / 2.x image MODEL into a Video LDM by inserting temporal layers after its spatial layers. The input MODEL is left as it is.",
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.x / SD 2.x image model (or the SD x4 upscaler), from any checkpoint loader; LoRAs may be applied before or after."),
                io.Combo.Input(
                    "temporal_layers",
                    options=[FRESH] + folder_paths.get_filename_list(FOLDER),
                    tooltip="A temporal-layer file from models/temporal_layers, trained for this model family. 'fresh' builds untrained layers that leave the model's output unchanged, as a start for training.",
                ),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A clone of the input that denoises frames jointly.")],
        )

    @classmethod
    def execute(cls, model, temporal_layers) -> io.NodeOutput:
        return io.NodeOutput(with_temporal_layers(model, load_layers_for(model, temporal_layers)))
