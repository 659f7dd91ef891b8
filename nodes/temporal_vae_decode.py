import logging
from fractions import Fraction

import comfy.model_management
import comfy.ops
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import InputImpl, Types, io

from ..vldm_core.temporal_decoder import decode_frames, decode_video, find_decoder_layout, is_video_decoder
from ..vldm_core.weights import load_temporal_layers
from ..vldm_core.windows import piece_count
from .comfy_bridge import DECODER_FOLDER

IMAGE_DECODER = "none (the VAE's own decoder)"

# Memory ComfyUI reserves per decoded frame covers the image decoder; the
# temporal blocks keep one more activation of each resolution alive.
TEMPORAL_DECODE_FACTOR = 1.5


def window_decoder(vae, temporal_decoder, progress):
    """``decode(latents)`` of one window as one video, on the VAE's device, to pixels in [0, 1]."""
    first_stage = vae.first_stage_model
    temporal = None
    if temporal_decoder != IMAGE_DECODER:
        if is_video_decoder(first_stage.decoder):
            raise ValueError(f"this VAE is Stable Video Diffusion's, which has its own temporal decoder: set temporal_decoder to '{IMAGE_DECODER}'")
        layout = find_decoder_layout(first_stage.decoder)
        path = folder_paths.get_full_path_or_raise(DECODER_FOLDER, temporal_decoder)
        temporal = load_temporal_layers(path, layout, ops=comfy.ops.manual_cast, target="VAE")
        if "decoder" not in temporal.modes:
            raise ValueError(f"{temporal_decoder} holds temporal layers for {', '.join(temporal.modes)}, not a temporal decoder: pick a file trained as a temporal decoder")
        temporal = temporal.to(vae.device, vae.vae_dtype).eval()

    def decode(latents):
        comfy.model_management.throw_exception_if_processing_interrupted()
        z = latents.to(vae.device, vae.vae_dtype)
        with torch.no_grad():
            if temporal is None:
                # the VAE's own decode: frame by frame, or SVD's decoder with the window as its video
                pixels = first_stage.decode(z)
            else:
                pixels = decode_frames(first_stage.decoder, first_stage.post_quant_conv(z), temporal, frames=z.shape[0])
        progress.update(1)
        return vae.process_output(pixels.float()).to(vae.output_device)

    return decode, temporal is not None


class TemporalVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_TemporalVAEDecode",
            display_name="Temporal VAE Decode",
            category="Video LDM",
            description="Decodes a latent video to frames with the temporally fine-tuned decoder, which removes the flicker of frame-by-frame decoding. Runs in fixed windows of frames (and optional tiles), so the result does not depend on free memory.",
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE the temporal decoder was trained on: SD 1.x / 2.x's (KL-f8), a Video LDM bundle's (e.g. KL-f4), or Stable Video Diffusion's. It is not changed."),
                io.Latent.Input("samples", tooltip="A latent video, one latent per frame (e.g. from the 4x Interpolator, the Masked Predictor or the Keyframe Sampler)."),
                io.Combo.Input(
                    "temporal_decoder",
                    options=[IMAGE_DECODER] + folder_paths.get_filename_list(DECODER_FOLDER),
                    tooltip="A temporal-decoder file from models/temporal_decoders, trained for this VAE; 'none' decodes with the VAE's own decoder (frame by frame for SD, temporally for SVD).",
                ),
                io.Int.Input("window_frames", default=16, min=1, max=4096, tooltip="Frames decoded together as one window; the temporal decoder sees this many neighbours. Lower it to use less memory."),
                io.Int.Input("window_overlap", default=4, min=0, max=4095, tooltip="Frames shared by neighbouring windows, blended to hide the seams; smaller than window_frames."),
                io.Int.Input("tile_size", default=0, min=0, max=8192, step=64, tooltip="Decode in square tiles of this many output pixels (a multiple of 64) to use less memory; 0 decodes whole frames."),
                io.Int.Input("tile_overlap", default=64, min=0, max=4096, step=8, tooltip="Output pixels shared by neighbouring tiles, blended to hide the seams; smaller than tile_size. Unused when tile_size is 0."),
                io.Float.Input("frame_rate", default=8.0, min=0.1, max=240.0, step=0.001, tooltip="Frames per second of the VIDEO, used only where the latent carries none (the Keyframe Sampler sets one, the 4x Interpolator multiplies it)."),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The decoded frames as an IMAGE batch, one image per frame."),
                io.Video.Output(display_name="VIDEO", tooltip="The decoded frames with their frame rate, for Save Video."),
            ],
        )

    @classmethod
    def execute(cls, vae, samples, temporal_decoder, window_frames, window_overlap, tile_size, tile_overlap, frame_rate) -> io.NodeOutput:
        latents = samples["samples"]
        if latents.ndim != 4:
            raise ValueError(f"this LATENT has shape {tuple(latents.shape)}; Temporal VAE Decode takes a video as (frames, channels, height, width): decode a video model's 5-D latent with VAE Decode")
        if vae.latent_dim != 2:
            raise ValueError("this VAE is a video VAE (it decodes 3-D latents, as Wan's or Hunyuan's): decode its latents with VAE Decode; Temporal VAE Decode takes SD's KL-f8 VAE, a Video LDM bundle's or SVD's")
        if window_overlap >= window_frames:
            raise ValueError(f"window_overlap {window_overlap} must be smaller than window_frames {window_frames}")
        upscale = vae.upscale_ratio  # 8 for SD's VAE; a bundle's autoencoder may upsample less
        tile, overlap = tile_size // upscale, tile_overlap // upscale
        if tile_size and (tile_size % 64 or overlap >= tile):
            raise ValueError(f"tile_size {tile_size} with tile_overlap {tile_overlap}: use a multiple of 64 and an overlap smaller than the tile (e.g. {max(64, tile_size - tile_size % 64)} and 64)")
        frames, _, height, width = latents.shape
        progress = comfy.utils.ProgressBar(piece_count(frames, height, width, window_frames, window_overlap, tile, overlap))
        decode, temporal = window_decoder(vae, temporal_decoder, progress)
        if not temporal and not is_video_decoder(vae.first_stage_model.decoder):
            logging.info("Temporal VAE Decode: no temporal decoder chosen, decoding frame by frame")
        window_shape = (min(window_frames, frames), latents.shape[1], min(tile or height, height), min(tile or width, width))
        memory = vae.memory_used_decode(window_shape, vae.vae_dtype) * window_shape[0] * (TEMPORAL_DECODE_FACTOR if temporal else 1.0)
        comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory, force_full_load=vae.disable_offload)
        pixels = decode_video(decode, latents, window_frames, window_overlap, tile, overlap, upscale)
        images = pixels.movedim(1, -1).contiguous()
        rate = samples.get("frame_rate", frame_rate)
        video = InputImpl.VideoFromComponents(Types.VideoComponents(images=images, frame_rate=Fraction(rate).limit_denominator(1000)))
        return io.NodeOutput(images, video)
