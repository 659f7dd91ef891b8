"""Training temporal layers on a frozen image UNet, end to end: only temporal
weights move, the loss on moving videos falls, and the exported file loads
back to the very same model."""

import pytest
import torch

from vldm_core.temporal import TemporalConfig, TemporalLayers
from vldm_core.train.jobs import TemporalLayersJob
from vldm_core.train.loop import TrainConfig, load_checkpoint_weights, train
from vldm_core.unet_layout import eject, find_layout, inject
from vldm_core.weights import load_temporal_layers, save_temporal_layers

from tiny_models import checkpointed_gradients_agree, SeededVideos, TINY, tiny_unet

FRAMES, SIZE = 5, 8


class MovingPatterns(SeededVideos):
    """Latent videos whose frames are one random pattern shifted a pixel per frame:
    each frame is predictable from its neighbours, not from itself."""

    def __getitem__(self, index):
        pattern = torch.randn(TINY.in_channels, SIZE, SIZE, generator=self.generator(index))
        return {"latents": torch.stack([pattern.roll(k, dims=-1) for k in range(FRAMES)]), "caption": "a pattern moving right"}


def encode_text(captions):
    return torch.ones(len(captions), 5, TINY.context_dim) * 0.1


def job(modes=("keyframe",), objective=None, text=encode_text, **config):
    torch.manual_seed(0)
    unet = tiny_unet()
    layers = TemporalLayers(find_layout(unet), TemporalConfig(**config), modes=modes)
    return TemporalLayersJob(unet, layers, text, modes=modes, stages=(0, 1), **(objective or {}))


def held_out_loss(j):
    data = MovingPatterns(videos=8, seed=7)
    batch = {"latents": torch.stack([data[i]["latents"] for i in range(8)]), "caption": ["a pattern moving right"] * 8}
    with torch.no_grad():
        return j.loss(batch, torch.Generator().manual_seed(11)).item()


def run(j, tmp_path, steps=60, **settings):
    config = TrainConfig(output_dir=str(tmp_path), steps=steps, batch_size=4, lr=2e-3, checkpoint_every=steps, log_every=20, seed=0, **settings)
    return train(j, MovingPatterns(), config)


def test_training_moves_only_temporal_weights_and_lowers_the_loss(tmp_path):
    j = job()
    spatial = {k: v.clone() for k, v in j.unet.state_dict().items() if "_temporal" not in k}
    before = held_out_loss(j)
    run(j, tmp_path)
    after = held_out_loss(j)
    assert after < 0.8 * before, (before, after)
    eject(j.unet)
    assert all(torch.equal(v, spatial[k]) for k, v in j.unet.state_dict().items())
    assert all(p.requires_grad is False for p in j.unet.parameters())


def test_the_exported_file_loads_back_to_the_trained_model(tmp_path):
    j = job()
    result = run(j, tmp_path, steps=20, ema_decay=0.9)
    trained = TemporalLayers(j.module.layout, j.module.config)
    trained.load_state_dict(load_checkpoint_weights(result.checkpoint, ema=True))
    path = tmp_path / "keyframe.safetensors"
    save_temporal_layers(trained, path, train_frames=FRAMES, modes=("keyframe",), prediction_type="eps")
    loaded = load_temporal_layers(path, find_layout(tiny_unet()), prediction_type="eps")
    assert loaded.train_frames == FRAMES and loaded.modes == ("keyframe",)

    def video_model(layers):
        unet = tiny_unet()
        inject(unet, layers.eval())
        return unet

    x = MovingPatterns(seed=3)[0]["latents"]
    t, context = torch.full((FRAMES,), 300), encode_text(["x"]).expand(FRAMES, -1, -1)
    with torch.no_grad():
        assert torch.equal(video_model(loaded)(x, t, context, FRAMES), video_model(trained)(x, t, context, FRAMES))
        assert not torch.equal(video_model(loaded)(x, t, context, FRAMES), tiny_unet()(x, t, context, FRAMES))


def test_prediction_and_interpolation_train_in_one_run(tmp_path):
    j = job(modes=("keyframe", "prediction", "interpolation"), context_latent_channels=TINY.in_channels, interpolation_stage=True)
    before = held_out_loss(j)
    run(j, tmp_path, steps=30)
    assert held_out_loss(j) < before
    context_weights = [layer.context_proj.weight for layer in j.module.layers.values() if hasattr(layer, "context_proj")]
    assert context_weights and all(w.abs().sum() > 0 for w in context_weights)  # the zero-initialised context encoder learned


def test_gradient_checkpointing_gives_the_same_gradients():
    j = job()
    batch = {"latents": torch.stack([MovingPatterns()[i]["latents"] for i in range(2)]), "caption": ["a", "b"]}
    assert checkpointed_gradients_agree(j, batch)


def test_dropping_every_caption_trains_the_layers_on_the_empty_caption():
    """Classifier-free guidance runs the temporal layers on the empty caption too;
    with dropout 1 the job computes exactly what it computes on empty captions."""
    def caption_text(captions):  # the empty caption embeds apart from the others
        return torch.stack([torch.full((5, TINY.context_dim), 0.1 if c else -0.3) for c in captions])

    data = MovingPatterns(videos=2)
    batch = {"latents": torch.stack([data[i]["latents"] for i in range(2)]), "caption": ["a pattern moving right"] * 2}
    with torch.no_grad():
        dropped = job(objective={"caption_dropout": 1.0}, text=caption_text).loss(batch, torch.Generator().manual_seed(3))
        empty = job(text=caption_text).loss({**batch, "caption": ["", ""]}, torch.Generator().manual_seed(3))
        kept = job(text=caption_text).loss(batch, torch.Generator().manual_seed(3))
    assert torch.equal(dropped, empty) and not torch.equal(dropped, kept)


def test_a_run_records_the_objective_only_where_it_differs_from_the_image_models():
    """Checkpoints of runs trained before caption dropout and the timestep power existed still resume."""
    plain, changed = job().config_dict(), job(objective={"caption_dropout": 0.1, "timestep_power": 2.0}).config_dict()
    assert "caption_dropout" not in plain and "timestep_power" not in plain
    assert changed == {**plain, "caption_dropout": 0.1, "timestep_power": 2.0}
    with pytest.raises(ValueError, match="caption_dropout 1.5"):
        job(objective={"caption_dropout": 1.5})
    with pytest.raises(ValueError, match="timestep_power -1"):
        job(objective={"timestep_power": -1.0})


def test_context_modes_need_layers_with_a_context_encoder():
    with pytest.raises(ValueError, match="context_latent_channels"):
        job(modes=("prediction",))
    with pytest.raises(ValueError, match="keyframe, prediction and/or interpolation"):
        job(modes=("decoder",))
