"""ComfyUI glue: each file turns ComfyUI objects into calls of vldm_core."""

from comfy_api.latest import ComfyExtension, io

from .bundle_loader import BundleLoader, BundleUpscalerLoader, register_bundle_folders
from .comfy_bridge import register_model_folders
from .interpolator import Interpolator4x
from .keyframe_sampler import KeyframeSampler
from .masked_predictor import MaskedPredictor
from .temporal_patcher import TemporalUNetPatcher
from .temporal_vae_decode import TemporalVAEDecode
from .video_upscaler import VideoUpscaler


class VideoLDMExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [BundleLoader, BundleUpscalerLoader, TemporalUNetPatcher, KeyframeSampler, MaskedPredictor, Interpolator4x, TemporalVAEDecode, VideoUpscaler]


async def comfy_entrypoint() -> VideoLDMExtension:
    register_model_folders()
    register_bundle_folders()
    return VideoLDMExtension()
