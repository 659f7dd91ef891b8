"""Temporal-decoder fine-tuning through the real loop: the autoencoder (encoder
included) comes out bit-identical, the temporal blocks and the discriminator
both learn, each only from its own losses, and the exported file is what
Temporal VAE Decode loads."""


import pytest
import torch
import torch.nn.functional as F

from vldm_core.autoencoder import AutoencoderConfig, AutoencoderKL
from vldm_core.temporal import TemporalConfig, TemporalLayers
from vldm_core.temporal_decoder import decode_frames, find_decoder_layout, fresh_temporal_decoder
from vldm_core.train.decoder_job import TemporalDecoderJob, export_temporal_decoder
from vldm_core.train.discriminator import VideoDiscriminator
from vldm_core.train.loop import TrainConfig, load_checkpoint_weights, train
from vldm_core.weights import load_temporal_layers

from tiny_models import checkpointed_gradients_agree, SeededVideos, ToyPerceptual
from train_toys import assert_two_ranks_match_one_process, log_of

FRAMES, SIZE = 4, 16


class ColourCastClips(SeededVideos):
    """Pixel videos in [-1, 1] as data.VideoClips serves them: a smooth pattern
    moving a pixel per frame, under a colour cast of its own per video."""

    def __getitem__(self, index):
        g = self.generator(index)
        pattern = F.interpolate(torch.randn(1, 3, 4, 4, generator=g), size=SIZE, mode="bilinear")[0]
        cast = torch.rand(3, 1, 1, generator=g) * 0.6
        return {"pixels": (torch.stack([pattern.roll(k, dims=-1) for k in range(FRAMES)]) * 0.5 + cast).tanh(), "caption": "colours"}


def autoencoder():
    torch.manual_seed(0)
    return AutoencoderKL(AutoencoderConfig())


def job(**settings):
    ae = autoencoder()
    torch.manual_seed(1)
    return TemporalDecoderJob(ae, fresh_temporal_decoder(ae.decoder), VideoDiscriminator(channels=8, layers=2), **settings)


def batch_of(data, count):
    return {"pixels": torch.stack([data[i]["pixels"] for i in range(count)]), "caption": [data[i]["caption"] for i in range(count)]}


def held_out_reconstruction(j):
    with torch.no_grad():
        return j.losses(batch_of(ColourCastClips(videos=8, seed=7), 8), torch.Generator().manual_seed(11))["reconstruction"].item()


def run(j, tmp_path, steps=40, **settings):
    """With the loop's default clipping, of each side's gradient on its own."""
    defaults = dict(steps=steps, batch_size=4, lr=5e-3, checkpoint_every=steps, log_every=20, seed=0)
    return train(j, ColourCastClips(), TrainConfig(output_dir=str(tmp_path), **{**defaults, **settings}))


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_moves_temporal_blocks_and_discriminator_only_and_lowers_the_reconstruction_loss(tmp_path):
    j = job(perceptual=ToyPerceptual(), perceptual_weight=0.5)
    frozen, perceptual = snapshot(j.autoencoder), snapshot(j.perceptual)
    temporal, discriminator = snapshot(j.temporal), snapshot(j.discriminator)
    before = held_out_reconstruction(j)
    run(j, tmp_path)
    assert held_out_reconstruction(j) < 0.85 * before
    assert all(torch.equal(v, frozen[k]) for k, v in j.autoencoder.state_dict().items())  # encoder, quant convs, image decoder
    assert all(torch.equal(v, perceptual[k]) for k, v in j.perceptual.state_dict().items())
    assert not any(p.requires_grad for p in [*j.autoencoder.parameters(), *j.perceptual.parameters()])
    assert not all(torch.equal(v, temporal[k]) for k, v in j.temporal.state_dict().items())
    assert not all(torch.equal(v, discriminator[k]) for k, v in j.discriminator.state_dict().items())


def test_each_side_gets_gradients_from_its_own_losses_only():
    """Why one optimizer can step both: the discriminator's loss reaches only the
    discriminator, the decoder's losses only the temporal blocks."""
    j = job(perceptual=ToyPerceptual())
    terms = j.losses(batch_of(ColourCastClips(), 2), torch.Generator().manual_seed(1))
    assert set(terms) == {"reconstruction", "adversarial", "discriminator", "perceptual"}

    def grads(term):
        j.module.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        return [p.grad for p in j.temporal.parameters()], [p.grad for p in j.discriminator.parameters()]

    temporal, discriminator = grads("discriminator")
    assert all(g is None for g in temporal)
    assert all(g is not None for g in discriminator) and sum(g.abs().sum() for g in discriminator) > 0
    for term in ("reconstruction", "adversarial", "perceptual"):
        temporal, discriminator = grads(term)
        assert all(g is None for g in discriminator), term
        assert sum(g.abs().sum() for g in temporal if g is not None) > 0, term


def test_the_loss_is_the_weighted_sum_of_its_terms_beside_them():
    j = job(adversarial_weight=0.3, perceptual=ToyPerceptual(), perceptual_weight=2.0)
    batch = batch_of(ColourCastClips(), 2)
    with torch.no_grad():
        terms = j.losses(batch, torch.Generator().manual_seed(4))
    output = j.loss(batch, torch.Generator().manual_seed(4))
    expected = terms["reconstruction"] + 0.3 * terms["adversarial"] + terms["discriminator"] + 2.0 * terms["perceptual"]
    assert torch.allclose(output["loss"], expected) and output["loss"].requires_grad
    assert output.keys() == {"loss", *terms} and all(torch.equal(output[name], term) and not output[name].requires_grad for name, term in terms.items())
    assert j.config_dict()["loss_weights"] == {"reconstruction": 1.0, "adversarial": 0.3, "discriminator": 1.0, "perceptual": 2.0}
    assert job().config_dict()["loss_weights"]["perceptual"] == 0.0


def test_the_exported_file_is_the_trained_temporal_decoder(tmp_path):
    j = job()
    result = run(j, tmp_path, steps=4, ema_decay=0.5)
    weights = load_checkpoint_weights(result.checkpoint, ema=True)
    layout = find_decoder_layout(autoencoder().decoder)
    for name, source, expected in [
        ("ema.safetensors", weights, {k.removeprefix("temporal."): v for k, v in weights.items() if k.startswith("temporal.")}),
        ("raw.safetensors", None, j.temporal.state_dict()),
    ]:
        export_temporal_decoder(j, tmp_path / name, train_frames=FRAMES, weights=source)
        loaded = load_temporal_layers(tmp_path / name, layout, target="VAE")
        assert loaded.modes == ("decoder",) and loaded.train_frames == FRAMES
        assert loaded.state_dict().keys() == expected.keys()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())

    ae = autoencoder()
    z = torch.randn(FRAMES, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        decoded = decode_frames(ae.decoder, ae.post_quant_conv(z), loaded.eval(), frames=FRAMES)
        assert torch.equal(decoded, decode_frames(ae.decoder, ae.post_quant_conv(z), j.temporal.eval(), frames=FRAMES))
        assert not torch.equal(decoded, ae.decode(z))


def test_gradient_checkpointing_gives_the_same_gradients():
    j = job()
    batch = batch_of(ColourCastClips(), 2)
    assert checkpointed_gradients_agree(j, batch)


def test_temporal_blocks_of_another_decoder_or_with_context_are_refused():
    ae = autoencoder()
    other = AutoencoderKL(AutoencoderConfig(ch=64))
    with pytest.raises(ValueError, match="was built for"):
        TemporalDecoderJob(ae, fresh_temporal_decoder(other.decoder), VideoDiscriminator(channels=8, layers=2))
    with_context = TemporalLayers(find_decoder_layout(ae.decoder), TemporalConfig(context_latent_channels=4), modes=("decoder",))
    with pytest.raises(ValueError, match="no context frames"):
        TemporalDecoderJob(ae, with_context, VideoDiscriminator(channels=8, layers=2))


def test_the_log_holds_each_term_of_the_step_and_each_sides_gradient_norm(tmp_path):
    """A one-step run logs the terms ``losses()`` gives on the batch and draws the
    step trained on, at the weights before it."""
    j = job(perceptual=ToyPerceptual())
    seen, loss = [], j.loss
    j.loss = lambda batch, generator: seen.append((batch, generator.get_state())) or loss(batch, generator)
    run(j, tmp_path, steps=1, log_every=1)
    (batch, state), = seen
    with torch.no_grad():
        terms = job(perceptual=ToyPerceptual()).losses(batch, torch.Generator().set_state(state))
    line, = log_of(tmp_path)
    assert line["terms"] == pytest.approx({name: term.item() for name, term in terms.items()}, rel=1e-6)
    assert line["loss"] == pytest.approx(sum(j.loss_weights[name] * term.item() for name, term in terms.items()), rel=1e-6)
    assert line["grad_norms"].keys() == {"temporal", "discriminator"}
    assert line["grad_norm"] == pytest.approx(sum(norm**2 for norm in line["grad_norms"].values()) ** 0.5, rel=1e-6)


def ddp_case():
    """A few steps, both sides' gradients clipped (see assert_two_ranks_match_one_process for the small lr and clip)."""
    settings = dict(steps=3, batch_size=4, lr=1e-5, grad_clip=0.01, ema_decay=0.5, checkpoint_every=2, log_every=1)
    return job(perceptual=ToyPerceptual()), ColourCastClips(videos=8), settings


def test_two_gloo_ranks_match_each_other_and_one_process_with_the_same_global_batch(tmp_path):
    assert_two_ranks_match_one_process(ddp_case, tmp_path)
    assert log_of(tmp_path / "ddp")[0]["terms"].keys() == {"reconstruction", "adversarial", "discriminator", "perceptual"}
