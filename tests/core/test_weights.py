import json

import pytest
import torch
from safetensors.torch import save_file

from vldm_core.temporal import TemporalConfig
from vldm_core.unet import UNetConfig
from vldm_core.unet_layout import find_layout, inject
from vldm_core.weights import FORMAT_VERSION, WeightFileError, load_temporal_layers, read_header, save_temporal_layers, store_as

from tiny_models import perturb, tiny_unet, video_batch


@pytest.fixture
def saved(tmp_path, unet, layers):
    path = tmp_path / "layers.safetensors"
    save_temporal_layers(perturb(layers), str(path), train_frames=8, modes=("keyframe", "prediction"), prediction_type="eps")
    return str(path)


def test_round_trip_gives_the_same_weights_metadata_and_video(saved, unet, layers):
    loaded = load_temporal_layers(saved, find_layout(unet), prediction_type="eps")
    assert loaded.layout == layers.layout and loaded.config == layers.config
    assert loaded.train_frames == 8 and loaded.modes == ("keyframe", "prediction")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), layers.state_dict().values()))
    x, t, context = video_batch()
    with torch.no_grad():
        inject(unet, layers)
        expected = unet(x, t, context, frames=6)
        inject(unet, loaded)
        assert torch.equal(unet(x, t, context, frames=6), expected)


def test_a_file_stored_in_float16_loads_as_float32_with_its_metadata(saved, unet, layers):
    before = read_header(saved).metadata
    store_as(saved, "float16")
    assert read_header(saved).metadata == before
    loaded = load_temporal_layers(saved, find_layout(unet), prediction_type="eps")
    assert all(a.dtype == torch.float32 and torch.equal(a, b.half().float()) for a, b in zip(loaded.state_dict().values(), layers.state_dict().values()))


def test_metadata_says_what_the_file_fits(saved):
    metadata = read_header(saved).metadata
    assert metadata["format_version"] == str(FORMAT_VERSION)
    assert json.loads(metadata["unet_layout"])["context_dim"] == 24
    assert metadata["train_frames"] == "8" and json.loads(metadata["modes"]) == ["keyframe", "prediction"]
    assert metadata["prediction_type"] == "eps"
    assert TemporalConfig.from_dict(json.loads(metadata["temporal_config"])) == TemporalConfig()


def test_existing_files_are_never_overwritten(saved, layers):
    before = open(saved, "rb").read()
    with pytest.raises(FileExistsError, match="exists"):
        save_temporal_layers(layers, saved, train_frames=4)
    assert open(saved, "rb").read() == before


def test_layers_for_another_context_width_are_refused_naming_both_sides(saved):
    other = find_layout(tiny_unet(UNetConfig(model_channels=32, channel_mult=(1, 2), head_dim=16, context_dim=48)))
    with pytest.raises(WeightFileError, match=r"built for custom UNet .*context 24.*this MODEL is custom UNet .*context 48"):
        load_temporal_layers(saved, other)


def test_layers_for_other_channels_are_refused_naming_the_layer(saved):
    other = find_layout(tiny_unet(UNetConfig(model_channels=64, channel_mult=(1, 2), head_dim=16, context_dim=24)))
    with pytest.raises(WeightFileError, match=r"input_blocks\.1\.0 is a ResBlock of 32 channels.*64 channels"):
        load_temporal_layers(saved, other)


def test_wrong_prediction_type_is_refused(saved, unet):
    with pytest.raises(WeightFileError, match="trained on a eps-prediction model, this MODEL predicts v"):
        load_temporal_layers(saved, find_layout(unet), prediction_type="v")


def test_pickles_are_never_opened_and_the_refusal_says_how_to_convert(tmp_path, unet):
    path = tmp_path / "mm_sd_v15_v2.ckpt"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(WeightFileError, match="never opens") as refused:
        load_temporal_layers(str(path), find_layout(unet))
    assert "torch.load('mm_sd_v15_v2.ckpt', map_location='cpu', weights_only=True)" in str(refused.value)
    assert "'mm_sd_v15_v2.safetensors'" in str(refused.value)
    other = tmp_path / "layers.bin"
    other.write_bytes(b"")
    with pytest.raises(WeightFileError, match="safetensors files only|never opens"):
        load_temporal_layers(str(other), find_layout(unet))


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"garbage that is no header", b"\xff\xff\xff\xff\xff\xff\xff\x7f{}"])
def test_corrupt_files_are_refused(tmp_path, unet, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightFileError, match="not a readable safetensors file"):
        load_temporal_layers(str(path), find_layout(unet))


def test_truncated_file_is_refused(saved, tmp_path, unet):
    data = open(saved, "rb").read()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="not a readable safetensors file"):
        load_temporal_layers(str(path), find_layout(unet))


@pytest.mark.parametrize(
    "key, hint",
    [
        ("down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight", "AnimateDiff"),
        ("model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight", "Stable Video Diffusion"),
        ("model.diffusion_model.input_blocks.0.0.weight", "Stable Diffusion checkpoint"),
        ("something.else", "lacks format"),
    ],
)
def test_foreign_safetensors_are_recognised(tmp_path, unet, key, hint):
    path = tmp_path / "foreign.safetensors"
    save_file({key: torch.zeros(2)}, str(path))
    with pytest.raises(WeightFileError, match=hint):
        load_temporal_layers(str(path), find_layout(unet))


def test_newer_format_version_asks_for_an_update(saved, tmp_path, unet):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(saved, "pt") as f:
        metadata = dict(f.metadata())
    metadata["format_version"] = str(FORMAT_VERSION + 1)
    path = tmp_path / "future.safetensors"
    save_file(load_file(saved), str(path), metadata=metadata)
    with pytest.raises(WeightFileError, match="update the pack"):
        load_temporal_layers(str(path), find_layout(unet))


def test_edited_weights_that_contradict_the_metadata_are_refused(saved, tmp_path, unet):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(saved, "pt") as f:
        metadata = dict(f.metadata())
    state = load_file(saved)
    state.pop(next(iter(state)))
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(WeightFileError, match="does not hold the tensors of the model it describes"):
        load_temporal_layers(str(path), find_layout(unet))


def test_unknown_config_keys_and_modes_are_refused(layers, tmp_path):
    with pytest.raises(ValueError, match="unknown temporal config keys"):
        TemporalConfig.from_dict({"alpha_init": 0.5, "colour": "red"})
    with pytest.raises(ValueError, match="unknown modes"):
        save_temporal_layers(layers, str(tmp_path / "x.safetensors"), train_frames=4, modes=("dance",))
