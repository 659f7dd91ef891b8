"""Training jobs for the loop (loop.TrainJob): what each weight file the nodes
load is trained on, with the image model frozen.

``TemporalLayersJob`` trains a UNet's temporal layers: as a key-frame model,
and, with context frames, as a prediction and/or interpolation model in one
run (each video of a batch draws its mode). The base UNet keeps the schedule
and prediction type it was trained with; only the temporal layers (which hold
the context encoder) are handed to the loop.
"""

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from ..sampling import alphas_cumprod
from ..temporal import context_branch
from ..unet_layout import inject
from .objectives import checked_dropout, checked_power, draw_context, draw_timesteps, drop_captions, masked_context, noised

CONTEXT_MODES = ("prediction", "interpolation")


def video_latents(batch, encode_frames, device):
    """A batch's latent videos ``(b, t, c, h, w)``: its ``latents``, or its
    ``pixels`` ``(b, t, 3, H, W)`` encoded (frozen) by ``encode_frames`` on ``device``."""
    if "latents" in batch:
        return batch["latents"].to(device)
    videos = batch["pixels"].shape[0]
    with torch.no_grad():
        frames = encode_frames(rearrange(batch["pixels"].to(device), "b t c h w -> (b t) c h w"))
    # decoded video arrives channels-last, and so do the encoder's outputs: PyTorch's
    # CPU GroupNorm backward crashes on channels-last input, so train on contiguous latents
    return rearrange(frames, "(b t) c h w -> b t c h w", b=videos).contiguous()


def call_own_unet(unet, x, timesteps, context, frames, masked_context=None, y=None):
    """The pack's own UNet (vldm_core.unet), called as every job calls a UNet."""
    return unet(x, timesteps, context, frames, masked_context, y=y)


# the objective's options as every run before them trained: left out of a run's record, so their checkpoints resume
PLAIN_OBJECTIVE = {"caption_dropout": 0.0, "timestep_power": 1.0}


class TemporalLayersJob:
    """Temporal layers on a frozen image UNet, trained with the image model's objective on videos.

    ``encode_text(captions) -> (b, tokens, dim)`` embeds the captions (frozen);
    batches hold ``latents`` ``(b, t, c, h, w)``, already scaled as the UNet
    sees them, or ``pixels`` ``(b, t, 3, H, W)`` that ``encode_frames(pixels
    (n, 3, H, W)) -> latents`` encodes (frozen) on the training device; and ``caption``.
    ``call_unet(unet, x, timesteps, context, frames, masked_context)`` runs a UNet
    whose forward takes other arguments (ComfyUI's: vldm_core.comfy_unet.call_unet).
    With ``context_only``, the layers stay frozen but for their context branch
    (temporal.context_branch): a motion module learns to take context frames.
    ``caption_dropout``: share of videos trained with the empty caption, so that
    the unconditional branch that classifier-free guidance subtracts is a
    coherent video too; ``timestep_power``: objectives.draw_timesteps."""

    def __init__(self, unet, layers, encode_text, prediction_type="eps", modes=("keyframe",), stages=None, encode_frames=None, call_unet=None,
                 context_only=False, caption_dropout=0.0, timestep_power=1.0):
        unknown = set(modes) - {"keyframe", *CONTEXT_MODES}
        if unknown:
            raise ValueError(f"modes {sorted(unknown)}: temporal layers of a UNet train as keyframe, prediction and/or interpolation models")
        if (context_only or any(m in CONTEXT_MODES for m in modes)) and not layers.config.context_latent_channels:
            raise ValueError("prediction and interpolation train on context frames: build the layers with context_latent_channels set")
        self.unet = unet.requires_grad_(False).eval()
        inject(self.unet, layers)
        self.call_unet = call_unet or call_own_unet
        self.layers = layers.requires_grad_(False).train()
        self.module = (context_branch(layers) if context_only else layers).requires_grad_(True)
        self.context_only = context_only
        self.encode_text, self.encode_frames, self.prediction_type, self.modes = encode_text, encode_frames, prediction_type, tuple(modes)
        self.stages = stages if layers.config.interpolation_stage else None
        self.alpha_bar = alphas_cumprod(betas=layers.config.betas or "scaled_linear")  # motion modules bring their own schedule
        self.caption_dropout, self.timestep_power = checked_dropout(caption_dropout), checked_power(timestep_power)

    def config_dict(self):
        options = {"caption_dropout": self.caption_dropout, "timestep_power": self.timestep_power}
        return {
            **{name: value for name, value in options.items() if value != PLAIN_OBJECTIVE[name]},
            "modes": list(self.modes),
            "prediction_type": self.prediction_type,
            "layout": self.layers.layout.to_json(),
            "temporal_config": self.layers.config.to_dict(),
            "stages": list(self.stages or []),
            "context_only": self.context_only,
        }

    def set_gradient_checkpointing(self, enabled):
        self.layers.set_gradient_checkpointing(enabled)

    def contexts(self, latents, generator):
        """c_S for each video: a mode drawn from this job's modes, then its mask
        (key-frame videos, and context modes drawing S = 0, know no frame)."""
        if not any(m in CONTEXT_MODES for m in self.modes):
            return None
        masks, stages = [], []
        frames = latents.shape[1]
        for _ in range(latents.shape[0]):
            mode = self.modes[torch.randint(len(self.modes), (1,), generator=generator).item()]
            if mode == "keyframe":
                mask, stage = torch.zeros(frames), None if self.stages is None else 0
            else:
                mask, stage = draw_context(mode, frames, generator, self.stages)
            masks.append(mask)
            stages.append(stage)
        return masked_context(latents, masks, stages)

    def loss(self, batch, generator):
        device = next(self.module.parameters()).device
        latents = video_latents(batch, self.encode_frames, device)
        videos, frames = latents.shape[:2]
        t = draw_timesteps(videos, generator, power=self.timestep_power)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        c_s = self.contexts(latents, generator)
        captions = batch["caption"]
        if self.caption_dropout:  # no draw at 0: runs trained before the dropout existed draw what they drew
            captions = drop_captions(captions, self.caption_dropout, generator)
        x_t, target = noised(latents, noise, t.to(device), self.alpha_bar, self.prediction_type)
        with torch.no_grad():
            context = repeat(self.encode_text(captions).to(device), "b n d -> (b t) n d", t=frames)
        prediction = self.call_unet(self.unet, rearrange(x_t, "b t c h w -> (b t) c h w"), t.to(device).repeat_interleave(frames), context, frames, c_s)
        return F.mse_loss(prediction.float(), rearrange(target, "b t c h w -> (b t) c h w").float())
