"""Tiny models and data that the core tests build."""

import av
import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

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


class ToyPerceptual(nn.Module):
    """Stands in for LPIPS: distance between frozen features of the two frames."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x, y):
        return (self.features(x) - self.features(y)).abs().mean(dim=(1, 2, 3))


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
        loss = job.loss(batch, torch.Generator().manual_seed(1))
        (loss["loss"] if isinstance(loss, dict) else loss).backward()
        return [p.grad.clone() for p in job.module.parameters()]

    return all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(False), grads(True)))


def write_tiny_bundle(folder, frame_size=(32, 32), key_frame_rate=2.0, upscaler=True, seed=0, autoencoder_levels=(1, 1, 2, 2)):
    """A complete model bundle of tiny random models (temporal layers perturbed
    off identity, so every stage acts): what vldm_core.pipeline loads and the
    bundle loader nodes load into ComfyUI. Temporal-layer files sit in its
    temporal_layers/ subfolder, the temporal decoder in temporal_decoders/ (so
    ComfyUI lists them and not the model files), named after the bundle folder
    (ComfyUI lists them by file name, next to other bundles' files); the
    autoencoders have 32 GroupNorm groups, as ComfyUI's VAE. ``autoencoder_levels``:
    the image autoencoder's ch_mult (four levels: f8, as SD's; three: f4, as the bundled model's)."""
    from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL
    from vldm_core.model_files import save_model
    from vldm_core.pipeline import write_bundle
    from vldm_core.temporal import TemporalConfig
    from vldm_core.temporal_decoder import fresh_temporal_decoder
    from vldm_core.text_encoder import TextEncoder, TextEncoderConfig
    from vldm_core.weights import save_temporal_layers

    folder.mkdir(parents=True, exist_ok=True)
    text = TextEncoderConfig(dim=TINY.context_dim, layers=1, heads=2)
    torch.manual_seed(seed)
    unet = UNetModel(TINY)
    autoencoder = AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=autoencoder_levels))
    save_model(TextEncoder(text), folder / "text_encoder.safetensors")
    save_model(unet, folder / "unet.safetensors", prediction_type="eps")
    save_model(autoencoder, folder / "autoencoder.safetensors", latent_scale=0.5)

    def layers(name, layout, modes, frames, config=TemporalConfig(), prediction_type="eps"):
        trained = perturb(TemporalLayers(layout, config, modes=modes), seed=len(name))
        path = f"temporal_layers/{folder.name}-{name}"
        save_temporal_layers(trained, folder / path, train_frames=frames, modes=modes, prediction_type=prediction_type)
        return path

    context = TemporalConfig(context_latent_channels=TINY.in_channels, interpolation_stage=True)
    files = {
        "text_encoder": "text_encoder.safetensors", "autoencoder": "autoencoder.safetensors", "unet": "unet.safetensors",
        "keyframe": layers("keyframe.safetensors", find_layout(unet), ("keyframe",), 4),
        "prediction": layers("context.safetensors", find_layout(unet), ("prediction", "interpolation"), 5, context),
        "temporal_decoder": f"temporal_decoders/{folder.name}-temporal_decoder.safetensors",
    }
    files["interpolation"] = files["prediction"]
    decoder = perturb(fresh_temporal_decoder(autoencoder.decoder, TemporalConfig(norm_groups=8)), seed=3)
    save_temporal_layers(decoder, folder / files["temporal_decoder"], train_frames=3, modes=("decoder",))
    if upscaler:
        up = UNetModel(UNetConfig(in_channels=7, model_channels=16, channel_mult=(1, 2), head_dim=8, context_dim=TINY.context_dim, norm_groups=8, num_classes=351))
        save_model(up, folder / "upscaler_unet.safetensors", prediction_type="v")
        save_model(AutoencoderKL(AutoencoderConfig(ch=32, ch_mult=(1, 1, 2))), folder / "upscaler_autoencoder.safetensors", latent_scale=0.5)
        files.update(upscaler_unet="upscaler_unet.safetensors", upscaler_autoencoder="upscaler_autoencoder.safetensors",
                     upscaler_layers=layers("upscaler_layers.safetensors", find_layout(up), ("upscaler",), 3, TemporalConfig(norm_groups=8), "v"))
    write_bundle(folder, files, key_frame_rate, frame_size)
    return folder


class SeededVideos(Dataset):
    """``videos`` samples, sample ``index`` drawn from its own generator
    (``generator(index)``), so a dataset is the same in every process and
    epoch: the toy training data of the job tests subclass it with ``__getitem__``."""

    def __init__(self, videos=16, seed=0):
        self.videos, self.seed = videos, seed

    def __len__(self):
        return self.videos

    def generator(self, index):
        return torch.Generator().manual_seed(self.seed * 1000 + index)


# SD 1.5's UNet layout (four levels, attention on the first three, two ResBlocks
# per level, text context 768) at a small width: what AnimateDiff's modules fit.
SD15_LAYOUT = UNetConfig(model_channels=32, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2), head_dim=8, context_dim=768)


def write_motion_module(path, state):
    """An AnimateDiff-style file: its state dict as safetensors, no metadata."""
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
