"""ComfyUI glue: each file turns ComfyUI objects into calls of vldm_core."""

from comfy_api.latest import ComfyExtension, io

from .comfy_bridge import register_model_folder
from .interpolator import Interpolator4x
from .keyframe_sampler import KeyframeSampler
from .masked_predictor import MaskedPredictor
from .temporal_patcher import TemporalUNetPatcher


class VideoLDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TemporalUNetPatcher, KeyframeSampler, MaskedPredictor, Interpolator4x]


async def comfy_entrypoint() -> VideoLDMExtension:
    register_model_folder()
    return VideoLDMExtension()
