"""An independent reference implementation of AnimateDiff motion modules, for the tests.

Written from AnimateDiff's published code (guoyww/AnimateDiff:
``animatediff/models/motion_module.py``, ``unet_blocks.py``, ``resnet.py``,
``unet.py`` and ``configs/inference/inference-v{1,2,3}.yaml``), not from this
project's implementation, so the tests can check that implementation against it.

* ``published_state_dict`` makes a random motion-module state dict in exactly the
  key layout of AnimateDiff's published files (mm_sd_v14/mm_sd_v15 = "v1",
  mm_sd_v15_v2 = "v2", v3_sd15_mm = "v3") for a CompVis-layout UNet.
* ``reference_forward_with`` / ``reference_forward`` run a CompVis-layout UNet
  (this project's ``vldm_core.unet.UNetModel`` or ComfyUI's) with those modules
  applied through forward hooks, which are removed afterwards.

What the published code does, as implemented here:

* A motion module on ``(b*t, c, h, w)``: GroupNorm(32, eps 1e-6) per frame, tokens
  ``(b*t, h*w, c)``, ``proj_in``, transformer blocks, ``proj_out``, back to
  ``(b*t, c, h, w)``, plus the module input.
* A transformer block: two temporal self-attentions, each
  ``h = attn(norm_i(h)) + h`` where ``attn`` regroups to ``(b*h*w, t, c)``, adds the
  sinusoidal code ``pe[:, :t]`` to its (normalised) input, and attends over the
  frames with 8 heads of ``c/8`` dims (no q/k/v bias); then
  ``h = ff(ff_norm(h)) + h`` with a GEGLU feed-forward (exact GELU, 4c inner).
* Sites: after the last ResBlock/SpatialTransformer of each input and output
  block that has one (before any Upsample), and for v2 also after the middle
  block's SpatialTransformer.
* v1 ran the UNet with ``use_inflated_groupnorm: false``: the ResBlocks'
  GroupNorms and the output GroupNorm take their statistics over all frames of
  each video (``nn.GroupNorm`` on a 5-D ``(b, c, f, h, w)`` tensor); v2 and v3 keep
  every GroupNorm per frame.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

VERSIONS = ("v1", "v2", "v3")
PE_LENGTH = {"v1": 24, "v2": 32, "v3": 32}
MID_BLOCK = {"v1": False, "v2": True, "v3": False}
HEADS = 8
NORM_GROUPS = 32
MM_NORM_EPS = 1e-6  # the motion module's GroupNorm
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default

_SITE_CLASSES = ("ResBlock", "SpatialTransformer")


def _check_version(version):
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, not {version!r}")


def _class_name(module):
    return type(module).__name__


def _channels(module):
    if _class_name(module) == "ResBlock":
        return module.out_channels
    return module.in_channels


def _block_site(block):
    """The last ResBlock or SpatialTransformer of a block, or None."""
    site = None
    for child in block:
        if _class_name(child) in _SITE_CLASSES:
            site = child
    return site


def motion_module_sites(unet, version):
    """``[(name, module, channels)]``: where AnimateDiff's modules go in a CompVis-layout
    UNet, with the names they have in the published files; ``module`` is the layer
    whose output the motion module takes."""
    _check_version(version)
    sites = list(_level_sites(unet.input_blocks, "down_blocks", "Downsample"))
    if MID_BLOCK[version]:
        transformers = [child for child in unet.middle_block if _class_name(child) == "SpatialTransformer"]
        if len(transformers) != 1:
            raise ValueError(f"expected one SpatialTransformer in the middle block, found {len(transformers)}")
        sites.append(("mid_block.motion_modules.0", transformers[0], transformers[0].in_channels))
    return sites + list(_level_sites(unet.output_blocks, "up_blocks", "Upsample"))


def _level_sites(blocks, prefix, resampler):
    """The sites of the down (or up) blocks, numbered per resolution level, a level ending at its ``resampler``."""
    level, j = 0, 0
    for block in blocks:
        site = _block_site(block)
        if site is not None:
            yield f"{prefix}.{level}.motion_modules.{j}", site, _channels(site)
            j += 1
        if any(_class_name(child) == resampler for child in block):
            level, j = level + 1, 0


def sinusoidal_code(length, channels):
    """AnimateDiff's PositionalEncoding buffer ``(1, length, channels)``: sin at even
    channels, cos at odd ones, frequencies ``10000^(-2i/channels)`` (float32, as published)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    code = torch.zeros(1, length, channels)
    code[0, :, 0::2] = torch.sin(position * frequency)
    code[0, :, 1::2] = torch.cos(position * frequency)
    return code


def _module_shapes(c, transformer_blocks=1):
    """``[(key suffix, shape, kind)]`` of one motion module, kind in weight/bias/norm/pe."""
    inner = 4 * c
    shapes = [
        ("norm.weight", (c,), "norm"), ("norm.bias", (c,), "bias"),
        ("proj_in.weight", (c, c), "weight"), ("proj_in.bias", (c,), "bias"),
    ]
    for k in range(transformer_blocks):
        block = f"transformer_blocks.{k}"
        for i in range(2):
            attention = f"{block}.attention_blocks.{i}"
            shapes += [
                (f"{attention}.to_q.weight", (c, c), "weight"),
                (f"{attention}.to_k.weight", (c, c), "weight"),
                (f"{attention}.to_v.weight", (c, c), "weight"),
                (f"{attention}.to_out.0.weight", (c, c), "weight"),
                (f"{attention}.to_out.0.bias", (c,), "bias"),
                (f"{attention}.pos_encoder.pe", None, "pe"),
                (f"{block}.norms.{i}.weight", (c,), "norm"),
                (f"{block}.norms.{i}.bias", (c,), "bias"),
            ]
        shapes += [
            (f"{block}.ff.net.0.proj.weight", (2 * inner, c), "weight"),
            (f"{block}.ff.net.0.proj.bias", (2 * inner,), "bias"),
            (f"{block}.ff.net.2.weight", (c, inner), "weight"),
            (f"{block}.ff.net.2.bias", (c,), "bias"),
            (f"{block}.ff_norm.weight", (c,), "norm"),
            (f"{block}.ff_norm.bias", (c,), "bias"),
        ]
    shapes += [("proj_out.weight", (c, c), "weight"), ("proj_out.bias", (c,), "bias")]
    return shapes


def published_state_dict(unet, version, seed=0, std=0.05):
    """A random motion-module state dict for ``unet`` in AnimateDiff's published key
    layout for ``version`` ("v1", "v2", "v3"): one transformer block per module,
    weights and biases ``std * N(0, 1)``, norm weights ``1 + std * N(0, 1)``,
    ``proj_out`` not zero (so every module acts), ``pos_encoder.pe`` the real
    sinusoidal code (24 positions for v1, 32 for v2/v3). float32, on the CPU."""
    _check_version(version)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, _, c in motion_module_sites(unet, version):
        prefix = f"{name}.temporal_transformer."
        for suffix, shape, kind in _module_shapes(c):
            if kind == "pe":
                value = sinusoidal_code(PE_LENGTH[version], c)
            else:
                value = torch.randn(shape, generator=generator) * std
                if kind == "norm":
                    value = value + 1.0
            state[prefix + suffix] = value
    return state


# --- the equations ---------------------------------------------------------------------------


def _temporal_attention(p, prefix, x, frames):
    """One VersatileAttention ("Temporal_Self") on normalised tokens ``(b*t, s, c)``."""
    s = x.shape[1]
    x = rearrange(x, "(b t) s c -> (b s) t c", t=frames)
    pe = p[prefix + "pos_encoder.pe"]
    if frames > pe.shape[1]:
        raise ValueError(f"{frames} frames is more than the {pe.shape[1]} positions of {prefix}pos_encoder.pe")
    x = x + pe[:, :frames]
    q = rearrange(F.linear(x, p[prefix + "to_q.weight"]), "n t (k d) -> n k t d", k=HEADS)
    k = rearrange(F.linear(x, p[prefix + "to_k.weight"]), "n t (k d) -> n k t d", k=HEADS)
    v = rearrange(F.linear(x, p[prefix + "to_v.weight"]), "n t (k d) -> n k t d", k=HEADS)
    weights = torch.softmax(torch.einsum("nktd,nkud->nktu", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    out = rearrange(torch.einsum("nktu,nkud->nktd", weights, v), "n k t d -> n t (k d)")
    out = F.linear(out, p[prefix + "to_out.0.weight"], p[prefix + "to_out.0.bias"])
    return rearrange(out, "(b s) t c -> (b t) s c", s=s)


def _layer_norm(p, prefix, x):
    return F.layer_norm(x, x.shape[-1:], p[prefix + "weight"], p[prefix + "bias"], LAYER_NORM_EPS)


def _transformer_block(p, prefix, h, frames):
    for i in range(2):
        normed = _layer_norm(p, f"{prefix}norms.{i}.", h)
        h = _temporal_attention(p, f"{prefix}attention_blocks.{i}.", normed, frames) + h
    hidden = F.linear(_layer_norm(p, f"{prefix}ff_norm.", h), p[prefix + "ff.net.0.proj.weight"], p[prefix + "ff.net.0.proj.bias"])
    value, gate = hidden.chunk(2, dim=-1)
    return F.linear(value * F.gelu(gate), p[prefix + "ff.net.2.weight"], p[prefix + "ff.net.2.bias"]) + h


def motion_module(p, x, frames):
    """One AnimateDiff motion module (VanillaTemporalModule) with parameters ``p``
    (keys after ``temporal_transformer.``) on ``x`` of shape ``(b*t, c, h, w)``."""
    if x.shape[0] % frames:
        raise ValueError(f"a batch of {x.shape[0]} frames is not whole videos of {frames} frames")
    height, width = x.shape[-2:]
    h = F.group_norm(x, NORM_GROUPS, p["norm.weight"], p["norm.bias"], MM_NORM_EPS)
    h = F.linear(rearrange(h, "n c y x -> n (y x) c"), p["proj_in.weight"], p["proj_in.bias"])
    blocks = sorted({int(key.split(".")[1]) for key in p if key.startswith("transformer_blocks.")})
    for k in blocks:
        h = _transformer_block(p, f"transformer_blocks.{k}.", h, frames)
    h = F.linear(h, p["proj_out.weight"], p["proj_out.bias"])
    # contiguous, so the sum keeps x's layout (a zero module then returns x bit for bit)
    return x + rearrange(h, "n (y x) c -> n c y x", y=height, x=width).contiguous()


def video_group_norm(norm, x, frames):
    """``norm`` (an nn.GroupNorm) with statistics over all frames of each video, as
    nn.GroupNorm on AnimateDiff's 5-D ``(b, c, f, h, w)`` tensors (v1's UNet)."""
    if x.shape[0] % frames:
        raise ValueError(f"a batch of {x.shape[0]} frames is not whole videos of {frames} frames")
    video = rearrange(x, "(b t) c y x -> b c t y x", t=frames)
    weight = None if norm.weight is None else norm.weight.to(x)
    bias = None if norm.bias is None else norm.bias.to(x)
    out = F.group_norm(video, norm.num_groups, weight, bias, norm.eps)
    return rearrange(out, "b c t y x -> (b t) c y x")


# --- attaching to a UNet -----------------------------------------------------------------------


def _module_params(state, name, like):
    prefix = f"{name}.temporal_transformer."
    params = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not params:
        raise KeyError(f"the state dict has no motion module {name}")
    return {key: value.to(device=like.device, dtype=like.dtype) for key, value in params.items()}


def _video_group_norms(unet):
    """v1's frame-spanning GroupNorms: each ResBlock's in_layers[0] and out_layers[0], and out[0]."""
    norms = []
    for module in unet.modules():
        if _class_name(module) == "ResBlock":
            norms += [module.in_layers[0], module.out_layers[0]]
    norms.append(unet.out[0])
    for norm in norms:
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"expected a GroupNorm, found {type(norm).__name__}")
    return norms


def reference_forward_with(unet, state, version, frames, call):
    """``call()`` (which runs ``unet`` on ``(b*t, c, h, w)`` frames, frames first within
    each video) with AnimateDiff's motion modules of ``state`` applied, and for v1 the
    ResBlock and output GroupNorms spanning the frames; returns what ``call()`` returns.
    Works through forward hooks, all removed before returning."""
    _check_version(version)
    sites = motion_module_sites(unet, version)
    expected = {name for name, _, _ in sites}
    present = {key.split(".temporal_transformer.")[0] for key in state}
    if present != expected:
        raise ValueError(f"the state dict's modules do not fit this UNet and {version}: "
                         f"missing {sorted(expected - present)}, extra {sorted(present - expected)}")
    handles = []

    def site_hook(name):
        def hook(module, args, output):
            return motion_module(_module_params(state, name, output), output, frames)
        return hook

    def norm_hook(module, args, output):
        return video_group_norm(module, args[0], frames).to(output.dtype)

    try:
        for name, module, _ in sites:
            handles.append(module.register_forward_hook(site_hook(name)))
        if version == "v1":
            for norm in _video_group_norms(unet):
                handles.append(norm.register_forward_hook(norm_hook))
        return call()
    finally:
        for handle in handles:
            handle.remove()


def reference_forward(unet, state, version, x, timesteps, context, frames):
    """This project's UNet ``unet(x, timesteps, context, frames)`` with the motion modules
    of ``state`` applied (see ``reference_forward_with``)."""
    return reference_forward_with(unet, state, version, frames, lambda: unet(x, timesteps, context, frames))
