"""Temporal-decoder fine-tuning (paper, Sec. 3.1.2): the image autoencoder stays
frozen, encoder included, and only the temporal blocks of its decoder learn,
against a patch-wise 3D video discriminator, so that decoded frames stop
flickering while each frame still reconstructs its input.

Decoder side and discriminator train in the loop's one AdamW step: the job's
trainable module holds both, and discriminator.py's two losses each move only
their own side (the discriminator's loss sees the decoded video detached, the
adversarial loss sees the discriminator's weights detached), so summing every
term into one loss updates each side by its own objective alone. Each side's
gradient is clipped on its own (``parameter_groups``), and each term is logged.
"""

import torch
from einops import rearrange
from torch import nn

from ..autoencoder import posterior
from ..temporal import TemporalLayers
from ..temporal_decoder import decode_frames, find_decoder_layout
from ..weights import save_temporal_layers
from .discriminator import adversarial_loss, discriminator_loss

MODES = ("decoder",)


class TemporalDecoderJob:
    """Temporal blocks (``fresh_temporal_decoder``) and a ``VideoDiscriminator``
    trained on a frozen KL autoencoder: this pack's ``AutoencoderKL`` or the SD
    VAE ComfyUI loads (both expose ``encoder``, ``quant_conv``,
    ``post_quant_conv`` and ``decoder``).

    Batches hold ``pixels`` ``(b, t, 3, H, W)`` in [-1, 1], as data.VideoClips
    serves them. The loss is L1 reconstruction + ``adversarial_weight`` * the
    decoder's hinge loss + the discriminator's hinge loss, and, with a
    ``perceptual(x, x_rec)`` callable (LPIPS, say, on frames ``(b t) 3 H W`` in
    [-1, 1]), ``perceptual_weight`` * its mean. The adversarial weight is fixed,
    not taming's adaptive weight, which balances the two gradients at the
    decoder's last layer: here that layer is frozen."""

    def __init__(self, autoencoder, temporal, discriminator, adversarial_weight=0.1, perceptual=None, perceptual_weight=1.0):
        layout = find_decoder_layout(autoencoder.decoder)
        if layout != temporal.layout:
            raise ValueError(f"the temporal decoder was built for {temporal.layout.describe()}, this autoencoder's decoder is {layout.describe()}")
        if temporal.config.context_latent_channels:
            raise ValueError("a temporal decoder takes no context frames: build it with fresh_temporal_decoder's default config (context_latent_channels 0)")
        self.autoencoder = autoencoder.requires_grad_(False).eval()
        if isinstance(perceptual, nn.Module):
            perceptual.requires_grad_(False).eval()
        self.perceptual = perceptual
        self.module = nn.ModuleDict({"temporal": temporal, "discriminator": discriminator}).requires_grad_(True).train()
        self.loss_weights = {"reconstruction": 1.0, "adversarial": adversarial_weight, "discriminator": 1.0, "perceptual": perceptual_weight if perceptual is not None else 0.0}

    @property
    def temporal(self):
        return self.module["temporal"]

    @property
    def discriminator(self):
        return self.module["discriminator"]

    def config_dict(self):
        return {
            "modes": list(MODES),
            "loss_weights": self.loss_weights,
            "layout": self.temporal.layout.to_json(),
            "temporal_config": self.temporal.config.to_dict(),
            "discriminator": {"type": type(self.discriminator).__name__, "parameters": sum(p.numel() for p in self.discriminator.parameters())},
        }

    def set_gradient_checkpointing(self, enabled):
        self.temporal.set_gradient_checkpointing(enabled)

    def encode(self, frames, generator):
        """A sample of the frozen encoder's posterior for frames ``(b t) 3 H W``.
        A sample, not the mean: the image decoder was trained on samples, and the
        latents a diffusion model generates (what the temporal decoder will
        decode) model samples too. The noise comes from the loop's generator."""
        with torch.no_grad():
            mean, logvar = posterior(self.autoencoder, frames)
            noise = torch.randn(mean.shape, generator=generator).to(mean)
            return mean + (0.5 * logvar).exp() * noise

    def reconstruct(self, frames, video_frames, generator):
        """Frames ``(b t) 3 H W`` encoded, then decoded with the temporal blocks across each video."""
        z = self.encode(frames, generator)
        return decode_frames(self.autoencoder.decoder, self.autoencoder.post_quant_conv(z), self.temporal, frames=video_frames)

    def losses(self, batch, generator):
        """Each term of the loss, unweighted: the decoder's (reconstruction,
        adversarial, perceptual) reach only the temporal blocks, the
        discriminator's only the discriminator."""
        device = next(self.module.parameters()).device
        pixels = batch["pixels"].to(device)
        video_frames = pixels.shape[1]
        real = rearrange(pixels, "b t c h w -> (b t) c h w")
        fake = self.reconstruct(real, video_frames, generator)
        terms = {
            "reconstruction": (fake.float() - real.float()).abs().mean(),
            "adversarial": adversarial_loss(self.discriminator, fake, video_frames).float(),
            "discriminator": discriminator_loss(self.discriminator, real, fake, video_frames).float(),
        }
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(real, fake).float().mean()
        return terms

    def loss(self, batch, generator):
        """The weighted sum to minimise under "loss", beside each unweighted term, which the loop logs."""
        terms = self.losses(batch, generator)
        total = sum(self.loss_weights[name] * term for name, term in terms.items())
        return {"loss": total, **{name: term.detach() for name, term in terms.items()}}

    def parameter_groups(self):
        """Clipped apart: the discriminator's gradients, often far larger, must never shrink the temporal blocks' steps."""
        return {"temporal": list(self.temporal.parameters()), "discriminator": list(self.discriminator.parameters())}


def export_temporal_decoder(job, path, train_frames, weights=None, overwrite=False):
    """Write the file Temporal VAE Decode loads: the job's temporal blocks, or,
    with ``weights`` (the job module's state dict, as loop.load_checkpoint_weights
    reads it from a checkpoint: ``temporal.`` and ``discriminator.`` entries),
    those weights in the job's layout. The discriminator stays behind."""
    layers = job.temporal
    if weights is not None:
        layers = TemporalLayers(layers.layout, layers.config, modes=MODES)
        layers.load_state_dict({name.removeprefix("temporal."): w for name, w in weights.items() if name.startswith("temporal.")})
    save_temporal_layers(layers, path, train_frames=train_frames, modes=MODES, overwrite=overwrite)
