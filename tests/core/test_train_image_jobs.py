"""The image stage through the real loop: the autoencoder and the image LDM
(UNet and caption encoder) learn on toy frames, a frozen autoencoder that
encodes for the LDM comes out bit-identical, the training target is the one the
sampler reads, and the exported files load back to the trained models."""

import json

import pytest
import torch
import torch.nn.functional as F

from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL, posterior
from vldm_core.model_files import load_model
from vldm_core.sampling import Denoiser, discrete_sigmas
from vldm_core.temporal import TemporalLayers
from vldm_core.text_encoder import TextEncoder, TextEncoderConfig
from vldm_core.train.image_jobs import (
    AutoencoderJob,
    ImageDiffusionJob,
    export_autoencoder,
    export_image_model,
    latent_scale,
)
from vldm_core.train.objectives import drop_captions
from vldm_core.train.loop import TrainConfig, load_checkpoint_weights, train
from vldm_core.unet_layout import find_layout, inject

from tiny_models import SeededVideos, TINY, tiny_unet, ToyPerceptual

FRAMES, SIZE, LATENT = 2, 32, 8
TINY_AE = AutoencoderConfig(ch=8, ch_mult=(1, 2, 2, 4), norm_groups=8)
TINY_TEXT = TextEncoderConfig(vocab=64, max_tokens=4, dim=TINY.context_dim, layers=1, heads=2)
SHAPES = ("square", "disc")


class SmoothFrames(SeededVideos):
    """Pixel videos in [-1, 1] whose frames are independent smooth random images."""

    def __getitem__(self, index):
        g = self.generator(index)
        frames = F.interpolate(torch.randn(FRAMES, 3, 4, 4, generator=g), size=SIZE, mode="bilinear")
        return {"pixels": (frames * 0.8).tanh(), "caption": "smooth colours"}


class ShapeLatents(SeededVideos):
    """Latent videos of a shape its caption names, at a random place per frame."""

    def __getitem__(self, index):
        g = self.generator(index)
        shape = SHAPES[index % 2]
        y, x = torch.meshgrid(torch.arange(LATENT), torch.arange(LATENT), indexing="ij")
        frames = []
        for cy, cx in torch.randint(2, LATENT - 2, (FRAMES, 2), generator=g).tolist():
            inside = ((y - cy).abs() <= 1) & ((x - cx).abs() <= 1) if shape == "square" else (y - cy) ** 2 + (x - cx) ** 2 <= 2
            frames.append(torch.stack([inside.float() * 2 - 1, -(inside.float() * 2 - 1), inside.float(), torch.zeros(LATENT, LATENT)]))
        return {"latents": torch.stack(frames), "caption": f"a {shape}"}


def autoencoder(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(TINY_AE)


def diffusion_job(prediction_type="eps", caption_dropout=0.1, encode_frames=None):
    unet = tiny_unet()
    torch.manual_seed(1)
    return ImageDiffusionJob(unet, TextEncoder(TINY_TEXT), prediction_type, caption_dropout, encode_frames)


def batch_of(data, count):
    samples = [data[i] for i in range(count)]
    return {key: torch.stack([s[key] for s in samples]) if key != "caption" else [s[key] for s in samples] for key in samples[0]}


def held_out(loss, data):
    """A loss on 8 unseen clips with fixed draws: comparable before and after training."""
    with torch.no_grad():
        return loss(batch_of(data, 8), torch.Generator().manual_seed(11)).item()


def run(j, data, tmp_path, steps=30, lr=2e-3, **settings):
    config = TrainConfig(output_dir=str(tmp_path), steps=steps, batch_size=4, lr=lr, checkpoint_every=steps, log_every=10, seed=0, **settings)
    return train(j, data, config)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the autoencoder ---------------------------------------------------------------------------


def test_the_autoencoder_learns_to_reconstruct_and_logs_each_term(tmp_path):
    j = AutoencoderJob(autoencoder(), perceptual=ToyPerceptual(), perceptual_weight=0.5)
    perceptual = snapshot(j.perceptual)

    def reconstruction(batch, generator):
        return j.losses(batch, generator)["reconstruction"]

    before = held_out(reconstruction, SmoothFrames(seed=7))
    run(j, SmoothFrames(), tmp_path, steps=30, lr=1e-2)
    assert held_out(reconstruction, SmoothFrames(seed=7)) < 0.85 * before
    assert same_weights(j.perceptual.state_dict(), perceptual) and not any(p.requires_grad for p in j.perceptual.parameters())
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [set(line["terms"]) for line in logged] == [{"reconstruction", "kl", "perceptual"}] * 3


def test_the_autoencoder_loss_is_the_weighted_sum_of_its_terms():
    j = AutoencoderJob(autoencoder(), kl_weight=1e-3, perceptual=ToyPerceptual(), perceptual_weight=2.0)
    batch = batch_of(SmoothFrames(), 2)
    with torch.no_grad():
        terms = j.losses(batch, torch.Generator().manual_seed(4))
        logged = j.loss(batch, torch.Generator().manual_seed(4))
        mean, logvar = posterior(j.module, batch["pixels"].flatten(0, 1))
    assert set(terms) == {"reconstruction", "kl", "perceptual"}
    assert all(torch.equal(logged[name], term) for name, term in terms.items())
    assert torch.allclose(logged["loss"], terms["reconstruction"] + 1e-3 * terms["kl"] + 2.0 * terms["perceptual"])
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(terms["kl"], kl.sum(dim=(1, 2, 3)).mean() / (3 * SIZE * SIZE))
    assert "perceptual" not in AutoencoderJob(autoencoder()).losses(batch, torch.Generator().manual_seed(4))


def test_the_latent_scale_gives_the_sampled_latents_unit_std():
    ae = autoencoder()
    pixels = batch_of(SmoothFrames(), 6)["pixels"]
    scale = latent_scale(ae, pixels)
    with torch.no_grad():
        mean, _ = posterior(ae, pixels.flatten(0, 1))
    assert scale > 0 and abs((mean * scale).std().item() - 1) < 1e-5


def test_the_exported_autoencoder_loads_back_with_its_latent_scale(tmp_path):
    j = AutoencoderJob(autoencoder())
    result = run(j, SmoothFrames(), tmp_path / "run", steps=2, ema_decay=0.5)
    scale = latent_scale(j.module, batch_of(SmoothFrames(), 4)["pixels"])
    weights = load_checkpoint_weights(result.checkpoint, ema=True)
    for name, source, expected in [("ema.safetensors", weights, weights), ("raw.safetensors", None, j.module.state_dict())]:
        export_autoencoder(j, tmp_path / name, scale, weights=source)
        loaded, metadata = load_model(tmp_path / name, "autoencoder")
        assert loaded.config == TINY_AE and float(metadata["latent_scale"]) == scale
        assert same_weights(loaded.state_dict(), expected)
    assert not same_weights(weights, j.module.state_dict())
    with pytest.raises(FileExistsError):
        export_autoencoder(j.module, tmp_path / "raw.safetensors", scale)


# --- the image LDM -----------------------------------------------------------------------------


def test_the_image_model_learns_and_trains_unet_and_caption_encoder_together(tmp_path):
    j = diffusion_job()
    unet, text = snapshot(j.unet), snapshot(j.text_encoder)
    before = held_out(j.loss, ShapeLatents(seed=7))
    run(j, ShapeLatents(), tmp_path, steps=20)
    assert held_out(j.loss, ShapeLatents(seed=7)) < 0.5 * before
    assert not same_weights(j.unet.state_dict(), unet) and not same_weights(j.text_encoder.state_dict(), text)


def test_a_frozen_autoencoder_encoding_the_frames_stays_bit_identical(tmp_path):
    ae = autoencoder().requires_grad_(False).eval()
    frozen = snapshot(ae)
    scale = latent_scale(ae, batch_of(SmoothFrames(), 8)["pixels"])

    def encode_frames(pixels):
        return posterior(ae, pixels)[0] * scale

    j = diffusion_job(encode_frames=encode_frames)
    run(j, SmoothFrames(), tmp_path, steps=3)
    assert same_weights(ae.state_dict(), frozen) and all(p.grad is None for p in ae.parameters())


def test_a_new_caption_encoder_tells_which_colour_goes_with_which_shape():
    """Swapping two objects' colours leaves the caption's words, only their places
    change: an encoder whose positions are too small to matter gives the shape
    word the same output either way, and the UNet then cannot bind shapes to colours."""
    torch.manual_seed(0)
    encoder = TextEncoder(TextEncoderConfig(vocab=512)).eval()
    with torch.no_grad():
        ours, swapped = encoder(["a red circle and a blue square", "a blue circle and a red square"])
        encoder.position.mul_(0.02)
        blind, blind_swapped = encoder(["a red circle and a blue square", "a blue circle and a red square"])
    distance = lambda a, b: 1 - torch.nn.functional.cosine_similarity(a[2], b[2], dim=0)  # noqa: E731  # "circle"
    assert distance(ours, swapped) > 1e-4 > 10 * distance(blind, blind_swapped)


def test_caption_dropout_matches_its_rate_and_leaves_the_empty_caption():
    captions = [f"caption {i}" for i in range(20000)]
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    empty = [d == "" for d in dropped]
    assert abs(sum(empty) / len(captions) - 0.1) < 0.01
    assert all(d == c for d, c, e in zip(dropped, captions, empty) if not e)
    assert drop_captions(captions[:50], 0.0, torch.Generator()) == captions[:50]
    assert drop_captions(captions[:50], 1.0, torch.Generator()) == [""] * 50


def test_dropping_every_caption_trains_on_the_empty_caption():
    """The job drops captions with the same draws whatever the rate, so with rate 1
    it computes exactly what rate 0 computes on empty captions."""
    batch = batch_of(ShapeLatents(), 2)
    with torch.no_grad():
        dropped = diffusion_job(caption_dropout=1.0).loss(batch, torch.Generator().manual_seed(3))
        empty = diffusion_job(caption_dropout=0.0).loss({**batch, "caption": ["", ""]}, torch.Generator().manual_seed(3))
        kept = diffusion_job(caption_dropout=0.0).loss(batch, torch.Generator().manual_seed(3))
    assert torch.equal(dropped, empty) and not torch.equal(dropped, kept)


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_each_frame_has_its_own_timestep_and_the_target_the_sampler_reads(prediction_type):
    """A UNet hitting the job's target denoises every frame exactly through
    sampling.Denoiser, at that frame's own noise level."""
    batch = batch_of(ShapeLatents(), 2)
    inputs, target = diffusion_job(prediction_type).unet_inputs(batch, torch.Generator().manual_seed(5))
    x0, t = batch["latents"].flatten(0, 1), inputs["timesteps"]
    assert t.shape == (2 * FRAMES,) and len(set(t.tolist())) > 1 and inputs["context"].shape[0] == 2 * FRAMES
    for frame in range(2 * FRAMES):
        sigma = discrete_sigmas()[t[frame]]

        def unet(x_in, timesteps, context, frames, masked_context=None, y=None):
            return target[frame : frame + 1]

        x_sigma = inputs["x"][frame : frame + 1] * (1 + sigma**2).sqrt()
        assert torch.allclose(Denoiser(unet, prediction_type)(x_sigma, sigma, None, 1), x0[frame : frame + 1], atol=1e-4)


def test_the_exported_image_model_loads_back_with_its_prediction_type(tmp_path):
    j = diffusion_job(prediction_type="v")
    result = run(j, ShapeLatents(), tmp_path / "run", steps=2, ema_decay=0.5)
    weights = load_checkpoint_weights(result.checkpoint, ema=True)
    for name, source in [("ema", weights), ("raw", None)]:
        export_image_model(j, tmp_path / f"{name}_unet.safetensors", tmp_path / f"{name}_text.safetensors", weights=source)
        unet, metadata = load_model(tmp_path / f"{name}_unet.safetensors", "unet")
        text_encoder, _ = load_model(tmp_path / f"{name}_text.safetensors", "text_encoder")
        assert metadata["prediction_type"] == "v" and unet.config == TINY and text_encoder.config == TINY_TEXT
        expected = weights if source is not None else j.module.state_dict()
        loaded = {**{f"unet.{k}": v for k, v in unet.state_dict().items()}, **{f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()}}
        assert same_weights(loaded, expected)
    assert not same_weights(weights, j.module.state_dict())
    with pytest.raises(FileExistsError, match="ema_text"):
        export_image_model(j, tmp_path / "other_unet.safetensors", tmp_path / "ema_text.safetensors")
    assert not (tmp_path / "other_unet.safetensors").exists()


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, data, changed",
    [
        (lambda **s: AutoencoderJob(autoencoder(), **s), SmoothFrames, {"kl_weight": 1e-4}),
        (lambda **s: diffusion_job(**s), ShapeLatents, {"caption_dropout": 0.2}),
        (lambda **s: diffusion_job(**s), ShapeLatents, {"prediction_type": "v"}),
    ],
)
def test_a_resume_with_other_job_settings_is_refused(tmp_path, make, data, changed):
    run(make(), data(), tmp_path, steps=1)
    config = TrainConfig(output_dir=str(tmp_path), steps=2, batch_size=4, lr=2e-3, checkpoint_every=1, log_every=10, seed=0)
    with pytest.raises(ValueError, match="other settings: job"):
        train(make(**changed), data(), config, resume=True)
    train(make(), data(), config, resume=True)


def test_unusable_models_and_settings_are_refused():
    with pytest.raises(ValueError, match="temporal layers"):
        unet = tiny_unet()
        inject(unet, TemporalLayers(find_layout(unet)))
        ImageDiffusionJob(unet, TextEncoder(TINY_TEXT))
    with pytest.raises(ValueError, match="context_dim"):
        ImageDiffusionJob(tiny_unet(), TextEncoder(TextEncoderConfig(dim=16, layers=1, heads=2)))
    with pytest.raises(ValueError, match="prediction type"):
        diffusion_job(prediction_type="x0")
    with pytest.raises(ValueError, match="caption_dropout"):
        diffusion_job(caption_dropout=1.5)
