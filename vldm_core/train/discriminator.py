"""The temporal decoder's adversary (paper, Sec. 3.1.2): a patch-wise
discriminator of 3D convolutions that judges short space-time patches of
decoded video, so the decoder learns to remove flicker that a per-frame
reconstruction loss cannot see.

Generator and discriminator train in one optimizer step: the discriminator's
loss sees the decoded video detached, and the decoder's adversarial loss sees
the discriminator's weights detached, so neither loss moves the other's weights.
"""

import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call


class VideoDiscriminator(nn.Module):
    """PatchGAN in 3D: each output logit judges one overlapping patch of frames
    ``(b t) c h w``; time is convolved with kernel 3 at stride 1, space halved per layer."""

    def __init__(self, in_channels=3, channels=64, layers=3):
        super().__init__()
        blocks = [nn.Conv3d(in_channels, channels, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            blocks += [nn.Conv3d(ch, out, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            ch = out
        blocks.append(nn.Conv3d(ch, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, frames, video_frames):
        return self.net(rearrange(frames, "(b t) c h w -> b c t h w", t=video_frames))


def discriminator_loss(discriminator, real, fake, video_frames):
    """Hinge loss on real frames and on detached decoded frames."""
    return F.relu(1 - discriminator(real, video_frames)).mean() + F.relu(1 + discriminator(fake.detach(), video_frames)).mean()


def adversarial_loss(discriminator, fake, video_frames):
    """The decoder's hinge objective, through a frozen copy of the discriminator's weights."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    return -functional_call(discriminator, frozen, (fake, video_frames)).mean()
