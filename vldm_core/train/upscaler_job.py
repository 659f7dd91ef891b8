"""Video-upscaler temporal layers (the paper's temporal fine-tuning of its
super-resolution model): temporal layers on the frozen SD x4 upscaler, trained
as the x4 upscaler itself was, but on whole videos, so that frames upscaled
together stop flickering.

The x4 upscaler conditions on the low-res image concatenated to its latent,
noised ("augmented") to a random level that it is told through its class label
``y``; at sampling time the user picks the level. Its diffusion and its
augmentation share one schedule: SD's "linear" betas from 1e-4 to 2e-2, i.e.
linear in sqrt(beta), squared (ComfyUI: supported_models.SD_X4Upscaler and
upscaling.ImageConcatWithNoiseAugmentation), v-prediction. Training draws one
augmentation level per video, as one timestep per video: the Video Upscaler
augments all frames of a video at one level, and the temporal layers must
learn what frames sharing a level look like. The paper trains on patches;
``patch`` crops one random patch per video, the same for all its frames.
"""

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from ..sampling import alphas_cumprod
from ..temporal import TemporalLayers
from ..unet_layout import find_layout, inject
from ..weights import save_temporal_layers
from .jobs import call_own_unet, video_latents
from .objectives import draw_timesteps, noised

MODES = ("upscaler",)
X4_SCHEDULE = {"beta_start": 1e-4, "beta_end": 2e-2}
MAX_NOISE_LEVEL = 350  # the x4 upscaler's; the Video Upscaler asks for round(350 * noise_augmentation)
LOW_RES_CHANNELS = 3


def draw_noise_levels(videos, generator, max_level=MAX_NOISE_LEVEL):
    """One augmentation level per video, from 0 to ``max_level`` inclusive: every
    level the Video Upscaler can ask for (noise_augmentation 0 to 1)."""
    return torch.randint(0, max_level + 1, (videos,), generator=generator)


def augment_low_res(low_res, levels, generator, alpha_bar):
    """Low-res videos ``(b, t, 3, h, w)`` noised to ``levels`` (one per video) on
    the augmentation schedule ``alpha_bar``: sqrt(a) x + sqrt(1 - a) eps, fresh
    eps per frame, as the x4 upscaler's augmentor does per image."""
    noise = torch.randn(low_res.shape, generator=generator).to(low_res)
    return noised(low_res, noise, levels.to(low_res.device), alpha_bar, "eps")[0]


def downsampled(pixels, size):
    """High-res videos ``(b, t, 3, H, W)`` area-averaged to ``size``: the low-res input the upscaler learns to enlarge."""
    videos = pixels.shape[0]
    frames = F.interpolate(rearrange(pixels, "b t c h w -> (b t) c h w"), size=tuple(size), mode="area")
    return rearrange(frames, "(b t) c h w -> b t c h w", b=videos).contiguous()


def random_patches(videos, patch, generator):
    """The same random ``patch`` (height, width) of every tensor in ``videos``
    (each ``(b, t, c, h, w)``, all of one h and w): one position per video, the
    same for all its frames and for all tensors, so latents and low-res frames
    stay aligned."""
    height, width = videos[0].shape[-2:]
    if patch[0] > height or patch[1] > width:
        raise ValueError(f"patch {list(patch)} is larger than the training frames' latents ({height}x{width}): lower patch or train on larger clips")
    tops = torch.randint(0, height - patch[0] + 1, (videos[0].shape[0],), generator=generator).tolist()
    lefts = torch.randint(0, width - patch[1] + 1, (videos[0].shape[0],), generator=generator).tolist()
    return [
        torch.stack([video[..., top : top + patch[0], left : left + patch[1]] for video, top, left in zip(tensor, tops, lefts)])
        for tensor in videos
    ]


def single_frames(batch):
    """A batch of videos as a batch of one-frame videos, each frame with its video's caption."""
    frames = next(v.shape[1] for v in batch.values() if isinstance(v, torch.Tensor))
    return {
        name: rearrange(value, "b t ... -> (b t) 1 ...") if isinstance(value, torch.Tensor) else [c for c in value for _ in range(frames)]
        for name, value in batch.items()
    }


class UpscalerJob:
    """Temporal layers on a frozen x4-upscaler-style UNet: ``in_channels`` = latent
    channels + 3 (the low-res frames), and a class label ``y`` (the augmentation
    level) with room for levels 0 to ``noise_levels``. ``call_unet`` runs it on
    frames ``(b t) c h w`` as in TemporalLayersJob, with the levels as ``y``.

    ``encode_text(captions) -> (b, tokens, dim)`` embeds the captions (frozen).
    Batches hold ``latents`` ``(b, t, c, h, w)``: the high-res frames encoded by
    the upscaler's VAE and scaled as the UNet sees them; ``low_res``
    ``(b, t, 3, h, w)``: the low-res frames in [-1, 1] at the latents' size (the
    x4 upscaler's latent is as large as its low-res input); and ``caption``.
    Or batches hold high-res ``pixels`` ``(b, t, 3, H, W)``, which
    ``encode_frames`` (the upscaler's VAE, scaled) encodes and area-downsampling
    turns into the low-res frames, both on the training device.
    With ``layers`` None the UNet itself trains (the image stage, each frame on
    its own), for a bundle that has no x4 upscaler to start from.
    ``patch``: None for whole frames, else the side (or (height, width)) of the
    random patch, in latent pixels, that each video trains on; the real x4
    upscaler needs multiples of 8."""

    def __init__(self, unet, layers, encode_text, prediction_type="v", noise_levels=MAX_NOISE_LEVEL, patch=None, encode_frames=None, call_unet=None):
        in_channels = find_layout(unet).in_channels
        if layers is not None and layers.config.context_latent_channels:
            raise ValueError("upscaler temporal layers take no context frames: build them with context_latent_channels 0")
        if in_channels <= LOW_RES_CHANNELS:
            raise ValueError(f"this UNet takes {in_channels} input channels: an upscaler UNet takes the latent's channels and the 3 of the low-res frames")
        labels = getattr(unet, "label_emb", None)
        if labels is None or labels.num_embeddings <= noise_levels:
            have = "no class label" if labels is None else f"{labels.num_embeddings} class labels"
            raise ValueError(f"this UNet has {have}; an upscaler UNet is told the augmentation level (0 to {noise_levels}) as its class label y")
        self.in_channels, self.layers = in_channels, layers
        if layers is None:  # the image stage: the upscaler UNet itself learns, frame by frame
            self.unet = self.module = unet.requires_grad_(True).train()
        else:
            self.unet = unet.requires_grad_(False).eval()
            inject(self.unet, layers)
            self.module = layers.requires_grad_(True).train()
        self.call_unet = call_unet or call_own_unet
        self.encode_text, self.encode_frames, self.prediction_type, self.noise_levels = encode_text, encode_frames, prediction_type, noise_levels
        self.patch = None if patch is None else tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
        self.alpha_bar = alphas_cumprod(**X4_SCHEDULE)

    def config_dict(self):
        trained = {"unet": self.unet.config.to_dict()} if self.layers is None else {
            "layout": self.layers.layout.to_json(), "temporal_config": self.layers.config.to_dict(),
        }
        return {
            "modes": list(MODES),
            "prediction_type": self.prediction_type,
            "noise_levels": self.noise_levels,
            "patch": list(self.patch or []),
            "schedule": X4_SCHEDULE,
            **trained,
        }

    def set_gradient_checkpointing(self, enabled):
        if self.layers is None:
            if enabled:
                raise ValueError("the upscaler UNet itself trains without gradient checkpointing: set gradient_checkpointing to false")
            return
        self.layers.set_gradient_checkpointing(enabled)

    def unet_inputs(self, batch, generator):
        """The frozen UNet's keyword arguments for one batch, frames as ``(b t) ...``,
        and its target: noised latents with the augmented low-res frames
        concatenated on the channel axis (the x4 upscaler's order: latents first),
        one timestep and one augmentation level ``y`` per video (per frame, where
        the UNet itself trains: then every frame is a one-frame video)."""
        device = next(self.module.parameters()).device
        if self.layers is None:
            batch = single_frames(batch)
        latents = video_latents(batch, self.encode_frames, device)
        low_res = batch["low_res"].to(device) if "low_res" in batch else downsampled(batch["pixels"].to(device), latents.shape[-2:])
        if low_res.shape[:2] != latents.shape[:2] or low_res.shape[2:] != (LOW_RES_CHANNELS, *latents.shape[-2:]):
            raise ValueError(f"low_res {tuple(low_res.shape)} must be (b, t, 3, h, w) beside latents {tuple(latents.shape)}: the low-res frames at the latents' size")
        if latents.shape[2] + LOW_RES_CHANNELS != self.in_channels:
            raise ValueError(f"latents of {latents.shape[2]} channels + 3 low-res channels do not make this UNet's {self.in_channels} input channels")
        if self.patch is not None:
            latents, low_res = random_patches((latents, low_res), self.patch, generator)
        videos, frames = latents.shape[:2]
        t = draw_timesteps(videos, generator)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        levels = draw_noise_levels(videos, generator, self.noise_levels)
        augmented = augment_low_res(low_res, levels, generator, self.alpha_bar)
        x_t, target = noised(latents, noise, t.to(device), self.alpha_bar, self.prediction_type)
        with torch.no_grad():
            context = repeat(self.encode_text(batch["caption"]).to(device), "b n d -> (b t) n d", t=frames)
        inputs = {
            "x": rearrange(torch.cat([x_t, augmented.to(x_t)], dim=2), "b t c h w -> (b t) c h w"),
            "timesteps": t.to(device).repeat_interleave(frames),
            "context": context,
            "frames": frames,
            "y": levels.to(device).repeat_interleave(frames),
        }
        return inputs, rearrange(target, "b t c h w -> (b t) c h w")

    def loss(self, batch, generator):
        inputs, target = self.unet_inputs(batch, generator)
        return F.mse_loss(self.call_unet(self.unet, **inputs).float(), target.float())


def export_upscaler_layers(job, path, train_frames, weights=None, overwrite=False):
    """Write the file the Temporal UNet Patcher loads onto the x4 upscaler: the
    job's layers, or, with ``weights`` (loop.load_checkpoint_weights of its
    checkpoint), those weights in the job's layout; modes ("upscaler",) and the
    prediction type, which the patcher checks against the MODEL."""
    layers = job.module
    if weights is not None:
        layers = TemporalLayers(layers.layout, layers.config, modes=MODES)
        layers.load_state_dict(weights)
    save_temporal_layers(layers, path, train_frames=train_frames, modes=MODES, prediction_type=job.prediction_type, overwrite=overwrite)
