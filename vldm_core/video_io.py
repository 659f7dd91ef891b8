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


def write_video(path, frames, fps, lossless=False, crf=18):
    """An H.264 mp4 of frames ``(t, 3, h, w)`` in [-1, 1], or of an iterable of
    such chunks (written as they come, so a long video needs no memory).
    Default: yuv420p, which any player opens (odd sizes padded by one pixel);
    ``lossless``: qp 0 in 4:4:4, so colours and edges survive to within rounding."""
    chunks = [frames] if isinstance(frames, torch.Tensor) else frames
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt, stream.options = ("yuv444p", {"qp": "0"}) if lossless else ("yuv420p", {"crf": str(crf)})
        for number, chunk in enumerate(chunks):
            images = to_uint8(chunk)
            if not lossless:
                height, width = images.shape[1:3]
                images = np.pad(images, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            if number == 0:  # the size comes with the first frames
                stream.width, stream.height = images.shape[2], images.shape[1]
            for image in images:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return path
