"""Video LDM's temporal layers (Blattmann et al. 2023, Fig. 4).

A latent video travels through the UNet as frames in the batch axis,
``(b t) c h w``. Spatial layers see ``b*t`` independent images; each temporal
layer folds the frames back into videos, mixes information across ``t``, and
unfolds again. Its output is merged with the spatial output it follows,

    z = alpha * z_spatial + (1 - alpha) * z_temporal,   alpha = sigmoid(mix_factor),

and the last projection of every temporal branch starts at zero, so a freshly
built video model computes exactly what the image model computes.

``ops`` is any namespace with ``Linear``, ``Conv2d``, ``GroupNorm`` and
``LayerNorm`` (``torch.nn`` by default; ComfyUI passes its casting ops so that
low-VRAM loading works). Weights are initialised here, never by the ops.
"""

import contextvars
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint


def to_video(z, frames):
    """Frames to videos, with the pixels of a frame on one axis: a (3, 1, 1)
    convolution over (t, h, w) is then a (3, 1) convolution over (t, hw), which
    runs on PyTorch's faster 2D kernels."""
    return rearrange(z, "(b t) c h w -> b c t (h w)", t=frames)


def to_frames(video, width):
    return rearrange(video, "b c t (h w) -> (b t) c h w", w=width)


_FRAMES = contextvars.ContextVar("vldm_frames", default=None)


@contextmanager
def frames_in_call(frames):
    """Within this block, a UNet call carries videos of ``frames`` frames: for the
    parts of the image UNet that are not called with the frame count (GroupNorms
    normalising whole clips, unet_layout.join_frames_in_norms)."""
    token = _FRAMES.set(frames)
    try:
        yield
    finally:
        _FRAMES.reset(token)


def frames_of_call():
    frames = _FRAMES.get()
    if frames is None:
        raise RuntimeError("a frame-joint GroupNorm ran outside a video call: call the UNet inside temporal.frames_in_call(frames)")
    return frames


def sinusoidal_embedding(positions, dim, max_period=10000.0):
    """The transformer's sin/cos code of integer positions, ``(n,) -> (n, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@dataclass(frozen=True)
class LayerConfig:
    """What every temporal-layer family shares: the masked-context branch c_S of
    the prediction / interpolation models, and how the image UNet's own
    normalisation sees the frames."""

    context_latent_channels: int = 0  # > 0: the layers take masked context frames c_S (prediction / interpolation models)
    interpolation_stage: bool = False  # c_S carries a stage channel: 0 for T -> 4T, 1 for 4T -> 16T, one model for both
    frame_joint_norms: bool = False  # the UNet's ResBlock GroupNorms take statistics over all frames of a clip (AnimateDiff v1 trained so)
    betas: str = ""  # the noise schedule the layers were trained with (sampling.alphas_cumprod): "" is the image model's own

    @property
    def context_channels(self):
        return self.context_latent_channels + 1 + int(self.interpolation_stage)

    def stage_flag(self, stage=0):
        """What c_S's stage channel holds for interpolation pass ``stage``, or None
        for layers without one. Prediction runs at the key-frame rate: stage 0."""
        return stage if self.interpolation_stage else None

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown temporal config keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


@dataclass(frozen=True)
class TemporalConfig(LayerConfig):
    """Hyper-parameters that, with a UNet layout, fix every Video LDM temporal weight's shape."""

    alpha_init: float = 0.5  # merge weight of the spatial path before training; < 1 so the temporal path gets gradients
    text_cross_attention: bool = False  # the paper attends across frames only; SVD's successor code also attends to the prompt
    ff_mult: int = 4
    norm_groups: int = 32

    def build(self, site, ops=nn):
        """The temporal layer that follows ``site``."""
        if site.kind == "res":
            return TemporalResBlock(site.channels, site.emb_channels, self, ops)
        if site.kind == "attention":
            return TemporalAttentionBlock(site.channels, site.heads, site.head_dim, site.context_dim, self, ops)
        raise ValueError(f"Video LDM temporal layers go after ResBlocks and SpatialTransformers, not at a {site.kind!r} site ({site.path})")


class AlphaMerge(nn.Module):
    """The learned per-layer blend of the spatial output and the temporal output."""

    def __init__(self, alpha_init):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([math.log(alpha_init / (1.0 - alpha_init))]))

    @property
    def alpha(self):
        return torch.sigmoid(self.mix_factor)

    def forward(self, z_spatial, temporal_residual):
        """Every temporal branch is residual, z_t = z_s + r, so
        a*z_s + (1-a)*z_t = z_s + (1-a)*r: one pass over memory, and exactly z_s
        when r is zero (a fresh layer) or a is one."""
        alpha = torch.sigmoid(self.mix_factor.to(device=z_spatial.device, dtype=torch.float32)).to(z_spatial.dtype)
        return torch.addcmul(z_spatial, temporal_residual, 1 - alpha)


class TemporalLayer(nn.Module):
    """Base of the layers inserted after spatial blocks; a UNet calls them as
    ``layer(z, emb, context, frames, masked_context)``, the last being
    ``c_S = (m * z, m)`` at latent resolution or None (see masking.py).
    With ``gradient_checkpointing`` set, training recomputes a layer's
    activations in the backward pass instead of keeping them."""

    gradient_checkpointing = False
    last_projection = ""  # the layer's name of the projection that ends its branch

    def forward(self, z, emb, context, frames, masked_context=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.compute, z, emb, context, frames, masked_context, use_reentrant=False)
        return self.compute(z, emb, context, frames, masked_context)

    def compute(self, z, emb, context, frames, masked_context):
        raise NotImplementedError

    def zero_init_last(self):
        """Zero the branch's last projection (and c_S's, where there is one): a fresh layer changes nothing."""
        for last in (getattr(self, self.last_projection), getattr(self, "context_proj", None)):
            if last is not None:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)


def context_projection(config, channels, ops=nn):
    """The learned downsampling of c_S (Fig. 4), to a layer of ``channels``: after
    c_S is resized to the layer's resolution, a convolution (zero-initialised
    with the branch's last projection, so a fresh context branch changes nothing)."""
    return ops.Conv2d(config.context_channels, channels, 3, padding=1)


def encode_context(layer, masked_context, z):
    """c_S resized to the resolution of ``z`` ``(b t) c h w`` and projected by ``layer.context_proj``."""
    if not hasattr(layer, "context_proj"):
        raise ValueError("these temporal layers were not trained with context frames (prediction / interpolation); use layers trained for that mode")
    if masked_context.shape[1] != layer.context_proj.in_channels:
        raise ValueError(
            f"context frames have {masked_context.shape[1]} channels, these layers take {layer.context_proj.in_channels} "
            "(latent channels, the mask, and the interpolation stage where the layers were trained with one)"
        )
    resized = F.interpolate(masked_context.to(z.dtype), size=z.shape[-2:], mode="area")
    return layer.context_proj(resized)


class TemporalResBlock(TemporalLayer):
    """A residual block of (3, 1, 1) convolutions over time, after a spatial ResBlock
    (held as (3, 1) convolutions over (t, hw): the same weights and arithmetic).
    With ``emb_channels`` 0 it takes no timestep embedding (the temporal decoder's)."""

    last_projection = "conv2"

    def __init__(self, channels, emb_channels, config, ops=nn):
        super().__init__()
        self.norm1 = ops.GroupNorm(config.norm_groups, channels)
        self.conv1 = ops.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        if emb_channels:
            self.emb_proj = ops.Linear(emb_channels, channels)
        self.norm2 = ops.GroupNorm(config.norm_groups, channels)
        self.conv2 = ops.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.merge = AlphaMerge(config.alpha_init)
        if config.context_latent_channels:
            self.context_proj = context_projection(config, channels, ops)  # added to the temporal conv's input

    def compute(self, z, emb, context, frames, masked_context=None):
        h = F.silu(self.norm1(to_video(z, frames)))
        if masked_context is not None:
            h = h + to_video(encode_context(self, masked_context, z), frames)
        h = self.conv1(h)
        if emb is not None:
            h = h + rearrange(self.emb_proj(F.silu(emb)), "(b t) c -> b c t 1", t=frames)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.merge(z, to_frames(h, z.shape[-1]))


class Attention(nn.Module):
    def __init__(self, dim, heads, head_dim, context_dim=None, ops=nn):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = ops.Linear(dim, inner, bias=False)
        self.to_k = ops.Linear(context_dim or dim, inner, bias=False)
        self.to_v = ops.Linear(context_dim or dim, inner, bias=False)
        self.to_out = ops.Linear(inner, dim)

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (rearrange(p, "b n (h d) -> b h n d", h=self.heads) for p in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class TemporalAttentionBlock(TemporalLayer):
    """Self-attention across the frames at every spatial position, after a spatial
    transformer; frames know their order through a sinusoidal position code."""

    last_projection = "proj_out"

    def __init__(self, channels, heads, head_dim, context_dim, config, ops=nn):
        super().__init__()
        inner = heads * head_dim
        self.norm = ops.GroupNorm(config.norm_groups, channels)
        self.proj_in = ops.Linear(channels, inner)
        self.frame_pos = nn.Sequential(ops.Linear(inner, inner), nn.SiLU(), ops.Linear(inner, inner))
        self.norm_self = ops.LayerNorm(inner)
        self.self_attn = Attention(inner, heads, head_dim, ops=ops)
        if config.text_cross_attention:
            self.norm_cross = ops.LayerNorm(inner)
            self.cross_attn = Attention(inner, heads, head_dim, context_dim=context_dim, ops=ops)
        self.norm_ff = ops.LayerNorm(inner)
        self.ff = nn.Sequential(ops.Linear(inner, inner * config.ff_mult), nn.GELU(), ops.Linear(inner * config.ff_mult, inner))
        self.proj_out = ops.Linear(inner, channels)
        self.merge = AlphaMerge(config.alpha_init)

    def frame_code(self, frames, like):
        """The learned code of each frame's position, ``(t, inner)``."""
        positions = torch.arange(frames, device=like.device)
        return self.frame_pos(sinusoidal_embedding(positions, like.shape[-1]).to(like.dtype))

    def attend_across_frames(self, x, frames):
        """Self-attention along t at each position of frame-major tokens ``(b t) n c``.
        One copy regroups the tokens by position; q, k and v then read contiguous rows."""
        by_position = rearrange(x, "(b t) n c -> (b n) t c", t=frames).contiguous()
        return rearrange(self.self_attn(by_position), "(b n) t c -> (b t) n c", n=x.shape[1])

    def compute(self, z, emb, context, frames, masked_context=None):
        height, width = z.shape[-2:]
        # Tokens stay frame-major, (b t) (h w) c, as in the spatial transformer:
        # cross-attention, feed-forward and projections run on contiguous rows,
        # and only the self-attention regroups them by position.
        x = self.proj_in(rearrange(self.norm(z), "bt c h w -> bt (h w) c"))
        x = x + repeat(self.frame_code(frames, x), "t c -> (b t) 1 c", b=x.shape[0] // frames)
        x = x + self.attend_across_frames(self.norm_self(x), frames)
        if hasattr(self, "cross_attn"):
            x = x + self.cross_attn(self.norm_cross(x), context)
        x = x + self.ff(self.norm_ff(x))
        return self.merge(z, rearrange(self.proj_out(x), "bt (h w) c -> bt c h w", h=height, w=width))


def init_weights(module):
    """PyTorch's default init for every weight (casting ops skip it), then zeros
    in the last projection of each temporal branch."""
    for m in module.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                nn.init.uniform_(m.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
    for m in module.modules():
        if isinstance(m, TemporalLayer):
            m.zero_init_last()


class TemporalLayers(nn.Module):
    """All temporal layers of one UNet, in one module: what a weight file holds
    and what ComfyUI loads and offloads beside the UNet."""

    def __init__(self, layout, config=TemporalConfig(), ops=nn, train_frames=None, modes=("keyframe",)):
        super().__init__()
        self.layout = layout
        self.config = config
        self.train_frames = train_frames  # None: not trained yet, any length goes
        self.modes = tuple(modes)
        self.layers = nn.ModuleDict({site.key: config.build(site, ops) for site in layout.sites})
        init_weights(self)

    def by_site(self):
        """Spatial-layer path -> the temporal layer that follows it."""
        return {site.path: self.layers[site.key] for site in self.layout.sites}

    def alphas(self):
        return {site.path: self.layers[site.key].merge.alpha.item() for site in self.layout.sites}

    def set_gradient_checkpointing(self, enabled):
        """Recompute every layer's activations in the backward pass (training) or keep them."""
        for layer in self.layers.values():
            layer.gradient_checkpointing = enabled


def with_context_branch(layers, context_latent_channels, interpolation_stage=False):
    """``layers`` with a fresh context branch for c_S (zero, so the output is
    unchanged until it is trained), in new modules that take their weights."""
    config = replace(layers.config, context_latent_channels=context_latent_channels, interpolation_stage=interpolation_stage)
    grown = TemporalLayers(layers.layout, config, train_frames=layers.train_frames, modes=layers.modes)
    missing, unexpected = grown.load_state_dict(layers.state_dict(), strict=False)
    assert not unexpected and all(".context_proj." in key for key in missing), (missing, unexpected)
    return grown.to(next(layers.parameters()).device)


def context_branch(layers):
    """The context projections of ``layers``, as one module: what trains when the rest stays frozen."""
    return nn.ModuleDict({key: layer.context_proj for key, layer in layers.layers.items()})
