"""Training jobs for the image stage that the video stage builds on (paper,
Sec. 3: an LDM pre-trained on images): the KL-f8 autoencoder, then the image
LDM (UNet and caption encoder together) on single frames of the videos.

``AutoencoderJob`` trains this pack's ``AutoencoderKL`` as LDM's first stage
(L1 + optional perceptual loss + a small KL to N(0, I)), without the
adversarial term; ``latent_scale`` then measures the factor that gives its
latents unit variance (SD's 0.18215, computed) and ``export_autoencoder``
writes both for the nodes and the CLI. ``ImageDiffusionJob`` trains the
UNet, which has no temporal layers yet, and the caption encoder with SD's
objective; captions are dropped at random so that classifier-free guidance
can use the empty caption as its negative.
"""

import os

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..autoencoder import AutoencoderKL, posterior
from ..file_checks import PREDICTION_TYPES
from ..model_files import save_model
from ..sampling import alphas_cumprod
from ..temporal import TemporalLayer
from ..text_encoder import TextEncoder
from ..unet import UNetModel
from .jobs import video_latents
from .objectives import checked_dropout, draw_timesteps, drop_captions, noised



def frames_of(pixels):
    """Videos ``(b, t, 3, H, W)`` as images ``(b t) 3 H W``, contiguous: PyTorch's
    CPU GroupNorm backward crashes on channels-last input."""
    return rearrange(pixels, "b t c h w -> (b t) c h w").contiguous()


def kl_to_standard_normal(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) of each image's posterior, summed over its latent."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))


class AutoencoderJob:
    """All weights of an ``AutoencoderKL`` trained on the frames of the clips.

    Batches hold ``pixels`` ``(b, t, 3, H, W)`` in [-1, 1]; every frame is an
    image. The loss is LDM's first-stage loss per pixel value: the mean L1
    error of the decoded posterior sample, + ``perceptual_weight`` * the mean
    of ``perceptual(x, x_rec) -> (n,)`` (LPIPS, say; frozen), + ``kl_weight`` *
    the KL per pixel value, i.e. each image's KL divided by its 3 H W values.
    LDM sums every term over an image, so dividing all of them by its pixel
    count keeps its balance: ``kl_weight`` 1e-6 means what it means there."""

    def __init__(self, autoencoder, kl_weight=1e-6, perceptual=None, perceptual_weight=1.0):
        if isinstance(perceptual, nn.Module):
            perceptual.requires_grad_(False).eval()
        self.perceptual = perceptual
        self.module = autoencoder.requires_grad_(True).train()
        self.loss_weights = {"reconstruction": 1.0, "kl": kl_weight, "perceptual": perceptual_weight if perceptual is not None else 0.0}

    def config_dict(self):
        return {"loss_weights": self.loss_weights, "autoencoder_config": self.module.config.to_dict()}

    def losses(self, batch, generator):
        """Each term of the loss, unweighted. The posterior's noise comes from the loop's generator."""
        device = next(self.module.parameters()).device
        x = frames_of(batch["pixels"].to(device))
        mean, logvar = posterior(self.module, x)
        noise = torch.randn(mean.shape, generator=generator).to(mean)
        x_rec = self.module.decode(mean + (0.5 * logvar).exp() * noise)
        terms = {
            "reconstruction": (x_rec.float() - x.float()).abs().mean(),
            "kl": kl_to_standard_normal(mean.float(), logvar.float()).mean() / x[0].numel(),
        }
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(x, x_rec).float().mean()
        return terms

    def loss(self, batch, generator):
        """The weighted sum to minimise under "loss", beside each unweighted term, which the loop logs."""
        terms = self.losses(batch, generator)
        total = sum(self.loss_weights[name] * term for name, term in terms.items())
        return {"loss": total, **{name: term.detach() for name, term in terms.items()}}


@torch.no_grad()
def latent_scale(autoencoder, pixels):
    """1 / std of the posterior means of ``pixels`` (``(..., 3, H, W)`` in [-1, 1],
    a sample of the training frames): the factor that gives the latents the
    diffusion model sees unit variance, as SD's 0.18215 does for its VAE."""
    device = next(autoencoder.parameters()).device
    mean, _ = posterior(autoencoder, pixels.reshape(-1, *pixels.shape[-3:]).to(device).contiguous())
    return 1.0 / mean.float().std().item()


def export_autoencoder(job_or_autoencoder, path, latent_scale, weights=None, overwrite=False):
    """Write the autoencoder file (model_files, with its ``latent_scale``): the
    job's or the given autoencoder, or, with ``weights`` (the job module's state
    dict, as loop.load_checkpoint_weights reads it), those weights in its config."""
    autoencoder = getattr(job_or_autoencoder, "module", job_or_autoencoder)
    if weights is not None:
        autoencoder = AutoencoderKL(autoencoder.config)
        autoencoder.load_state_dict(weights)
    save_model(autoencoder, path, overwrite=overwrite, latent_scale=latent_scale)


class ImageDiffusionJob:
    """The image LDM: a ``UNetModel`` without temporal layers and a ``TextEncoder``
    trained together (the loop's module holds both) on single frames, with SD's
    schedule and ``prediction_type`` ("eps" or "v").

    Batches hold ``latents`` ``(b, t, c, h, w)``, already scaled as the UNet
    sees them, or ``pixels`` ``(b, t, 3, H, W)`` that ``encode_frames(pixels
    (n, 3, H, W)) -> latents`` encodes (frozen, scaled) on the training device;
    and ``caption``. Every frame is an image with its video's caption, its own
    timestep and its own caption dropout."""

    def __init__(self, unet, text_encoder, prediction_type="eps", caption_dropout=0.1, encode_frames=None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction type {prediction_type!r}: choose 'eps' or 'v'")
        if any(isinstance(m, TemporalLayer) for m in unet.modules()):
            raise ValueError("this UNet has temporal layers: the image model trains without them (eject them, or train a fresh UNet)")
        if text_encoder.config.dim != unet.config.context_dim:
            raise ValueError(f"the caption encoder's dim {text_encoder.config.dim} differs from the UNet's context_dim {unet.config.context_dim}")
        self.module = nn.ModuleDict({"unet": unet, "text_encoder": text_encoder}).requires_grad_(True).train()
        self.prediction_type, self.caption_dropout, self.encode_frames = prediction_type, checked_dropout(caption_dropout), encode_frames
        self.alpha_bar = alphas_cumprod()

    @property
    def unet(self):
        return self.module["unet"]

    @property
    def text_encoder(self):
        return self.module["text_encoder"]

    def config_dict(self):
        return {
            "prediction_type": self.prediction_type,
            "caption_dropout": self.caption_dropout,
            "unet_config": self.unet.config.to_dict(),
            "text_encoder_config": self.text_encoder.config.to_dict(),
        }

    def unet_inputs(self, batch, generator):
        """The UNet's keyword arguments for a batch's frames ``(b t) c h w`` and its
        target: each frame noised at its own timestep, as a one-frame video
        for objectives.noised, with its (possibly dropped) caption embedded."""
        device = next(self.module.parameters()).device
        latents = video_latents(batch, self.encode_frames, device)
        frames = latents.shape[1]
        x0 = rearrange(latents, "b t c h w -> (b t) 1 c h w")
        t = draw_timesteps(x0.shape[0], generator)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        captions = drop_captions([caption for caption in batch["caption"] for _ in range(frames)], self.caption_dropout, generator)
        x_t, target = noised(x0, noise, t.to(device), self.alpha_bar, self.prediction_type)
        inputs = {"x": x_t[:, 0], "timesteps": t.to(device), "context": self.text_encoder(captions)}
        return inputs, target[:, 0]

    def loss(self, batch, generator):
        inputs, target = self.unet_inputs(batch, generator)
        return F.mse_loss(self.unet(**inputs).float(), target.float())


def export_image_model(job, unet_path, text_encoder_path, weights=None, overwrite=False):
    """Write the UNet file (with its ``prediction_type``) and the caption encoder
    file (model_files): the job's, or, with ``weights`` (loop.load_checkpoint_weights
    of its checkpoint: ``unet.`` and ``text_encoder.`` entries), those weights in
    the job's configs. Both paths are checked first, so neither file is written alone."""
    if not overwrite:
        taken = [str(p) for p in (unet_path, text_encoder_path) if os.path.exists(p)]
        if taken:
            raise FileExistsError(f"{', '.join(taken)} exists; choose another name or pass overwrite=True")
    unet, text_encoder = job.unet, job.text_encoder
    if weights is not None:
        unet, text_encoder = UNetModel(unet.config), TextEncoder(text_encoder.config)
        for name, model in (("unet", unet), ("text_encoder", text_encoder)):
            model.load_state_dict({k.removeprefix(f"{name}."): w for k, w in weights.items() if k.startswith(f"{name}.")})
    save_model(unet, unet_path, overwrite=overwrite, prediction_type=job.prediction_type)
    save_model(text_encoder, text_encoder_path, overwrite=overwrite)
