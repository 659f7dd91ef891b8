"""Video-upscaler temporal layers on a frozen x4-style UNet, through the real
loop: only temporal weights move, the loss falls, each video is augmented at
one level as the x4 upscaler is, patches stay aligned between latents and
low-res frames, and the exported file loads back to the trained model."""

from dataclasses import replace

import pytest
import torch
from einops import rearrange

from vldm_core.temporal import TemporalConfig, TemporalLayers
from vldm_core.train.loop import TrainConfig, load_checkpoint_weights, train
from vldm_core.train.upscaler_job import X4_SCHEDULE, UpscalerJob, draw_noise_levels, export_upscaler_layers, random_patches
from vldm_core.sampling import alphas_cumprod
from vldm_core.unet_layout import eject, find_layout, inject
from vldm_core.weights import load_temporal_layers

from tiny_models import SeededVideos, TINY, tiny_unet
from train_toys import assert_two_ranks_match_one_process

X4_TINY = replace(TINY, in_channels=TINY.out_channels + 3, num_classes=351)
FRAMES, SIZE = 4, 12
ALPHA_BAR = alphas_cumprod(**X4_SCHEDULE)


class MovingLowRes(SeededVideos):
    """High-res latents: a random pattern moving a pixel per frame; low-res frames:
    a squashed copy of three of its channels, at the latents' size."""

    def __getitem__(self, index):
        pattern = torch.randn(TINY.out_channels, SIZE, SIZE, generator=self.generator(index))
        latents = torch.stack([pattern.roll(k, dims=-1) for k in range(FRAMES)])
        return {"latents": latents, "low_res": latents[:, :3].tanh(), "caption": "a pattern moving right"}


def encode_text(captions):
    return torch.ones(len(captions), 5, TINY.context_dim) * 0.1


def job(unet_config=X4_TINY, layer_config=TemporalConfig(), **settings):
    unet = tiny_unet(unet_config)
    torch.manual_seed(3)
    return UpscalerJob(unet, TemporalLayers(find_layout(unet), layer_config, modes=("upscaler",)), encode_text, **settings)


def batch_of(data, count):
    items = [data[i] for i in range(count)]
    return {key: torch.stack([item[key] for item in items]) for key in ("latents", "low_res")} | {"caption": [item["caption"] for item in items]}


def held_out_loss(j):
    with torch.no_grad():
        return j.loss(batch_of(MovingLowRes(videos=8, seed=7), 8), torch.Generator().manual_seed(11)).item()


def run(j, tmp_path, steps=40, **settings):
    config = TrainConfig(output_dir=str(tmp_path), steps=steps, batch_size=4, lr=5e-3, checkpoint_every=steps, log_every=20, seed=0, **settings)
    return train(j, MovingLowRes(), config)


def test_training_moves_only_temporal_weights_and_lowers_the_loss(tmp_path):
    j = job(patch=8)
    spatial = {k: v.clone() for k, v in j.unet.state_dict().items() if "_temporal" not in k}
    before = held_out_loss(j)
    run(j, tmp_path)
    assert held_out_loss(j) < 0.9 * before
    eject(j.unet)
    assert j.unet.state_dict().keys() == spatial.keys()
    assert all(torch.equal(v, spatial[k]) for k, v in j.unet.state_dict().items())
    assert not any(p.requires_grad for p in j.unet.parameters())


def test_each_video_is_augmented_at_one_level_on_the_x4_schedule():
    j = job()
    videos = 48
    data = MovingLowRes(videos=videos)
    batch = {key: value[:, :2] if key != "caption" else value for key, value in batch_of(data, videos).items()}
    inputs, _ = j.unet_inputs(batch, torch.Generator().manual_seed(0))
    levels = rearrange(inputs["y"], "(b t) -> b t", t=2)
    assert torch.equal(levels[:, 0], levels[:, 1])  # one level per video
    assert levels.min() >= 0 and levels.max() <= 350 and len(set(levels[:, 0].tolist())) > videos // 2
    # The low-res channels are sqrt(a) x + sqrt(1 - a) eps at the video's level, eps standard normal.
    a = ALPHA_BAR[levels[:, 0]].float().view(-1, 1, 1, 1, 1)
    augmented = rearrange(inputs["x"][:, TINY.out_channels :], "(b t) c h w -> b t c h w", t=2)
    eps = (augmented - a.sqrt() * batch["low_res"]) / (1 - a).sqrt()
    assert eps.mean().abs() < 0.05 and torch.allclose(eps.flatten(1).std(dim=1), torch.ones(videos), atol=0.25)

    draws = draw_noise_levels(20000, torch.Generator().manual_seed(1))
    assert draws.min() == 0 and draws.max() == 350  # every level the Video Upscaler can ask for


def test_the_augmentation_schedule_is_the_x4_upscalers():
    """SD's "linear" betas, 1e-4 to 2e-2, linear in sqrt(beta) (ComfyUI's make_beta_schedule)."""
    betas = 1 - ALPHA_BAR / torch.cat([torch.ones(1, dtype=ALPHA_BAR.dtype), ALPHA_BAR[:-1]])
    assert torch.allclose(betas[[0, -1]], torch.tensor([1e-4, 2e-2], dtype=betas.dtype))
    assert torch.allclose(betas.sqrt().diff(), torch.full((999,), (2e-2**0.5 - 1e-4**0.5) / 999, dtype=betas.dtype))


def window_position(window, video):
    """Where ``window`` (t, c, p, p) sits in ``video`` (t, c, h, w): the best-matching top-left corner."""
    size = window.shape[-1]
    errors = {
        (top, left): (video[..., top : top + size, left : left + size] - window).abs().max().item()
        for top in range(video.shape[-2] - size + 1)
        for left in range(video.shape[-1] - size + 1)
    }
    return min(errors, key=errors.get), min(errors.values())


def test_patches_are_the_same_window_of_latents_and_low_res_frames():
    """The clean latents recovered from x_t and the v target (x0 = sqrt(a) x_t - sqrt(1 - a) v)
    and the low-res channels (level 0: almost clean) come from one window of each video."""
    j = job(patch=8, noise_levels=0)
    batch = batch_of(MovingLowRes(videos=6, seed=2), 6)
    inputs, target = j.unet_inputs(batch, torch.Generator().manual_seed(5))
    assert inputs["x"].shape[-2:] == (8, 8) and torch.equal(inputs["y"], torch.zeros(6 * FRAMES, dtype=torch.long))
    a = ALPHA_BAR[inputs["timesteps"]].float().view(-1, 1, 1, 1)
    latents = rearrange(a.sqrt() * inputs["x"][:, : TINY.out_channels] - (1 - a).sqrt() * target, "(b t) c h w -> b t c h w", t=FRAMES)
    low_res = rearrange(inputs["x"][:, TINY.out_channels :], "(b t) c h w -> b t c h w", t=FRAMES)
    positions = []
    for video in range(6):
        position, error = window_position(latents[video], batch["latents"][video])
        assert error < 1e-4
        low_res_position, low_res_error = window_position(low_res[video], batch["low_res"][video])
        assert low_res_position == position and low_res_error < 0.1
        positions.append(position)
    assert len(set(positions)) > 1  # drawn per video

    g = torch.Generator().manual_seed(0)
    values = torch.arange(2 * 3 * 1 * 10 * 10.0).view(2, 3, 1, 10, 10)
    first, second = random_patches((values, values * 2), (4, 6), g)
    assert first.shape == (2, 3, 1, 4, 6) and torch.equal(second, first * 2)
    assert torch.equal(first[:, 0] + 100, first[:, 1])  # one window for every frame of a video


def test_the_exported_file_loads_back_to_the_trained_model(tmp_path):
    j = job()
    result = run(j, tmp_path, steps=4, ema_decay=0.5)
    weights = load_checkpoint_weights(result.checkpoint, ema=True)
    trained = TemporalLayers(j.module.layout, j.module.config)
    trained.load_state_dict(weights)
    export_upscaler_layers(j, tmp_path / "upscaler.safetensors", train_frames=FRAMES, weights=weights)
    loaded = load_temporal_layers(tmp_path / "upscaler.safetensors", find_layout(tiny_unet(X4_TINY)), prediction_type="v")
    assert loaded.modes == ("upscaler",) and loaded.train_frames == FRAMES
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.state_dict().items())

    def video_model(layers):
        unet = tiny_unet(X4_TINY)
        inject(unet, layers.eval())
        return unet

    x = torch.randn(FRAMES, X4_TINY.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y, context = torch.full((FRAMES,), 300), torch.full((FRAMES,), 20), encode_text(["x"]).expand(FRAMES, -1, -1)
    with torch.no_grad():
        out = video_model(loaded)(x, t, context, FRAMES, y=y)
        assert torch.equal(out, video_model(trained)(x, t, context, FRAMES, y=y))
        assert not torch.equal(out, tiny_unet(X4_TINY)(x, t, context, FRAMES, y=y))


def test_inputs_that_do_not_fit_an_upscaler_are_refused():
    with pytest.raises(ValueError, match="no class label"):
        job(unet_config=replace(X4_TINY, num_classes=0))
    with pytest.raises(ValueError, match="100 class labels"):
        job(unet_config=replace(X4_TINY, num_classes=100))
    with pytest.raises(ValueError, match="no context frames"):
        job(layer_config=TemporalConfig(context_latent_channels=4))
    batch = batch_of(MovingLowRes(), 2)
    with pytest.raises(ValueError, match="at the latents' size"):
        job().loss({**batch, "low_res": batch["low_res"][..., :6, :6]}, torch.Generator())
    with pytest.raises(ValueError, match="larger than"):
        job(patch=16).loss(batch, torch.Generator())


def ddp_case():
    """A few steps on patches (see assert_two_ranks_match_one_process for the small lr and clip)."""
    settings = dict(steps=3, batch_size=4, lr=1e-5, grad_clip=0.01, ema_decay=0.5, checkpoint_every=2, log_every=1)
    return job(patch=8), MovingLowRes(videos=8), settings


def test_two_gloo_ranks_match_each_other_and_one_process_with_the_same_global_batch(tmp_path):
    assert_two_ranks_match_one_process(ddp_case, tmp_path)


def test_without_temporal_layers_the_upscaler_unet_itself_learns_frame_by_frame(tmp_path):
    """The image stage of a bundle's upscaler: every frame its own timestep and level, the UNet's own weights trained."""
    unet = tiny_unet(X4_TINY)
    j = UpscalerJob(unet, None, encode_text)
    assert j.module is unet and all(p.requires_grad for p in unet.parameters())
    inputs, target = j.unet_inputs(batch_of(MovingLowRes(), 2), torch.Generator().manual_seed(0))
    assert inputs["frames"] == 1 and target.shape[0] == 2 * FRAMES
    assert len(set(inputs["timesteps"].tolist())) > 2 and len(set(inputs["y"].tolist())) > 2  # per frame, not per video
    before = [p.detach().clone() for p in unet.parameters()]
    train(j, MovingLowRes(), TrainConfig(output_dir=str(tmp_path), steps=2, batch_size=2, lr=1e-3, checkpoint_every=2, log_every=1))
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters()))
    with pytest.raises(ValueError, match="without gradient checkpointing"):
        j.set_gradient_checkpointing(True)
