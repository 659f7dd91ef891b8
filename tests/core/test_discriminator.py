"""The temporal decoder's 3D patch discriminator and its two losses."""

import torch

from vldm_core.train.discriminator import VideoDiscriminator, adversarial_loss, discriminator_loss


def frames(videos=2, t=4, size=32, seed=0):
    return torch.randn(videos * t, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_logits_judge_patches_of_each_video():
    torch.manual_seed(0)
    logits = VideoDiscriminator(channels=16)(frames(), 4)
    assert logits.shape == (2, 1, 4, 4, 4)  # per video: time kept, space 32 -> 4


def test_each_loss_moves_only_its_own_side():
    torch.manual_seed(0)
    disc = VideoDiscriminator(channels=16)
    fake = frames(seed=1).requires_grad_()
    discriminator_loss(disc, frames(), fake, 4).backward()
    assert fake.grad is None and all(p.grad is not None for p in disc.parameters())
    disc.zero_grad(set_to_none=True)
    adversarial_loss(disc, fake, 4).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


def test_the_discriminator_learns_to_tell_flicker_from_smooth_video():
    """Real: each video holds one image; fake: the same images with per-frame
    brightness flicker. A few steps make the discriminator separate them."""
    torch.manual_seed(0)
    disc = VideoDiscriminator(channels=16, layers=2)
    optimizer = torch.optim.Adam(disc.parameters(), lr=2e-3)
    still = frames(videos=4, t=1, size=16).repeat_interleave(4, dim=0)
    flicker = still + 0.5 * torch.randn(16, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    first = discriminator_loss(disc, still, flicker, 4).item()
    for _ in range(60):
        optimizer.zero_grad()
        discriminator_loss(disc, still, flicker, 4).backward()
        optimizer.step()
    assert discriminator_loss(disc, still, flicker, 4).item() < 0.5 * first
    assert disc(still, 4).mean() > disc(flicker, 4).mean()
