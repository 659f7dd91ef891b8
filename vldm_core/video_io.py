"""Writing videos with PyAV: what the demo and the synthetic world's datasets produce."""

import os
from fractions import Fraction

import av
import numpy as np
import torch
from einops import rearrange


def to_uint8(frames):
    """Frames ``(t, 3, h, w)`` in [-1, 1] -> ``(t, h, w, 3)`` uint8."""
    pixels = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "t c h w -> t h w c").cpu().numpy()


def write_video(path, frames, fps, crf=18):
    """An H.264 mp4 (yuv420p, so any player opens it) of frames ``(t, 3, h, w)``
    in [-1, 1]; odd sizes are padded by one pixel, as yuv420p needs even ones."""
    images = to_uint8(frames)
    height, width = images.shape[1:3]
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    images = np.pad(images, pad, mode="edge")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = images.shape[2], images.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
