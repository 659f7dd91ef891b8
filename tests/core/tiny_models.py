"""Tiny models and data that the core tests build."""

import av
import numpy as np
import torch

from vldm_core.temporal import TemporalLayers
from vldm_core.unet import UNetConfig, UNetModel
from vldm_core.unet_layout import find_layout

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), head_dim=16, context_dim=24)


def tiny_unet(config=TINY, seed=0):
    torch.manual_seed(seed)
    return UNetModel(config).eval()


def perturb(layers, seed=1, std=0.05):
    """Stand-in for trained weights: non-zero last projections, so temporal layers act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layers.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return layers


def video_batch(frames=6, size=8, config=TINY, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, config.in_channels, size, size, generator=g)
    t = torch.full((frames,), 400)
    context = torch.randn(1, 5, config.context_dim, generator=g).expand(frames, -1, -1)
    return x, t, context


STEP = 5  # brightness per frame of the counter: survives the codec's rounding


def write_video(path, frames, fps, width=64, height=48, codec="libx264", gop=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"qp": "0"}
        if gop:
            stream.codec_context.gop_size = gop
        for number in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:16] = STEP * number
            x = number % (width - 12)
            image[24:36, x:x + 12] = (230, 40, 90)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def checkpointed_gradients_agree(job, batch):
    """A job's gradients with and without gradient checkpointing, from the same draws."""

    def grads(enabled):
        job.set_gradient_checkpointing(enabled)
        job.module.zero_grad()
        job.loss(batch, torch.Generator().manual_seed(1)).backward()
        return [p.grad.clone() for p in job.module.parameters()]

    return all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(False), grads(True)))
