"""AnimateDiff's motion modules as a temporal-layer family (Guo et al. 2023).

The public temporal layers closest to Video LDM's recipe: a frozen SD 1.5 UNet
with temporal transformers after its spatial layers, trained on video. One
module sits after the last ResBlock or SpatialTransformer of every UNet block
(before its Down/Upsample; v2 files also have one in the middle block, after
its transformer). For the features ``z`` of T frames it computes, at every
spatial position,

    x  = proj_in(GroupNorm(z))                       tokens (b h w) t c
    x  = x + Attn_i(LayerNorm_i(x) + pe_i[:t])       i = 0, 1: self-attention across frames
    x  = x + FF(LayerNorm(x))                        GEGLU feed-forward
    z' = z + proj_out(x)

with ``pe`` the sinusoidal code of the frame positions stored in the file (its
length, 24 or 32, is the most frames a module can take). There is no alpha:
the residual is the merge, proj_out starts at zero, and the patcher's scale s
gives ``z + s (z' - z)``. v1 files were trained with the image UNet's ResBlock
GroupNorms normalising whole clips (``use_inflated_groupnorm: false``), which
``frame_joint_norms`` reproduces (unet_layout.join_frames_in_norms).

With ``context_latent_channels``, a module also takes Video LDM's masked
context c_S through the learned downsampling of temporal.context_projection,
added to its tokens: the context branch that the trainer fits on top of a
frozen motion module, so that it can predict and interpolate.

weights.py reads AnimateDiff's own files into these modules.
"""

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from .temporal import Attention, LayerConfig, TemporalLayer, context_projection, encode_context, sinusoidal_embedding
from .unet import GEGLU

@dataclass(frozen=True)
class MotionModuleConfig(LayerConfig):
    """Hyper-parameters of an AnimateDiff motion module; with a layout (placement
    "motion_modules" or "motion_modules_mid") they fix every weight's shape."""

    heads: int = 8
    transformer_blocks: int = 1
    attention_blocks: int = 2
    position_code_frames: int = 32  # length of the sinusoidal frame code: the most frames per call
    ff_mult: int = 4
    norm_groups: int = 32
    betas: str = "linear"  # AnimateDiff trained with betas evenly spaced from 0.00085 to 0.012, not SD's
    version: str = ""  # "v1", "v2" or "v3" where read from an AnimateDiff file, for messages

    def build(self, site, ops=nn):
        if site.kind != "motion":
            raise ValueError(f"motion modules go at motion sites (placement motion_modules), not at a {site.kind!r} site ({site.path})")
        return MotionModule(site.channels, self, ops)


def position_code(frames, dim):
    """AnimateDiff's code of frame positions, ``(frames, dim)``: the transformer's
    sin/cos pairs, interleaved (sin at even channels, cos at odd)."""
    cos, sin = sinusoidal_embedding(torch.arange(frames), dim).chunk(2, dim=-1)
    return rearrange(torch.stack([sin, cos], dim=-1), "t half pair -> t (half pair)")


class FrameAttention(Attention):
    """Self-attention across the frames at one position, with each frame's
    position code added to its (normalised) token first."""

    def __init__(self, dim, heads, code_frames, ops=nn):
        super().__init__(dim, heads, dim // heads, ops=ops)
        self.register_buffer("pe", position_code(code_frames, dim)[None])

    def forward(self, x):
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(f"{frames} frames in one call, but this motion module's position code covers {self.pe.shape[1]}: sample at most that many")
        return super().forward(x + self.pe[:, :frames].to(x))


class MotionTransformerBlock(nn.Module):
    def __init__(self, dim, config, ops=nn):
        super().__init__()
        self.attention_blocks = nn.ModuleList(FrameAttention(dim, config.heads, config.position_code_frames, ops) for _ in range(config.attention_blocks))
        self.norms = nn.ModuleList(ops.LayerNorm(dim) for _ in range(config.attention_blocks))
        inner = dim * config.ff_mult
        self.ff = nn.Sequential(GEGLU(dim, inner, ops), ops.Linear(inner, dim))
        self.ff_norm = ops.LayerNorm(dim)

    def forward(self, x):
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = x + attention(norm(x))
        return x + self.ff(self.ff_norm(x))


class MotionModule(TemporalLayer):
    """One motion module: a temporal transformer over the frames at every
    position, residual on the spatial features it follows. Everything between
    proj_in and proj_out acts per token or along t, so the tokens stay grouped
    by position, ``(b h w) t c``, from one copy in to one copy out."""

    last_projection = "proj_out"

    def __init__(self, channels, config, ops=nn):
        super().__init__()
        self.norm = ops.GroupNorm(config.norm_groups, channels, eps=1e-6)
        self.proj_in = ops.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(MotionTransformerBlock(channels, config, ops) for _ in range(config.transformer_blocks))
        self.proj_out = ops.Linear(channels, channels)
        if config.context_latent_channels:
            self.context_proj = context_projection(config, channels, ops)  # added to the tokens after proj_in

    def compute(self, z, emb, context, frames, masked_context=None):
        height, width = z.shape[-2:]
        x = self.proj_in(rearrange(self.norm(z), "(b t) c h w -> (b h w) t c", t=frames))
        if masked_context is not None:
            x = x + rearrange(encode_context(self, masked_context, z), "(b t) c h w -> (b h w) t c", t=frames)
        for block in self.transformer_blocks:
            x = block(x)
        return z + rearrange(self.proj_out(x), "(b h w) t c -> (b t) c h w", h=height, w=width)
