"""Video Upscaler: the SD x4 upscaler on a video, in overlapping spatial tiles
(the model is trained on patches) and temporal windows (the temporal layers'
trained length), blended across the overlaps."""

import itertools
import logging

import comfy.model_management
import comfy.sample
import comfy.utils
import torch
from comfy_api.latest import io, ui
from einops import rearrange

from ..vldm_core.windows import map_video, piece_count
from .comfy_bridge import (
    augmented_low_res, layers_for_mode, require_x4_upscaler, temporal_layers_of, to_intermediate, window_progress, with_noise_level, x4_conditioning,
)
from .sampler_inputs import sampler_inputs

SIZE_MULTIPLE = 8  # the x4 upscaler's UNet halves its input three times
DEFAULT_WINDOW = 16  # frames per window where no trained length is known
FRAME_BY_FRAME = (
    "no temporal layers: upscaled frame by frame (load upscaler temporal layers with Temporal UNet Patcher for temporally consistent upscaling)"
)
UNTRAINED = (
    "fresh (untrained) temporal layers leave the upscaler's output unchanged: upscaled frame by frame "
    "(load a temporal-layer file trained for the upscaler for temporally consistent upscaling)"
)


def _multiples_around(value):
    """The multiples of SIZE_MULTIPLE at and below, and at and above, ``value``."""
    return value - value % SIZE_MULTIPLE, value + -value % SIZE_MULTIPLE


def check_images(images):
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"this IMAGE has shape {tuple(images.shape)}; the Video Upscaler takes frames as (frames, height, width, 3), RGB, "
            "e.g. from Load Video or VAE Decode: convert other channel counts to RGB and pass at least one frame"
        )
    height, width = images.shape[1:3]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        (w_down, w_up), (h_down, h_up) = _multiples_around(width), _multiples_around(height)
        crop = f"crop them to {w_down}x{h_down} or " if w_down and h_down else ""
        raise ValueError(
            f"frames of {width}x{height} (width x height): the x4 upscaler needs both in multiples of {SIZE_MULTIPLE}; "
            f"{crop}resize them to {w_up}x{h_up} first (ImageCrop, ImageScale)"
        )


def check_tiles(tile_size, tile_overlap):
    if tile_size % SIZE_MULTIPLE:
        below, above = _multiples_around(tile_size)
        raise ValueError(f"tile_size {tile_size} is not a multiple of {SIZE_MULTIPLE} (the x4 upscaler's UNet needs that): use {max(below, SIZE_MULTIPLE)} or {above}")
    if not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap {tile_overlap} must be smaller than tile_size {tile_size}: lower tile_overlap (e.g. to {tile_size // 4}) or raise tile_size")


def temporal_window(model, window_frames, window_overlap):
    """Frames per window, and a note for the user where frames are upscaled
    independently: the MODEL has no temporal layers, or untrained ones."""
    layers = temporal_layers_of(model)
    note = FRAME_BY_FRAME if layers is None else UNTRAINED if layers.train_frames is None else None
    trained = None if note else layers_for_mode(model, "upscaler").train_frames
    if trained and window_frames > trained:
        raise ValueError(
            f"window_frames {window_frames} is more than the {trained} frames these temporal layers were trained on: "
            f"use at most {trained} (0 takes the trained length); longer videos run in overlapping windows"
        )
    window = window_frames or trained or DEFAULT_WINDOW
    if not 0 <= window_overlap < window:
        raise ValueError(f"window_overlap {window_overlap} must be smaller than the window of {window} frames: lower window_overlap (e.g. to {window // 4})")
    return window, note


def tile_sampler(model, positive, negative, seed, steps, cfg, sampler_name, scheduler, progress):
    """``sample_tile(piece)`` for map_video: one tile of one window, its low-res
    frames and its slice of the video's noise stacked on the channel axis,
    denoised by ComfyUI's sampler as one batch (so the temporal layers see
    its frames as one video)."""
    tiles = itertools.count()

    def sample_tile(piece):
        comfy.model_management.throw_exception_if_processing_interrupted()
        low_res, noise = piece[:, :3], piece[:, 3:]
        return comfy.sample.sample(
            model, noise, steps, cfg, sampler_name, scheduler, x4_conditioning(positive, low_res), x4_conditioning(negative, low_res),
            torch.zeros_like(noise), callback=progress(), disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
            seed=seed + next(tiles),  # what ancestral and SDE samplers seed their own noise with: not the same in every tile
        )

    return sample_tile


def upscale(model, positive, negative, images, noise_augmentation, seed, steps, cfg, sampler_name, scheduler, tile, tile_overlap, window, window_overlap):
    """The x4 upscaler's latent of every frame, (frames, 4, height, width). Noise
    and augmentation are drawn once for the whole video and sliced: each tile
    and window starts from what the whole video would, and overlaps agree."""
    pixels = to_intermediate(rearrange(images.float(), "t h w c -> t c h w") * 2 - 1)
    low_res, level = augmented_low_res(model, pixels, noise_augmentation, seed)
    frames, _, height, width = pixels.shape
    noise = comfy.sample.prepare_noise(torch.zeros(frames, model.model.latent_format.latent_channels, height, width), seed)
    video = torch.cat([low_res, noise.to(low_res)], dim=1)  # sliced together: each tile gets its frames' pixels and noise
    pieces = piece_count(frames, height, width, window, window_overlap, tile, tile_overlap)
    model = with_noise_level(model, level)
    sample_tile = tile_sampler(model, positive, negative, seed, steps, cfg, sampler_name, scheduler, window_progress(model, pieces, steps))
    return map_video(sample_tile, video, window, window_overlap, tile, tile_overlap, store=to_intermediate)


class VideoUpscaler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="VLDM_VideoUpscaler",
            display_name="Video Upscaler",
            category="Video LDM",
            description=(
                "Upscales video frames 4x with the SD x4 upscaler, in overlapping tiles and temporal windows; with upscaler temporal layers "
                "(Temporal UNet Patcher) the frames of a window are upscaled together, so details stay consistent over time."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SD x4 upscaler (x4-upscaler-ema.safetensors) or a bundle's upscaler, ideally through Temporal UNet Patcher with upscaler temporal layers."),
                io.Conditioning.Input("positive", tooltip="What the video shows (the upscaler's text encoder, as for the x4 upscaler on images)."),
                io.Conditioning.Input("negative", tooltip="What the video should not show: the negative prompt."),
                io.Image.Input("images", tooltip="The low-resolution frames as an IMAGE batch (e.g. from Temporal VAE Decode or Load Video), width and height in multiples of 8; the output is 4x as wide and high."),
                io.Float.Input("noise_augmentation", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Noise augmentation of the low-res frames, as a share of the upscaler's noise levels (0.2: level 70 of 350); more lets the upscaler invent more detail, less keeps it closer to the input."),
                io.Int.Input("tile_size", default=128, min=8, max=4096, step=8,
                             tooltip="Tile width and height in low-res pixels (= latent pixels); the upscaler is trained on patches, larger tiles need more memory."),
                io.Int.Input("tile_overlap", default=32, min=0, max=4096, step=8, tooltip="Low-res pixels that neighbouring tiles share, blended to hide the seams; smaller than tile_size."),
                io.Int.Input("window_frames", default=0, min=0, max=1024,
                             tooltip=f"Frames upscaled together; 0: the length the temporal layers were trained on ({DEFAULT_WINDOW} without trained layers)."),
                io.Int.Input("window_overlap", default=4, min=0, max=1024, tooltip="Frames that neighbouring windows share, blended to hide the seams; smaller than the window."),
                *sampler_inputs(),
                io.Float.Input("frame_rate", default=0.0, min=0.0, max=240.0, step=0.001, optional=True,
                               tooltip="Frames per second of the video (an IMAGE has none), written into the LATENT for the nodes after it; 0: unknown."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The x4 upscaler's latents, one per frame, at the low-res size: the x4 upscaler checkpoint's VAE decodes them to 4x width and height.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, images, noise_augmentation, tile_size, tile_overlap, window_frames, window_overlap,
                seed, steps, cfg, sampler_name, scheduler, frame_rate=0.0) -> io.NodeOutput:
        require_x4_upscaler(model)
        check_images(images)
        check_tiles(tile_size, tile_overlap)
        window, note = temporal_window(model, window_frames, window_overlap)
        samples = upscale(model, positive, negative, images, noise_augmentation, seed, steps, cfg, sampler_name, scheduler, tile_size, tile_overlap, window, window_overlap)
        latent = {"samples": samples, **({"frame_rate": frame_rate} if frame_rate > 0 else {})}
        if note is None:
            return io.NodeOutput(latent)
        logging.warning("Video Upscaler: %s", note)
        return io.NodeOutput(latent, ui=ui.PreviewText(note))
