"""A small KL autoencoder in Stable Diffusion's (CompVis) layout, for the tests
and the bundled demo model.

Its module names and block order are SD's (``encoder.down.0.block.0``,
``decoder.mid.attn_1``, ``post_quant_conv``, ...), so the temporal decoder
(temporal_decoder.py) walks it exactly as it walks the SD VAE that ComfyUI loads.
"""

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .unet import Upsample, group_norm


COMFY_VAE_GROUPS = 32  # ComfyUI's VAE (comfy.ldm.modules.diffusionmodules.model) hard-codes GroupNorm(32)


@dataclass(frozen=True)
class AutoencoderConfig:
    ch: int = 32
    ch_mult: tuple = (1, 2, 2, 4)  # four levels: 8x downsampling, as SD's KL-f8
    num_res_blocks: int = 1
    z_channels: int = 4
    in_channels: int = 3
    norm_groups: int = 32

    @property
    def downsampling(self):
        """Pixels per latent pixel along each side (8 for SD's KL-f8)."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self):
        return asdict(self)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of one frame."""

    def __init__(self, channels, groups):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        height, width = x.shape[-2:]
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        h = rearrange(F.scaled_dot_product_attention(q, k, v), "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # SD's asymmetric padding


def _middle(channels, groups):
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, groups)
    mid.attn_1 = AttnBlock(channels, groups)
    mid.block_2 = ResnetBlock(channels, channels, groups)
    return mid


class Encoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        groups, ch = config.norm_groups, config.ch
        self.num_resolutions = len(config.ch_mult)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(config.ch_mult):
            down = nn.Module()
            down.block = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                down.block.append(ResnetBlock(block_in, ch * mult, groups))
                block_in = ch * mult
            down.attn = nn.ModuleList()
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
            self.down.append(down)
        self.mid = _middle(block_in, groups)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, 2 * config.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for block in down.block:
                h = block(h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        groups, ch = config.norm_groups, config.ch
        self.num_resolutions = len(config.ch_mult)
        self.tanh_out = False
        block_in = ch * config.ch_mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = _middle(block_in, groups)
        self.up = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            up = nn.Module()
            up.block = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, ch * config.ch_mult[level], groups))
                block_in = ch * config.ch_mult[level]
            up.attn = nn.ModuleList()
            if level != 0:
                up.upsample = Upsample(block_in)
            self.up.insert(0, up)
        self.norm_out = group_norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, 3, padding=1)

    def forward(self, z):
        from .temporal_decoder import decode_frames

        return decode_frames(self, z)


def posterior(autoencoder, x):
    """The encoder's Gaussian posterior, (mean, log-variance), of images in [-1, 1]:
    for this module or any KL autoencoder in SD's layout (ComfyUI's too)."""
    mean, logvar = autoencoder.quant_conv(autoencoder.encoder(x)).chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def scaled_encoder(autoencoder, scale):
    """``encode_frames(pixels)``: the posterior mean of images in [-1, 1], times
    ``scale``, as a UNet sees latents (the trainers' frozen encoders)."""

    def encode_frames(pixels):
        return posterior(autoencoder, pixels)[0] * scale

    return encode_frames


class AutoencoderKL(nn.Module):
    """Images in [-1, 1] <-> latents; ``encode`` returns the posterior's mean and log-variance."""

    def __init__(self, config=AutoencoderConfig()):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    def encode(self, x):
        return posterior(self, x)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))
