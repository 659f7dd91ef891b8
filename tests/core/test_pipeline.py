"""The whole pipeline without ComfyUI, and the demo command, on a tiny random bundle."""

import json
import shutil

import av
import pytest
import torch

from vldm_core.__main__ import main
from vldm_core.pipeline import Settings, generate, load_bundle, plan
from vldm_core.weights import WeightFileError

from tiny_models import write_tiny_bundle

FAST = dict(steps=2, upscale_steps=2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def model(bundle):
    return load_bundle(bundle)


def test_the_plan_covers_the_seconds_asked_for(model):
    # 2 key-frame fps: 3 s need 7 key frames: a first window of 4, then segments of 5 - 2 = 3 new frames
    work = plan(model, Settings(seconds=3, interpolation=4, **FAST))
    assert (work.key_frames, work.first_window, work.segments) == (7, 4, 1)
    assert work.frames == 4 * 7 - 3 and work.frame_rate == 8.0
    assert (work.frames - 1) / work.frame_rate >= 3
    sixteen = plan(model, Settings(seconds=3, interpolation=16, **FAST))
    assert sixteen.frames == 16 * 7 - 15 and sixteen.frame_rate == 32.0


def test_every_stage_runs_and_the_progress_bar_counts_every_step(model):
    settings = Settings(seconds=3, interpolation=4, **FAST)
    calls = []
    frames, fps = generate(model, "a red circle", settings, progress=lambda done, total: calls.append((done, total)))
    work = plan(model, settings)
    assert frames.shape == (work.frames, 3, 4 * 32, 4 * 32) and fps == work.frame_rate  # upscaled 4x
    assert calls == [(i, work.total_steps) for i in range(1, work.total_steps + 1)]
    assert torch.isfinite(frames).all() and frames.min() >= -1 and frames.max() <= 1


def test_an_f4_autoencoder_gets_latents_a_quarter_of_the_frame_size(tmp_path):
    f4 = load_bundle(write_tiny_bundle(tmp_path / "f4", frame_size=(32, 48), autoencoder_levels=(1, 2, 2)))
    seen = []
    f4.unet.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    frames, _ = generate(f4, "a red circle", Settings(seconds=1, interpolation=1, upscale=False, **FAST))
    assert set(seen) == {(8, 12)} and frames.shape[-2:] == (32, 48)


def test_the_same_seed_gives_the_same_video_and_another_seed_another(model):
    settings = dict(seconds=1, interpolation=1, upscale=False, **FAST)
    first, _ = generate(model, "a blue square", Settings(seed=1, **settings))
    again, _ = generate(model, "a blue square", Settings(seed=1, **settings))
    other, _ = generate(model, "a blue square", Settings(seed=2, **settings))
    assert torch.equal(first, again) and not torch.allclose(first, other)


def test_the_unets_are_left_without_temporal_layers(model):
    generate(model, "x", Settings(seconds=1, interpolation=4, **FAST))
    assert not any("vldm" in type(m).__name__.lower() or "Temporal" in type(m).__name__ for m in model.unet.modules())


def test_the_demo_command_writes_an_mp4_and_never_overwrites(bundle, tmp_path):
    out = tmp_path / "demo.mp4"
    main(["demo", "--models", str(bundle), "--seconds", "1", "--steps", "2", "--interpolation", "4", "--no-upscale", "--output", str(out)])
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height, float(stream.average_rate)) == (32, 32, 8.0)
    assert frames == 4 * 3 - 3  # 1 s at 2 key-frame fps: 3 key frames
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        main(["demo", "--models", str(bundle), "--output", str(out)])
    assert out.read_bytes() == before


def test_bad_bundles_are_refused_naming_the_fix(bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no bundle.json"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(WeightFileError, match="not a Video LDM model bundle"):
        load_bundle(tmp_path)
    no_prediction = load_bundle(bundle)
    no_prediction.prediction = None
    with pytest.raises(ValueError, match="need a prediction model"):
        plan(no_prediction, Settings(seconds=10))
    with pytest.raises(ValueError, match="interpolation 3"):
        Settings(interpolation=3)


def test_the_bundle_command_writes_a_bundle_that_loads_and_leaves_none_that_does_not(bundle, tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(bundle, folder)
    written = json.loads((folder / "bundle.json").read_text())
    (folder / "bundle.json").unlink()
    parts = [f"{part}={file}" for part, file in written["files"].items()]
    args = ["bundle", str(folder), *parts, "--key-frame-rate", "2", "--frame-size", "32", "32"]
    main(args)
    assert json.loads((folder / "bundle.json").read_text()) == written
    with pytest.raises(SystemExit, match="exists: pass --overwrite"):
        main(args)
    with pytest.raises(SystemExit, match=r"unknown parts \['vae'\]"):
        main([*args[:2], "vae=autoencoder.safetensors", *args[2:], "--overwrite"])
    wrong = [p if not p.startswith("keyframe=") else "keyframe=unet.safetensors" for p in parts]
    with pytest.raises(WeightFileError):
        main(["bundle", str(folder), *wrong, "--key-frame-rate", "2", "--frame-size", "32", "32", "--overwrite"])
    assert json.loads((folder / "bundle.json").read_text()) == written  # the earlier one, back
    (folder / "bundle.json").unlink()
    with pytest.raises(WeightFileError):
        main(["bundle", str(folder), *wrong, "--key-frame-rate", "2", "--frame-size", "32", "32"])
    assert not (folder / "bundle.json").exists()
