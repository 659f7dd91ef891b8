"""The 4x Interpolator node in a real ComfyUI: 4N - 3 and 16N - 15 frames with
the key frames unchanged in their places, frame rate, and mode errors."""

import uuid

import pytest
import torch

KEYS, WINDOW = 4, 9  # windows of 3 key frames
INTERPOLATION = "vldm_test_interpolation9.safetensors"
PREDICTION_ONLY = "vldm_test_prediction_only9.safetensors"


@pytest.fixture(scope="module")
def files(comfy):
    comfy.save_trained_looking_layers(INTERPOLATION, WINDOW, ("keyframe", "interpolation"), context_latent_channels=4, interpolation_stage=True)
    comfy.save_trained_looking_layers(PREDICTION_ONLY, WINDOW, ("keyframe", "prediction"), context_latent_channels=4)


def sampler_inputs(model, seed):
    return {"model": model, "positive": ["1", 1], "negative": ["1", 2], "seed": seed, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}


def prompt(layers, multiplier, keys_key, video_key):
    return {
        "1": {"class_type": "VLDMTest_TinyModel", "inputs": {"seed": 0, "context_dim": 768}},
        "2": {"class_type": "VLDM_TemporalUNetPatcher", "inputs": {"model": ["1", 0], "temporal_layers": layers}},
        "3": {"class_type": "VLDM_KeyframeSampler", "inputs": {**sampler_inputs(["2", 0], 1), "frames": KEYS, "width": 32, "height": 32}},
        "4": {"class_type": "VLDM_Interpolator4x", "inputs": {**sampler_inputs(["2", 0], 2), "key_frames": ["3", 0], "multiplier": multiplier, "context_guidance": 1.0}},
        "5": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["3", 0], "key": keys_key}},
        "6": {"class_type": "VLDMTest_CaptureLatent", "inputs": {"samples": ["4", 0], "key": video_key}},
    }


@pytest.mark.parametrize("multiplier, length", [("4", 4 * KEYS - 3), ("16", 16 * KEYS - 15)])
def test_interpolation_keeps_key_frames_in_their_places(comfy, files, multiplier, length):
    keys, video = f"keys-{uuid.uuid4().hex[:6]}", f"video-{uuid.uuid4().hex[:6]}"
    result = comfy.run(prompt(INTERPOLATION, multiplier, keys, video))
    assert result.ok, result.messages
    before, after = comfy.captured[keys], comfy.captured[video]
    step = int(multiplier)
    assert after.shape == (length, 4, 4, 4)
    assert torch.equal(after[::step], before)
    between = [i for i in range(length) if i % step]
    assert torch.isfinite(after).all() and after[between].std() > 0.1


def test_prediction_only_layers_are_refused_with_the_fix(comfy, files):
    result = comfy.run(prompt(PREDICTION_ONLY, "4", f"k-{uuid.uuid4().hex[:6]}", f"v-{uuid.uuid4().hex[:6]}"))
    assert not result.ok
    assert "not interpolation" in str(result.error)
