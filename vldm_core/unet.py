"""A small Stable-Diffusion-style UNet in the CompVis layout.

Same module names and attributes as Stable Diffusion's UNet as ComfyUI loads it
(``input_blocks`` / ``middle_block`` / ``output_blocks`` of ResBlock,
SpatialTransformer, Downsample, Upsample), so temporal layers find the same
insertion sites in both. It is the image model of the bundled demo and of the
tests, which need a UNet without ComfyUI.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .temporal import Attention, TemporalLayer, frames_in_call, sinusoidal_embedding


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 32
    channel_mult: tuple = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple = (0, 1)  # indices into channel_mult with a SpatialTransformer
    head_dim: int = 16
    context_dim: int = 32
    norm_groups: int = 32
    num_classes: int = 0  # > 0: a class label y joins the timestep embedding (the x4 upscaler's noise level)

    def to_dict(self):
        return asdict(self)


def group_norm(channels, groups):
    """SD's normalisation: GroupNorm with eps 1e-6."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, channels, emb_channels, out_channels, groups):
        super().__init__()
        self.channels, self.emb_channels, self.out_channels = channels, emb_channels, out_channels
        self.in_layers = nn.Sequential(group_norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels, groups), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(Attention):
    """Attention with the names SD's transformer blocks expose (heads, dim_head)."""

    def __init__(self, dim, heads, dim_head, context_dim=None):
        super().__init__(dim, heads, dim_head, context_dim)
        self.dim_head = dim_head


class GEGLU(nn.Module):
    """SD's gated feed-forward input: GELU(gate) * value."""

    def __init__(self, dim, inner, ops=nn):
        super().__init__()
        self.proj = ops.Linear(dim, inner * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, context_dim):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, heads, head_dim)
        self.attn2 = CrossAttention(dim, heads, head_dim, context_dim)
        self.ff = nn.Sequential(GEGLU(dim, dim * 4), nn.Linear(dim * 4, dim))

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels, head_dim, context_dim, groups):
        super().__init__()
        self.in_channels = channels
        self.norm = group_norm(channels, groups)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, channels // head_dim, head_dim, context_dim)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x, context):
        h, w = x.shape[-2:]
        tokens = self.proj_in(rearrange(self.norm(x), "b c h w -> b (h w) c"))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + rearrange(self.proj_out(tokens), "b (h w) c -> b c h w", h=h, w=w)


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Calls each layer with what it needs; temporal layers also get the frame count."""

    def forward(self, x, emb, context, frames, masked_context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalLayer):
                x = layer(x, emb, context, frames, masked_context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        ch, groups = config.model_channels, config.norm_groups
        emb_ch = ch * 4
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        if config.num_classes:
            self.label_emb = nn.Embedding(config.num_classes, emb_ch)

        def level_block(level, in_ch, out_ch):
            layers = [ResBlock(in_ch, emb_ch, out_ch, groups)]
            if level in config.attention_levels:
                layers.append(SpatialTransformer(out_ch, config.head_dim, config.context_dim, groups))
            return layers

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.input_blocks.append(TimestepEmbedSequential(*level_block(level, ch, mult * config.model_channels)))
                ch = mult * config.model_channels
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_ch, ch, groups), SpatialTransformer(ch, config.head_dim, config.context_dim, groups), ResBlock(ch, emb_ch, ch, groups)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = level_block(level, ch + skip_channels.pop(), mult * config.model_channels)
                ch = mult * config.model_channels
                if level != 0 and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(group_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def forward(self, x, timesteps, context, frames=None, masked_context=None, y=None):
        """``x``: ``(b t) c h w`` frames; ``frames``: t, default one video of all of x;
        ``masked_context``: c_S for temporal layers trained with context frames;
        ``y``: class labels per frame where the config has classes."""
        frames = frames or x.shape[0]
        emb = self.time_embed(sinusoidal_embedding(timesteps, self.config.model_channels).to(x.dtype))
        if self.config.num_classes:
            if y is None:
                raise ValueError("this UNet takes a class label y (e.g. the upscaler's noise level) with every frame")
            emb = emb + self.label_emb(y)
        skips, h = [], x
        with frames_in_call(frames):
            for block in self.input_blocks:
                h = block(h, emb, context, frames, masked_context)
                skips.append(h)
            h = self.middle_block(h, emb, context, frames, masked_context)
            for block in self.output_blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context, frames, masked_context)
            return self.out(h)
