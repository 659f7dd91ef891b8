"""The 4x Interpolator node in a real ComfyUI: 4N - 3 and 16N - 15 frames with
the key frames unchanged in their places, frame rate, and mode errors."""

import pytest
import torch

from prompt_parts import key, sampler_inputs

KEYS, WINDOW = 4, 9  # windows of 3 key frames
INTERPOLATION = "vldm_test_interpolation9.safetensors"
PREDICTION_ONLY = "vldm_test_prediction_only9.safetensors"


@pytest.fixture(scope="module")
def files(comfy):
    comfy.save_trained_looking_layers(INTERPOLATION, WINDOW, ("keyframe", "interpolation"), context_latent_channels=4, interpolation_stage=True)
    comfy.save_trained_looking_layers(PREDICTION_ONLY, WINDOW, ("keyframe", "prediction"), context_latent_channels=4)


def prompt(layers, multiplier, keys_key, video_key, keys=KEYS):
    return {
        "1": {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768}},
        "2": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layers}},
        "3": {"class_type": "VLDM_KeyframeSampler", "inputs": {**sampler_inputs(["2", 0], 1), "frames": keys, "width": 32, "height": 32, "frame_rate": 2.5}},
        "4": {"class_type": "VLDM_Interpolator4x", "inputs": {**sampler_inputs(["2", 0], 2), "key_frames": ["3", 0], "multiplier": multiplier, "context_guidance": 1.0}},
        "5": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": keys_key}},
        "6": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["4", 0], "key": video_key}},
    }


# windows of 3 key frames sharing their ends: 4 keys -> 2 windows; then 13 -> 6
@pytest.mark.parametrize("multiplier, length, windows", [("4", 4 * KEYS - 3, 2), ("16", 16 * KEYS - 15, 2 + 6)])
def test_interpolation_keeps_key_frames_in_their_places(comfy, files, multiplier, length, windows):
    keys, video = key("keys"), key("video")
    result = comfy.run(prompt(INTERPOLATION, multiplier, keys, video))
    assert result.ok, result.messages
    before, after = comfy.captured[keys], comfy.captured[video]
    step = int(multiplier)
    assert after.shape == (length, 4, 4, 4)
    assert torch.equal(after[::step], before)
    between = [i for i in range(length) if i % step]
    assert torch.isfinite(after).all() and after[between].std() > 0.1
    assert comfy.latents[video]["frame_rate"] == 2.5 * step
    progress = [(p["value"], p["max"]) for p in result.events("progress") if p["node"] == "4"]
    assert {total for _, total in progress} == {windows * 2}  # one bar over all windows of both passes, 2 steps each
    assert [value for value, _ in progress] == list(range(1, windows * 2 + 1))


def test_prediction_only_layers_are_refused_with_the_fix(comfy, files):
    result = comfy.run(prompt(PREDICTION_ONLY, "4", key("k"), key("v")))
    assert not result.ok
    assert "not interpolation" in str(result.error)


def test_one_key_frame_is_refused_with_the_fix(comfy, files):
    result = comfy.run(prompt(INTERPOLATION, "4", key("k"), key("v"), keys=1))
    assert not result.ok
    assert "at least 2 key frames, got 1" in result.error["exception_message"]


def test_a_multiplier_other_than_4_or_16_is_refused(comfy, files):
    only_interpolation = {k: v for k, v in prompt(INTERPOLATION, "8", "k", "v").items() if k != "5"}
    with pytest.raises(AssertionError, match="prompt invalid") as refused:
        comfy.run(only_interpolation)
    assert "'8'" in str(refused.value) and "'4', '16'" in str(refused.value)
    # a caller past ComfyUI's validation (an API client, another node pack) gets the fix too
    node = comfy.module("nodes.interpolator").Interpolator4x
    with pytest.raises(ValueError, match="choose 4 .one pass. or 16 .two passes."):
        node.execute(None, None, None, {"samples": torch.zeros(4, 4, 4, 4)}, "8", 1.0, 0, 2, 4.0, "euler", "normal")
