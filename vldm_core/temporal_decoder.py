"""The temporal decoder (paper, Sec. 3.1.2): the image autoencoder's decoder
with a temporal residual block after every ResnetBlock, fine-tuned on video so
that frames decoded from independently denoised latents do not flicker.

The decoder is walked here block by block in SD's (CompVis) order, calling the
image decoder's own modules and, after each ResnetBlock, the temporal block of
that site. Nothing is inserted into the decoder: the VAE a user passes in is
never changed, and the encoder is never touched. The temporal blocks are
TemporalResBlocks without a timestep embedding, zero-initialised, so an
untrained temporal decoder decodes exactly as the image decoder does. Their
layout uses unet_layout.UNetLayout, so weight files and their checks are
shared with the UNet's temporal layers (weights.py).
"""

import torch.nn.functional as F
from torch import nn

from .temporal import TemporalConfig, TemporalLayers
from .unet_layout import InsertionSite, UNetLayout
from .windows import map_video

SD_VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), z_channels=4)
UPSCALE = 8  # KL-f8: one latent pixel decodes to 8x8 pixels


def _resnet_paths(decoder):
    yield "mid.block_1", decoder.mid.block_1
    yield "mid.block_2", decoder.mid.block_2
    for level in reversed(range(decoder.num_resolutions)):
        for i, block in enumerate(decoder.up[level].block):
            yield f"up.{level}.block.{i}", block


def is_video_decoder(decoder):
    """Stable Video Diffusion's decoder: temporal blocks of its own ("time_stack")."""
    return type(decoder).__name__ == "VideoDecoder" or any(name.endswith("time_stack") for name, _ in decoder.named_modules())


def find_decoder_layout(decoder):
    """The temporal-block sites of a KL image decoder in SD's layout (SD's f8, a bundle's f4); a clear error for any other VAE."""
    kind = type(decoder).__name__
    if is_video_decoder(decoder):
        raise ValueError("this VAE is already a video decoder (Stable Video Diffusion's): decode it without a temporal-decoder file")
    if not all(hasattr(decoder, a) for a in ("conv_in", "mid", "up", "norm_out", "conv_out", "num_resolutions")):
        raise ValueError(f"this VAE's decoder ({kind}) is not a Stable Diffusion KL autoencoder: the temporal decoder needs SD's KL-f8 VAE (SD 1.x / 2.x)")
    if decoder.conv_in.weight.ndim != 4:
        raise ValueError("this VAE decodes with 3D convolutions (a video VAE such as Wan's or Hunyuan's): the temporal decoder needs SD's KL-f8 image VAE")
    z_channels, levels = decoder.conv_in.in_channels, decoder.num_resolutions
    if z_channels != 4:
        raise ValueError(
            f"this VAE has {z_channels} latent channels; the temporal decoder needs a 4-channel KL VAE such as SD's KL-f8 "
            "(SD 1.x / 2.x) or a Video LDM bundle's: use the VAE of an SD 1.x / 2.x checkpoint"
        )
    sites = tuple(InsertionSite(path, "res", block.out_channels) for path, block in _resnet_paths(decoder))
    ch = decoder.conv_out.in_channels
    ch_mult = tuple(decoder.up[level].block[0].out_channels // ch for level in range(levels))
    # the family names the upsampling, so a file trained for one VAE is refused by another (weights.load_temporal_layers)
    family = "SD KL-f8 decoder" if dict(ch=ch, ch_mult=ch_mult, z_channels=z_channels) == SD_VAE else f"KL-f{2 ** (levels - 1)} decoder (ch {ch}, ch_mult {list(ch_mult)})"
    return UNetLayout(family, z_channels, 0, sites)


def fresh_temporal_decoder(decoder, config=TemporalConfig(), ops=nn):
    """Untrained temporal blocks for ``decoder``: decoding with them equals the image decoder."""
    return TemporalLayers(find_decoder_layout(decoder), config, ops=ops, modes=("decoder",))


def decode_frames(decoder, z, temporal=None, frames=None):
    """Decode latents ``(b t) c h w`` (after post_quant_conv) with ``decoder``'s own
    modules; with ``temporal`` layers (sites of find_decoder_layout), each
    ResnetBlock's output also passes its temporal block across ``frames``."""
    blocks = temporal.by_site() if temporal is not None else {}
    frames = frames or z.shape[0]

    def resnet(path, block, h):
        h = block(h, None)
        return blocks[path](h, None, None, frames) if path in blocks else h

    h = decoder.conv_in(z)
    h = resnet("mid.block_1", decoder.mid.block_1, h)
    h = decoder.mid.attn_1(h)
    h = resnet("mid.block_2", decoder.mid.block_2, h)
    for level in reversed(range(decoder.num_resolutions)):
        up = decoder.up[level]
        for i, block in enumerate(up.block):
            h = resnet(f"up.{level}.block.{i}", block, h)
            if len(up.attn):
                h = up.attn[i](h)
        if level != 0:
            h = up.upsample(h)
    h = decoder.conv_out(F.silu(decoder.norm_out(h)))
    return h.tanh() if decoder.tanh_out else h


def decode_video(decode_window, latents, window, overlap, tile=0, tile_overlap=0, upscale=UPSCALE, store=None):
    """Decode a latent video ``(t, c, h, w)`` in fixed windows of frames (and,
    with ``tile``, square spatial tiles of that many latent pixels, each
    decoding to ``upscale`` times its side), blended across overlaps.
    ``decode_window(latents)`` decodes one piece as one video. Window
    positions follow from the sizes alone, never from free memory."""
    return map_video(decode_window, latents, window, overlap, tile, tile_overlap, scale=upscale, store=store)
